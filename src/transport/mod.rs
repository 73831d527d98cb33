//! The five Jupyter sockets on libzmq, driven from tokio. Moves frames; never looks inside them
//! (no JSON, no signing).
//!
//! [`bind`] binds shell, control and stdin (ROUTER), iopub (XPUB) and heartbeat (REP) over tcp
//! or ipc, as CurveZMQ servers when the connection file carries keys, and with a maximum frame
//! size (a larger declared frame drops its connection before any of it is allocated). Then
//! [`Bound::start`] starts one task per job, so that no socket waits behind another:
//!
//! - one task per ROUTER socket reads whole messages into its own bounded queue
//!   ([`Transport::shell`], [`Transport::control`], [`Transport::stdin`]) and writes the
//!   messages routed to it; a slow reader of shell never delays control;
//! - one task owns the iopub socket: it publishes and reports each subscription (XPUB verbose,
//!   so a second subscriber to the same topic is reported too) for `iopub_welcome`;
//! - one dispatcher routes every [`Outgoing`] by its [`Channel`] to its socket's task;
//! - the heartbeat echoes on a thread of its own, so it answers whatever tokio is doing.
//!
//! Each socket's connection events (handshake failures, dropped connections) are logged.
//! Dropping [`Transport`] ends the tasks (the heartbeat stops once every clone of
//! [`Transport::outgoing`] is gone). Before the process exits, call [`Transport::flush`] and then
//! [`Closer::close`], which waits (up to the linger time) until libzmq has written what it holds.

mod dispatch;
mod gate;
mod heartbeat;
mod monitor;
mod options;
mod socket;
mod tasks;
pub mod zmtp;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::sync::LockExt;

pub use monitor::RateLimit;
pub use options::{CurveKeys, SocketOptions, DEFAULT_MAX_MESSAGE_SIZE};

/// How many incoming messages each receive queue holds before its socket stops reading (the
/// peer's messages then wait in libzmq and the peer's TCP buffers; nothing is dropped).
pub const INCOMING_QUEUE_CAPACITY: usize = 1024;

/// A message channel of the Jupyter protocol (heartbeat carries no messages, so it has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Shell,
    Control,
    Stdin,
    Iopub,
}

impl Channel {
    /// The channel's name as Jupyter writes it.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Shell => "shell",
            Channel::Control => "control",
            Channel::Stdin => "stdin",
            Channel::Iopub => "iopub",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// Where the five sockets listen, as the connection file gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// `"tcp"` or `"ipc"`.
    pub transport: String,
    /// For tcp an address to bind, such as `127.0.0.1`, `0.0.0.0`, `*` or `::1`; for ipc the
    /// path prefix of the socket files (`{ip}-{port}`, as jupyter_client names them).
    pub ip: String,
    pub shell_port: u16,
    pub control_port: u16,
    pub stdin_port: u16,
    pub iopub_port: u16,
    pub hb_port: u16,
}

impl Endpoints {
    /// The libzmq address of one socket, e.g. `tcp://127.0.0.1:5555` or `ipc://kernel-ipc-5555`.
    fn address(&self, socket: &'static str, port: u16) -> Result<String, TransportError> {
        if port == 0 {
            return Err(TransportError::PortZero { socket });
        }
        match self.transport.as_str() {
            "tcp" => {
                let host = self.ip.as_str();
                if host.contains(':') && !host.starts_with('[') {
                    Ok(format!("tcp://[{host}]:{port}"))
                } else {
                    Ok(format!("tcp://{host}:{port}"))
                }
            }
            "ipc" => Ok(format!("ipc://{}", self.ipc_path(port).display())),
            _ => Err(TransportError::UnsupportedTransport { transport: self.transport.clone() }),
        }
    }

    /// The socket file of one port under the ipc transport.
    fn ipc_path(&self, port: u16) -> PathBuf {
        PathBuf::from(format!("{}-{port}", self.ip))
    }
}

/// One multipart message read from shell, control or stdin.
///
/// `frames` starts with the peer's identity frame, as the ROUTER socket received it; the rest
/// are the frames the client sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Incoming {
    pub channel: Channel,
    pub frames: Vec<Bytes>,
}

/// One multipart message to send.
///
/// For shell, control and stdin `frames[0]` is the identity of the peer to route to (the
/// identity frame of the [`Incoming`] being answered) and is not sent itself. For iopub the
/// frames are published as they are; the first one is the topic subscribers filter on.
#[derive(Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub channel: Channel,
    pub frames: Vec<Bytes>,
}

// Debug shows frame sizes only: frames hold user code and output, which belong in `trace` logs
// at most.
impl fmt::Debug for Incoming {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Incoming")
            .field("channel", &self.channel)
            .field("frame_lengths", &FrameLengths(&self.frames))
            .finish()
    }
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Outgoing")
            .field("channel", &self.channel)
            .field("frame_lengths", &FrameLengths(&self.frames))
            .finish()
    }
}

struct FrameLengths<'a>(&'a [Bytes]);

impl fmt::Debug for FrameLengths<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_list()
            .entries(self.0.iter().map(Bytes::len))
            .finish()
    }
}

/// The bound sockets, seen as queues.
///
/// The fields may be moved out and used from different tasks. Dropping a receiver ends its
/// socket's receive task; dropping every clone of `outgoing` ends the send tasks and the
/// heartbeat.
pub struct Transport {
    pub control: mpsc::Receiver<Incoming>,
    pub shell: mpsc::Receiver<Incoming>,
    pub stdin: mpsc::Receiver<Incoming>,
    /// One item per iopub subscription the XPUB socket sees (the subscription topic bytes,
    /// without the leading 0x01 byte). The kernel answers each with an `iopub_welcome` message.
    pub subscriptions: mpsc::Receiver<Bytes>,
    pub outgoing: mpsc::UnboundedSender<Outgoing>,
    flusher: Flusher,
    closer: Closer,
}

impl Transport {
    /// A transport with no sockets, for testing the kernel: the returned [`Peer`] holds the far
    /// end of every queue. Its `flush` returns at once, since whatever was sent is already in
    /// [`Peer::outgoing`].
    pub fn unbound() -> (Transport, Peer) {
        let (shell, shell_incoming) = mpsc::channel(INCOMING_QUEUE_CAPACITY);
        let (control, control_incoming) = mpsc::channel(INCOMING_QUEUE_CAPACITY);
        let (stdin, stdin_incoming) = mpsc::channel(INCOMING_QUEUE_CAPACITY);
        let (subscribe, subscriptions) = mpsc::channel(INCOMING_QUEUE_CAPACITY);
        let (outgoing, outgoing_queue) = mpsc::unbounded_channel();
        let transport = Transport {
            control: control_incoming,
            shell: shell_incoming,
            stdin: stdin_incoming,
            subscriptions,
            outgoing,
            flusher: Flusher { requests: None },
            closer: Closer { inner: Arc::new(Mutex::new(None)) },
        };
        let peer = Peer {
            shell,
            control,
            stdin,
            subscriptions: subscribe,
            outgoing: outgoing_queue,
        };
        (transport, peer)
    }

    /// Waits until every [`Outgoing`] sent (on any clone of `outgoing`) before this call has
    /// been handed to libzmq, or dropped because it cannot be routed. libzmq writes it to the
    /// connection on its own I/O thread; [`Closer::close`] waits for that before the process
    /// exits. Returns at once if the transport's tasks have ended.
    pub async fn flush(&self) {
        self.flusher.flush().await;
    }

    /// A handle that can flush after the `Transport` itself was taken apart.
    pub fn flusher(&self) -> Flusher {
        self.flusher.clone()
    }

    /// A handle that closes the sockets' context once their tasks are gone; see
    /// [`Closer::close`]. An unbound transport's closer does nothing.
    pub fn closer(&self) -> Closer {
        self.closer.clone()
    }
}

/// Flushes the outgoing queues; see [`Transport::flush`].
#[derive(Clone)]
pub struct Flusher {
    /// `None` for an unbound transport, which has nothing to flush.
    requests: Option<mpsc::UnboundedSender<oneshot::Sender<()>>>,
}

impl Flusher {
    /// See [`Transport::flush`].
    pub async fn flush(&self) {
        let Some(requests) = &self.requests else {
            return;
        };
        let (done, flushed) = oneshot::channel();
        if requests.send(done).is_ok() {
            // An error means the dispatcher ended: nothing more can be written.
            let _ = flushed.await;
        }
    }
}

/// The far end of an unbound [`Transport`] (see [`Transport::unbound`]): what a test sends on
/// `shell`, `control`, `stdin` and `subscriptions` arrives on the transport's receivers, and
/// everything the kernel sends on the transport's `outgoing` arrives on `outgoing`.
pub struct Peer {
    pub shell: mpsc::Sender<Incoming>,
    pub control: mpsc::Sender<Incoming>,
    pub stdin: mpsc::Sender<Incoming>,
    pub subscriptions: mpsc::Sender<Bytes>,
    pub outgoing: mpsc::UnboundedReceiver<Outgoing>,
}

/// Everything that can go wrong in the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("transport {transport:?} is not supported: the connection file may say \"tcp\" or \"ipc\"")]
    UnsupportedTransport { transport: String },
    #[error("the {socket} port is 0: the connection file must give every port")]
    PortZero { socket: &'static str },
    #[error("cannot bind the {socket} socket to {address}")]
    Bind {
        socket: &'static str,
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot bind the {socket} socket behind its gate to {path} (a Unix socket path must be \
         shorter than 108 bytes: set XDG_RUNTIME_DIR or TMPDIR to a shorter directory)"
    )]
    PrivateSocket {
        socket: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("will not bind an ipc socket at {path}: {why}")]
    IpcPathTaken { path: String, why: &'static str },
    #[error("cannot make a private directory for the sockets behind the gates")]
    PrivateDirectory(#[source] std::io::Error),
    #[error("cannot set up the {socket} socket ({what})")]
    Setup {
        socket: &'static str,
        what: &'static str,
        #[source]
        source: zmq::Error,
    },
    #[error("cannot watch the {socket} socket from tokio")]
    Watch {
        socket: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the ipc socket file {path} private to this user")]
    IpcPermissions {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the connection file's CurveZMQ keys are not usable: {0}")]
    CurveKeys(String),
    #[error("this libzmq was built without CurveZMQ, but the connection file carries CurveZMQ keys")]
    NoCurve,
    #[error("cannot start the heartbeat thread")]
    Heartbeat(#[source] std::io::Error),
    #[error("cannot start the gates in front of the sockets")]
    Gate(#[source] std::io::Error),
}

/// The five sockets, bound and configured, not yet served. Binding needs no tokio runtime, so a
/// kernel binds before anything else starts (before Python's threads, while its umask makes ipc
/// socket files private) and reports a taken port before doing any other work.
pub struct Bound {
    sockets: options::FiveSockets,
    /// Under tcp, the gate in front of each socket (heartbeat included).
    gates: Vec<gate::Gate>,
    max_message_size: u64,
    /// Socket files and directories to remove at exit.
    files: Vec<PathBuf>,
}

/// Binds the five sockets: every port must be given (a port of 0 is an error: nobody could learn
/// the port chosen).
///
/// Under tcp, the gate listens on each port and libzmq binds a Unix socket in a fresh directory
/// only this user can enter. Under ipc, libzmq binds the connection file's paths itself; the
/// socket files are created readable and writable by this user only. Files are removed when the
/// process exits.
pub fn bind_sockets(endpoints: &Endpoints, options: &SocketOptions) -> Result<Bound, TransportError> {
    // Every TCP connection holds three descriptors (the peer's, the gate's Unix side, libzmq's):
    // take every descriptor the system allows, as servers do.
    options::raise_descriptor_limit();
    let sockets = options::FiveSockets::new(options)?;
    let tcp = match endpoints.transport.as_str() {
        "tcp" => true,
        "ipc" => false,
        _ => return Err(TransportError::UnsupportedTransport { transport: endpoints.transport.clone() }),
    };
    let mut files = Vec::new();
    let private_directory = if tcp {
        let directory = options::private_directory().map_err(TransportError::PrivateDirectory)?;
        files.push(directory.clone());
        options::remove_at_exit(&directory);
        Some(directory)
    } else {
        None
    };
    let mut gates = Vec::new();
    for (name, socket, port) in [
        ("shell", &sockets.shell, endpoints.shell_port),
        ("control", &sockets.control, endpoints.control_port),
        ("stdin", &sockets.stdin, endpoints.stdin_port),
        ("iopub", &sockets.iopub, endpoints.iopub_port),
        ("heartbeat", &sockets.heartbeat, endpoints.hb_port),
    ] {
        let address = endpoints.address(name, port)?;
        // Under tcp, the gate takes the port and libzmq a Unix socket behind it; under ipc,
        // libzmq binds the connection file's path itself.
        let path = match &private_directory {
            Some(directory) => {
                let host = endpoints.ip.trim_start_matches('[').trim_end_matches(']');
                let host = if host == "*" { "0.0.0.0" } else { host };
                let listener = std::net::TcpListener::bind((host, port))
                    .map_err(|source| TransportError::Bind { socket: name, address: address.clone(), source })?;
                let path = directory.join(name);
                gates.push(gate::Gate { name, listener, upstream: path.clone() });
                path
            }
            None => {
                let path = endpoints.ipc_path(port);
                options::check_ipc_path(&path)?;
                path
            }
        };
        let private = options::PrivateFiles::while_binding();
        socket.bind(&format!("ipc://{}", path.display())).map_err(|source| {
            let source = source.into();
            if tcp {
                TransportError::PrivateSocket { socket: name, path: path.display().to_string(), source }
            } else {
                TransportError::Bind { socket: name, address: address.clone(), source }
            }
        })?;
        drop(private);
        options::make_private(&path)?;
        options::remove_at_exit(&path);
        files.push(path);
        tracing::debug!(socket = name, %address, "bound");
    }
    Ok(Bound { sockets, gates, max_message_size: options.max_message_size, files })
}

impl Bound {
    /// Starts the gates, the socket tasks and the heartbeat thread. Must be called inside a
    /// tokio runtime.
    pub fn start(self) -> Result<Transport, TransportError> {
        let options::FiveSockets { context, shell, control, stdin, iopub, heartbeat } = self.sockets;
        // Each socket may hand the kernel one maximum-size message beyond what it holds.
        let queued = self.max_message_size;
        let (shell_incoming, shell_queue) = tasks::start_router(Channel::Shell, shell, &context, queued)?;
        let (control_incoming, control_queue) = tasks::start_router(Channel::Control, control, &context, queued)?;
        let (stdin_incoming, stdin_queue) = tasks::start_router(Channel::Stdin, stdin, &context, queued)?;
        let (subscriptions, iopub_queue) = tasks::start_iopub(iopub, &context, queued)?;

        // The dispatcher holds `alive`; the heartbeat and the gates stop when it ends.
        let (alive, heartbeat_alive) = watch::channel(());
        let gates = if self.gates.is_empty() {
            None
        } else {
            Some(gate::start(self.gates, self.max_message_size, alive.subscribe()).map_err(TransportError::Gate)?)
        };
        let heartbeat = heartbeat::start(heartbeat, heartbeat_alive).map_err(TransportError::Heartbeat)?;

        let (outgoing, outgoing_queue) = mpsc::unbounded_channel();
        let (flush_requests, flush_queue) = mpsc::unbounded_channel();
        dispatch::start(
            outgoing_queue,
            flush_queue,
            dispatch::SocketQueues { shell: shell_queue, control: control_queue, stdin: stdin_queue, iopub: iopub_queue },
            alive,
        );
        let closer = Closer {
            inner: Arc::new(Mutex::new(Some(CloserState { context, heartbeat, gates, files: self.files }))),
        };
        Ok(Transport {
            control: control_incoming,
            shell: shell_incoming,
            stdin: stdin_incoming,
            subscriptions,
            outgoing,
            flusher: Flusher { requests: Some(flush_requests) },
            closer,
        })
    }
}

/// Binds the five sockets and starts their tasks ([`bind_sockets`] then [`Bound::start`]).
/// Must be called inside a tokio runtime.
pub async fn bind(endpoints: &Endpoints, options: &SocketOptions) -> Result<Transport, TransportError> {
    bind_sockets(endpoints, options)?.start()
}

/// Waits until libzmq has written what it holds; see [`Closer::close`].
#[derive(Clone)]
pub struct Closer {
    inner: Arc<Mutex<Option<CloserState>>>,
}

struct CloserState {
    context: zmq::Context,
    heartbeat: std::thread::JoinHandle<()>,
    gates: Option<std::thread::JoinHandle<()>>,
    files: Vec<PathBuf>,
}

impl Closer {
    /// Call after the socket tasks have ended (the tokio runtime that ran them was dropped, or
    /// the [`Transport`] was dropped and its tasks finished). Waits for the heartbeat thread,
    /// then terminates the libzmq context: that returns once every message handed to libzmq
    /// was written, or the linger time (1 s) has passed; then waits for the gates to relay it.
    /// Removes the socket files and their private directory. Calling it again does nothing.
    pub fn close(&self) {
        let state = self.inner.lock_unpoisoned().take();
        let Some(CloserState { context, heartbeat, gates, files }) = state else {
            return;
        };
        if heartbeat.join().is_err() {
            tracing::warn!("the heartbeat thread panicked");
        }
        // Dropping the last handle terminates the context; the sockets were dropped with their
        // tasks, so it waits only for lingering messages.
        drop(context);
        // The gates relay what libzmq wrote last, then end (bounded by their drain time).
        if let Some(gates) = gates {
            if gates.join().is_err() {
                tracing::warn!("the gate thread panicked");
            }
        }
        // Socket files first, then the directory that held them.
        for path in files.iter().rev() {
            options::remove_now(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(transport: &str, ip: &str) -> Endpoints {
        Endpoints {
            transport: transport.to_owned(),
            ip: ip.to_owned(),
            shell_port: 1,
            control_port: 2,
            stdin_port: 3,
            iopub_port: 4,
            hb_port: 5,
        }
    }

    #[test]
    fn addresses_follow_libzmq_syntax() {
        let address = |ip: &str| endpoints("tcp", ip).address("shell", 5555).unwrap();
        assert_eq!(address("127.0.0.1"), "tcp://127.0.0.1:5555");
        assert_eq!(address("*"), "tcp://*:5555");
        assert_eq!(address("::1"), "tcp://[::1]:5555");
        assert_eq!(address("[::1]"), "tcp://[::1]:5555");
        assert_eq!(address("localhost"), "tcp://localhost:5555");
        let ipc = endpoints("ipc", "/run/user/1/kernel-1-ipc").address("shell", 3).unwrap();
        assert_eq!(ipc, "ipc:///run/user/1/kernel-1-ipc-3");
    }

    #[test]
    fn refuses_what_cannot_be_bound() {
        let error = endpoints("udp", "kernel").address("shell", 1).unwrap_err();
        assert!(matches!(error, TransportError::UnsupportedTransport { .. }));
        assert!(error.to_string().contains("\"tcp\" or \"ipc\""), "{error}");
        let error = endpoints("tcp", "127.0.0.1").address("iopub", 0).unwrap_err();
        assert_eq!(error.to_string(), "the iopub port is 0: the connection file must give every port");
    }

    #[tokio::test]
    async fn unbound_transport_connects_its_queues_to_the_peer() {
        let (mut transport, mut peer) = Transport::unbound();
        let incoming = Incoming {
            channel: Channel::Control,
            frames: vec![Bytes::from_static(b"id"), Bytes::from_static(b"request")],
        };
        peer.control.send(incoming.clone()).await.unwrap();
        assert_eq!(transport.control.recv().await, Some(incoming));
        peer.subscriptions.send(Bytes::new()).await.unwrap();
        assert_eq!(transport.subscriptions.recv().await, Some(Bytes::new()));

        let reply = Outgoing {
            channel: Channel::Control,
            frames: vec![Bytes::from_static(b"id"), Bytes::from_static(b"reply")],
        };
        transport.outgoing.send(reply.clone()).unwrap();
        transport.flush().await;
        assert_eq!(peer.outgoing.try_recv().ok(), Some(reply));
    }

    #[test]
    fn debug_shows_sizes_not_contents() {
        let message = Outgoing {
            channel: Channel::Shell,
            frames: vec![Bytes::from_static(b"identity"), Bytes::from_static(b"secret")],
        };
        let shown = format!("{message:?}");
        assert_eq!(shown, "Outgoing { channel: Shell, frame_lengths: [8, 6] }");
    }
}
