//! Black-box tests of the real `parakernel` binary: it is started on free loopback ports with a
//! connection file, and spoken to with zeromq client sockets and the crate's own wire format.
//! Timeouts here only guard against hangs; every test waits for the message it expects.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parakernel::wire::{Message, Session, Signer, Verifier};
use serde_json::{json, Value};
use zeromq::util::PeerIdentity;
use zeromq::{DealerSocket, ReqSocket, Socket, SocketOptions, SocketRecv, SocketSend, SubSocket, ZmqMessage};

const FAILURE_GUARD: Duration = Duration::from_secs(60);
const KEY: &str = "a0436f6c-1916-498b-8eb9-e81ab9368e84";

/// The Python environment the kernel runs: `.venv` made by `make`.
fn venv_python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(python.exists(), "run `make setup` first: {} is missing", python.display());
    python
}

struct Kernel {
    child: Child,
    ports: [u16; 5],
    _dir: tempfile::TempDir,
}

impl Kernel {
    fn start() -> Self {
        Self::start_logging(None)
    }

    /// Starts the binary; a port taken between probing and binding means: probe again. With
    /// `log`, the kernel's stderr goes to that file and it logs at that level (`PARAKERNEL_LOG`).
    fn start_logging(log: Option<(&std::path::Path, &str)>) -> Self {
        for _ in 0..10 {
            let listeners: Vec<_> = (0..5).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
            let ports: [u16; 5] = std::array::from_fn(|i| listeners[i].local_addr().unwrap().port());
            drop(listeners);
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("connection.json");
            let connection = json!({
                "shell_port": ports[0], "control_port": ports[1], "stdin_port": ports[2],
                "iopub_port": ports[3], "hb_port": ports[4], "ip": "127.0.0.1", "key": KEY,
                "transport": "tcp", "signature_scheme": "hmac-sha256", "kernel_name": "parakernel",
            });
            std::fs::write(&file, connection.to_string()).unwrap();
            let mut command = Command::new(env!("CARGO_BIN_EXE_parakernel"));
            command.arg("kernel").arg("--python").arg(venv_python()).arg("-f").arg(&file);
            command.stdout(Stdio::null()).stderr(Stdio::inherit());
            if let Some((log, level)) = log {
                command.env("PARAKERNEL_LOG", level).stderr(std::fs::File::create(log).unwrap());
            }
            let mut child = command.spawn().expect("start the kernel binary");
            // Bound ports are in use by the kernel once a connect succeeds; a kernel that
            // could not bind exits at once.
            let deadline = Instant::now() + FAILURE_GUARD;
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    eprintln!("kernel exited early ({status}); probing other ports");
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", ports[4])).is_ok() {
                    return Self { child, ports, _dir: dir };
                }
                assert!(Instant::now() < deadline, "the kernel never listened");
                std::thread::yield_now();
            }
        }
        panic!("could not start the kernel on free ports");
    }

    fn address(&self, index: usize) -> String {
        format!("tcp://127.0.0.1:{}", self.ports[index])
    }

    /// Waits for the process to end; returns how long it took.
    fn wait_exit(&mut self) -> Duration {
        let start = Instant::now();
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return start.elapsed();
            }
            assert!(start.elapsed() < FAILURE_GUARD, "the kernel did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Client {
    session: Session,
    verifier: Verifier,
    shell: DealerSocket,
    control: DealerSocket,
    iopub: SubSocket,
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(FAILURE_GUARD, future).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

impl Client {
    async fn connect(kernel: &Kernel) -> Self {
        let dealer = |name: &str| {
            let mut options = SocketOptions::default();
            options.peer_identity(PeerIdentity::try_from(name.as_bytes()).unwrap());
            DealerSocket::with_options(options)
        };
        let mut shell = dealer("shell-client");
        within("shell", shell.connect(&kernel.address(0))).await.unwrap();
        let mut control = dealer("control-client");
        within("control", control.connect(&kernel.address(1))).await.unwrap();
        let mut iopub = SubSocket::new();
        within("iopub", iopub.connect(&kernel.address(3))).await.unwrap();
        iopub.subscribe("").await.unwrap();
        let mut client = Self {
            session: Session::new(Signer::new(KEY.as_bytes())),
            verifier: Verifier::new(Signer::new(KEY.as_bytes())),
            shell,
            control,
            iopub,
        };
        // The subscription is in place once the kernel's welcome arrives.
        loop {
            if client.iopub_message().await.msg_type() == "iopub_welcome" {
                break;
            }
        }
        client
    }

    fn request(&self, msg_type: &str, content: Value) -> Message {
        self.session.message(msg_type, content, None, vec![])
    }

    async fn send_frames(socket: &mut DealerSocket, frames: Vec<Bytes>) {
        socket.send(ZmqMessage::try_from(frames).unwrap()).await.unwrap();
    }

    async fn send(&mut self, control: bool, message: &Message) {
        let frames = message.encode(&self.session.signer);
        let socket = if control { &mut self.control } else { &mut self.shell };
        Self::send_frames(socket, frames).await;
    }

    async fn reply(&mut self, control: bool) -> Message {
        let socket = if control { &mut self.control } else { &mut self.shell };
        let message = within("a reply", socket.recv()).await.unwrap();
        Message::decode(message.into_vec(), &mut self.verifier).expect("replies are signed")
    }

    async fn iopub_message(&mut self) -> Message {
        let message = within("iopub", self.iopub.recv()).await.unwrap();
        Message::decode(message.into_vec(), &mut self.verifier).expect("iopub messages are signed")
    }

    /// Every iopub message parented to `request`, up to its idle.
    async fn outputs(&mut self, request: &Message) -> Vec<Message> {
        let mut outputs = Vec::new();
        loop {
            let message = self.iopub_message().await;
            let ours = message.parent_header.as_ref().is_some_and(|p| p.msg_id == request.header.msg_id);
            if !ours {
                continue;
            }
            let idle = message.msg_type() == "status" && message.content["execution_state"] == "idle";
            outputs.push(message);
            if idle {
                return outputs;
            }
        }
    }
}

#[tokio::test]
async fn bad_messages_are_dropped_and_the_kernel_goes_on() {
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("kernel.log");
    let kernel = Kernel::start_logging(Some((&log, "trace")));
    let mut client = Client::connect(&kernel).await;

    let info = client.request("kernel_info_request", json!({}));
    let good = info.encode(&client.session.signer);
    let mut bad_signature = good.clone();
    bad_signature[1] = Bytes::from("0".repeat(64));
    let mut unsigned = good.clone();
    unsigned[1] = Bytes::new();
    let mut not_json = client.request("execute_request", json!({"code": "1"})).encode(&client.session.signer);
    not_json[5] = Bytes::from_static(b"{code:");
    not_json[1] = Bytes::from(client.session.signer.sign(&[&not_json[2], &not_json[3], &not_json[4], &not_json[5]]));
    for frames in [
        bad_signature,
        unsigned,
        not_json,
        vec![Bytes::from_static(b"<IDS|MSG>"), Bytes::from_static(b"x")],
        vec![Bytes::from_static(b"no delimiter at all")],
        good.clone(),
        good, // replayed: dropped
    ] {
        Client::send_frames(&mut client.shell, frames).await;
    }
    let wrong_type = client.request("execute_request", json!({"code": 5}));
    client.send(false, &wrong_type).await;

    // Exactly two replies come back, in order: the one good kernel_info, then an error reply
    // for the wrong-typed field.
    let reply = client.reply(false).await;
    assert_eq!(reply.msg_type(), "kernel_info_reply");
    assert_eq!(reply.parent_header.unwrap().msg_id, info.header.msg_id);
    let reply = client.reply(false).await;
    assert_eq!(reply.parent_header.as_ref().unwrap().msg_id, wrong_type.header.msg_id);
    assert_eq!(reply.content["status"], "error");

    // And the kernel still serves.
    let again = client.request("kernel_info_request", json!({}));
    client.send(true, &again).await;
    let reply = client.reply(true).await;
    assert_eq!(reply.parent_header.unwrap().msg_id, again.header.msg_id);
    assert_eq!(reply.content["implementation"], "parakernel");

    // One log line per dropped message and one for the refused request; the key appears
    // nowhere, even at the most verbose level.
    drop(kernel);
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log.matches("dropped a message").count(), 6, "{log}");
    assert_eq!(log.matches("refused a request").count(), 1, "{log}");
    assert!(!log.contains(KEY), "the HMAC key was logged:\n{log}");
}

#[tokio::test]
async fn heartbeat_echoes() {
    let kernel = Kernel::start();
    let mut heartbeat = ReqSocket::new();
    within("hb", heartbeat.connect(&kernel.address(4))).await.unwrap();
    heartbeat.send(ZmqMessage::from("ping")).await.unwrap();
    let echo = within("echo", heartbeat.recv()).await.unwrap();
    assert_eq!(echo.get(0).unwrap().as_ref(), b"ping");
}

#[tokio::test]
async fn a_cell_runs_in_python_and_shutdown_ends_the_process() {
    let mut kernel = Kernel::start();
    let mut client = Client::connect(&kernel).await;
    let execute = client.request("execute_request", json!({"code": "print(6 * 7)\n6 * 7"}));
    client.send(false, &execute).await;
    let reply = client.reply(false).await;
    assert_eq!(reply.content["status"], "ok", "{}", reply.content);
    let outputs = client.outputs(&execute).await;
    let kinds: Vec<&str> = outputs.iter().map(Message::msg_type).collect();
    assert_eq!(kinds.first(), Some(&"status"));
    let stream = outputs.iter().find(|m| m.msg_type() == "stream").expect("a stream message");
    assert_eq!(stream.content["text"], "42\n");
    let result = outputs.iter().find(|m| m.msg_type() == "execute_result").expect("a result");
    assert_eq!(result.content["data"]["text/plain"], "42");
    assert_eq!(result.content["execution_count"], 1);

    let shutdown = client.request("shutdown_request", json!({"restart": false}));
    client.send(true, &shutdown).await;
    let reply = client.reply(true).await;
    assert_eq!(reply.msg_type(), "shutdown_reply");
    assert_eq!(reply.content["restart"], false);
    let took = kernel.wait_exit();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
}

/// Whether process `pid` still runs (a zombie waiting for a new parent to reap it does not).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: "pid (comm) S ...".
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

#[test]
fn the_kernel_exits_when_the_process_that_started_it_is_gone() {
    // A shell starts the kernel in the background as jupyter_client would (JPY_PARENT_PID is
    // the shell), says its pid, and exits: the kernel is left without its parent.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("connection.json");
    let listeners: Vec<_> = (0..5).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
    drop(listeners);
    let connection = json!({
        "shell_port": ports[0], "control_port": ports[1], "stdin_port": ports[2],
        "iopub_port": ports[3], "hb_port": ports[4], "ip": "127.0.0.1", "key": KEY,
        "transport": "tcp", "signature_scheme": "hmac-sha256", "kernel_name": "parakernel",
    });
    std::fs::write(&file, connection.to_string()).unwrap();
    let script = r#"JPY_PARENT_PID=$$ "$0" kernel --python "$1" -f "$2" >/dev/null 2>&1 </dev/null & echo $!"#;
    let shell = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_parakernel"))
        .arg(venv_python())
        .arg(&file)
        .output()
        .expect("run sh");
    let kernel: i32 = String::from_utf8_lossy(&shell.stdout).trim().parse().expect("the kernel's pid");
    let deadline = Instant::now() + FAILURE_GUARD;
    while running(kernel) {
        if Instant::now() > deadline {
            // SAFETY: kill only sends a signal to the stray kernel.
            unsafe { libc::kill(kernel, libc::SIGKILL) };
            panic!("the kernel outlived its parent by {FAILURE_GUARD:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `code` as a cell that ends the kernel process; returns how the process ended and what
/// its original stderr (the Jupyter server's log) received.
async fn run_fatal_cell(code: &str) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut kernel = Kernel::start_logging(Some((&log, "warn")));
    let mut client = Client::connect(&kernel).await;
    let execute = client.request("execute_request", json!({"code": code}));
    client.send(false, &execute).await;
    // Polled without blocking the thread: the client's sockets run on this test's runtime.
    let status = within("the kernel's end", async {
        loop {
            if let Some(status) = kernel.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    (status, std::fs::read_to_string(&log).unwrap())
}

#[tokio::test]
async fn os_abort_in_a_cell_is_reported_on_the_original_stderr() {
    let (status, stderr) = run_fatal_cell("import os\nos.abort()").await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status}\n{stderr}");
    assert!(stderr.contains("parakernel: fatal signal SIGABRT in thread 'parakernel' ("), "{stderr}");
}

#[tokio::test]
async fn a_fatal_python_error_reaches_the_original_stderr() {
    // The message is put together by the cell, so that only CPython's report can show it.
    let code = "import ctypes\n\
                ctypes.pythonapi.Py_FatalError.argtypes = [ctypes.c_char_p]\n\
                ctypes.pythonapi.Py_FatalError('-'.join(['deliberately', 'fatal', 'cell']).encode())";
    let (status, stderr) = run_fatal_cell(code).await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status}\n{stderr}");
    let report = stderr.find("Fatal Python error: deliberately-fatal-cell").expect(&stderr);
    let line = stderr.find("parakernel: fatal signal SIGABRT").expect(&stderr);
    assert!(report < line, "{stderr}");
}

#[tokio::test]
async fn a_segfault_in_a_lane_is_reported_and_ends_the_kernel_with_it() {
    let code = "%%lane crash\nimport ctypes\nctypes.string_at(0)";
    let (status, stderr) = run_fatal_cell(code).await;
    assert_eq!(status.signal(), Some(libc::SIGSEGV), "{status}\n{stderr}");
    assert!(
        stderr.contains("parakernel: fatal signal SIGSEGV (fault address 0x0) in thread 'pk-lane-crash' ("),
        "{stderr}"
    );
}

#[tokio::test]
async fn rusts_allocation_failure_message_reaches_the_original_stderr() {
    // The text is made while memory allows; then the address space is capped so that the
    // kernel's copy of it (Rust, writing the cell's stream) cannot be allocated.
    let code = "import resource, sys\n\
                text = 'x' * 400_000_000\n\
                pages = int(open('/proc/self/statm').read().split()[0])\n\
                cap = pages * resource.getpagesize() + 100_000_000\n\
                resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n\
                sys.stdout.write(text)";
    let (status, stderr) = run_fatal_cell(code).await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status}\n{stderr}");
    let message = stderr.find("memory allocation of ").expect(&stderr);
    let line = stderr.find("parakernel: fatal signal SIGABRT").expect(&stderr);
    assert!(message < line, "{stderr}");
}
