//! The Python executor end to end, without sockets: the main lane runs on this process's main
//! thread (this test has no harness, so `main` is that thread) and a driver thread plays the
//! kernel: it runs jobs, answers input requests, interrupts, and reads the events.
//!
//! Every wait has a timeout only as a failure guard; ordering is never left to sleeps.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::FromRawFd;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use parakernel::kernel::executor::{
    Event, ExecuteJob, Executor, InterruptTarget, Job, Lane, Query, RequestId, StreamName,
};
use parakernel::python::{self, PythonExecutor, PythonOptions};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;

/// The test's own output: copies of the original stdout and stderr, made before the main lane
/// turns fds 1 and 2 into the cells' output (as the binary does for its log).
static REPORT: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

macro_rules! say {
    ($($arg:tt)*) => {{
        let mut report = REPORT.get().expect("report file").lock().unwrap_or_else(PoisonError::into_inner);
        let _ = writeln!(report, $($arg)*);
    }};
}

/// A failure guard, generous enough for a slow CI machine.
const GUARD: Duration = Duration::from_secs(60);

struct Kernel {
    executor: PythonExecutor,
    events: UnboundedReceiver<Event>,
    runtime: tokio::runtime::Runtime,
    next_request: RequestId,
    /// Events read while waiting for something else, in arrival order.
    stash: Vec<Event>,
}

/// What one execute job produced.
struct Outcome {
    events: Vec<Event>,
    reply: Value,
}

impl Outcome {
    fn stdout(&self) -> String {
        self.stream(StreamName::Stdout)
    }

    fn stream(&self, wanted: StreamName) -> String {
        self.events
            .iter()
            .filter_map(|event| match event {
                Event::Stream { name, text, .. } if *name == wanted => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    fn published(&self, wanted: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter_map(|event| match event {
                Event::Publish {
                    msg_type, content, ..
                } if msg_type == wanted => Some(content),
                _ => None,
            })
            .collect()
    }

    fn status(&self) -> &str {
        self.reply["status"].as_str().unwrap_or("<none>")
    }

    fn ename(&self) -> &str {
        self.reply["ename"].as_str().unwrap_or("<none>")
    }
}

impl Kernel {
    fn next_event(&mut self, guard: Duration) -> Event {
        if !self.stash.is_empty() {
            return self.stash.remove(0);
        }
        let events = &mut self.events;
        self.runtime
            .block_on(async { tokio::time::timeout(guard, events.recv()).await })
            .unwrap_or_else(|_| panic!("no event within {guard:?}"))
            .expect("the event channel closed")
    }

    /// Reads events until `wanted` matches one, which is returned; the others are stashed.
    fn wait_for(&mut self, guard: Duration, what: &str, wanted: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + guard;
        let mut skipped = Vec::new();
        let mut from_stash = std::mem::take(&mut self.stash).into_iter();
        loop {
            let event = if let Some(event) = from_stash.next() {
                event
            } else {
                let left = deadline.saturating_duration_since(Instant::now());
                let events = &mut self.events;
                match self
                    .runtime
                    .block_on(async { tokio::time::timeout(left, events.recv()).await })
                {
                    Ok(Some(event)) => event,
                    Ok(None) => panic!("the event channel closed while waiting for {what}"),
                    Err(tokio::time::error::Elapsed { .. }) => {
                        panic!("no {what} within {guard:?}; other events: {skipped:?}")
                    }
                }
            };
            if wanted(&event) {
                skipped.extend(from_stash);
                self.stash = skipped;
                return event;
            }
            skipped.push(event);
        }
    }

    fn start(&mut self, code: &str, allow_stdin: bool, execution_count: u64) -> RequestId {
        self.next_request += 1;
        let request = self.next_request;
        let job = ExecuteJob {
            request,
            code: code.into(),
            silent: false,
            store_history: true,
            user_expressions: Map::new(),
            allow_stdin,
            execution_count,
            parent_header: json!({ "msg_id": format!("request-{request}"), "msg_type": "execute_request" }),
        };
        self.executor.run(&Lane::Main, Job::Execute(job));
        request
    }

    /// Collects the events of `request` until its `Finished`.
    fn finish(&mut self, request: RequestId, guard: Duration) -> Outcome {
        let mut events = Vec::new();
        let deadline = Instant::now() + guard;
        loop {
            let event = self.next_event(deadline.saturating_duration_since(Instant::now()));
            match event {
                Event::Finished {
                    request: finished,
                    reply,
                } if finished == request => {
                    return Outcome {
                        events,
                        reply: reply.unwrap_or(Value::Null),
                    };
                }
                Event::Stream {
                    request: Some(r), ..
                }
                | Event::Publish {
                    request: Some(r), ..
                }
                | Event::InputRequest { request: r, .. }
                    if r == request =>
                {
                    events.push(event);
                }
                other => panic!("unexpected event while running request {request}: {other:?}"),
            }
        }
    }

    fn execute(&mut self, code: &str) -> Outcome {
        let request = self.start(code, false, self.next_request + 1);
        self.finish(request, GUARD)
    }

    fn execute_ok(&mut self, code: &str) -> Outcome {
        let outcome = self.execute(code);
        assert_eq!(
            outcome.status(),
            "ok",
            "cell {code:?} failed: {}",
            outcome.reply
        );
        outcome
    }

    fn query(&mut self, query: Query) -> Value {
        self.next_request += 1;
        let request = self.next_request;
        self.executor.query(&Lane::Main, request, query);
        match self.wait_for(
            GUARD,
            "query answer",
            |event| matches!(event, Event::Answered { request: r, .. } if *r == request),
        ) {
            Event::Answered { reply, .. } => reply,
            _ => unreachable!(),
        }
    }
}

/// Drops ANSI colour sequences (`IPython` colours tracebacks, as under ipykernel).
fn strip_ansi(text: &str) -> String {
    let mut plain = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

fn check_print(kernel: &mut Kernel) {
    let request = kernel.start("print('hello')\nprint('world', 42)", false, 5);
    let outcome = kernel.finish(request, GUARD);
    assert_eq!(outcome.stdout(), "hello\nworld 42\n");
    assert!(outcome
        .events
        .iter()
        .all(|event| matches!(event, Event::Stream { request: Some(r), .. } if *r == request)));
    assert_eq!(outcome.reply["status"], "ok");
    assert_eq!(outcome.reply["execution_count"], 5);
    assert_eq!(outcome.reply["payload"], json!([]));
    assert_eq!(outcome.reply["user_expressions"], json!({}));

    let stderr = kernel.execute_ok("import sys\nprint('oops', file=sys.stderr)");
    assert_eq!(stderr.stream(StreamName::Stderr), "oops\n");
}

fn check_stdout_object(kernel: &mut Kernel) {
    let outcome = kernel.execute_ok(
        "import sys, io\n\
         s = sys.stdout\n\
         assert not s.isatty() and s.writable() and not s.readable()\n\
         assert s.encoding.lower() == 'utf-8', s.encoding\n\
         assert s.name == 'stdout', s.name\n\
         try:\n    s.fileno()\nexcept io.UnsupportedOperation:\n    pass\nelse:\n    raise AssertionError('fileno')\n\
         s.writelines(['a', 'b\\n'])\n\
         s.flush()\n\
         print(s.write('xyz'))",
    );
    assert_eq!(outcome.stdout(), "ab\nxyz3\n");
}

fn check_error(kernel: &mut Kernel) {
    let outcome = kernel.execute("x = 1\n1/0");
    assert_eq!(outcome.status(), "error");
    assert_eq!(outcome.ename(), "ZeroDivisionError");
    assert_eq!(outcome.reply["evalue"], "division by zero");
    let errors = outcome.published("error");
    assert_eq!(errors.len(), 1, "one error message: {:?}", outcome.events);
    assert_eq!(errors[0]["ename"], "ZeroDivisionError");
    let traceback = errors[0]["traceback"].as_array().expect("traceback list");
    let plain: String = traceback
        .iter()
        .map(|line| strip_ansi(line.as_str().unwrap_or("")))
        .collect();
    assert!(plain.contains("----> 2 1/0"), "{plain}");
    assert_eq!(outcome.reply["traceback"], errors[0]["traceback"]);

    let syntax = kernel.execute("def f(:\n    pass");
    assert_eq!(syntax.ename(), "SyntaxError");
    assert_eq!(syntax.published("error").len(), 1);
}

fn check_display(kernel: &mut Kernel) {
    let outcome = kernel.execute_ok(
        "from IPython.display import display, update_display, clear_output, HTML\n\
         display('first', display_id='d1')\n\
         update_display('second', display_id='d1')\n\
         display(HTML('<b>bold</b>'))\n\
         clear_output(wait=True)",
    );
    let kinds: Vec<&str> = outcome
        .events
        .iter()
        .filter_map(|event| match event {
            Event::Publish { msg_type, .. } => Some(msg_type.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "display_data",
            "update_display_data",
            "display_data",
            "clear_output"
        ]
    );
    let first = outcome.published("display_data")[0];
    assert_eq!(first["data"]["text/plain"], "'first'");
    assert_eq!(first["transient"]["display_id"], "d1");
    let update = outcome.published("update_display_data")[0];
    assert_eq!(update["data"]["text/plain"], "'second'");
    assert_eq!(update["transient"]["display_id"], "d1");
    assert_eq!(
        outcome.published("display_data")[1]["data"]["text/html"],
        "<b>bold</b>"
    );
    assert_eq!(outcome.published("clear_output")[0]["wait"], true);
}

fn check_execute_result(kernel: &mut Kernel) {
    let request = kernel.start("6 * 7", false, 17);
    let outcome = kernel.finish(request, GUARD);
    let results = outcome.published("execute_result");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["execution_count"], 17);
    assert_eq!(results[0]["data"]["text/plain"], "42");
    assert_eq!(outcome.reply["execution_count"], 17);

    // A trailing semicolon silences the result; `_` and Out[] still work.
    let quiet = kernel.execute_ok("6 * 7;");
    assert!(quiet.published("execute_result").is_empty());
    let out = kernel.execute_ok("print(Out[17], _17)");
    assert_eq!(out.stdout(), "42 42\n");
}

fn check_user_expressions_and_silent(kernel: &mut Kernel) {
    kernel.next_request += 1;
    let request = kernel.next_request;
    let mut expressions = Map::new();
    expressions.insert("two".into(), json!("1 + 1"));
    expressions.insert("bad".into(), json!("undefined_name"));
    kernel.executor.run(
        &Lane::Main,
        Job::Execute(ExecuteJob {
            request,
            code: "print('silent')\n3".into(),
            silent: true,
            store_history: false,
            user_expressions: expressions,
            allow_stdin: false,
            execution_count: 30,
            parent_header: json!({ "msg_id": "silent", "msg_type": "execute_request" }),
        }),
    );
    let outcome = kernel.finish(request, GUARD);
    assert_eq!(outcome.stdout(), "silent\n");
    assert!(
        outcome.published("execute_result").is_empty(),
        "silent cells show no result"
    );
    let expressions = &outcome.reply["user_expressions"];
    assert_eq!(expressions["two"]["status"], "ok");
    assert_eq!(expressions["two"]["data"]["text/plain"], "2");
    assert_eq!(expressions["bad"]["status"], "error");
    assert_eq!(expressions["bad"]["ename"], "NameError");
}

fn check_pager_magic_and_shell(kernel: &mut Kernel) {
    let help = kernel.execute_ok("len?");
    let payload = help.reply["payload"].as_array().expect("payload list");
    assert_eq!(payload.len(), 1, "{payload:?}");
    assert_eq!(payload[0]["source"], "page");
    let text = payload[0]["data"]["text/plain"]
        .as_str()
        .expect("text/plain page");
    assert!(text.contains("Return the number of items"), "{text}");

    let timed = kernel.execute_ok("%%time\nsum(range(10))");
    assert!(timed.stdout().contains("Wall time"), "{}", timed.stdout());
    assert_eq!(
        timed.published("execute_result")[0]["data"]["text/plain"],
        "45"
    );

    let shell = kernel.execute_ok("!echo from-a-shell");
    assert!(
        shell.stdout().contains("from-a-shell"),
        "{:?}",
        shell.stdout()
    );

    let name = kernel.execute_ok(
        "print(type(get_ipython()).__name__, get_ipython() is type(get_ipython()).instance())",
    );
    assert_eq!(name.stdout(), "ZMQInteractiveShell True\n");

    let usage = kernel.execute("%no_such_magic");
    assert_eq!(usage.status(), "error");
    assert_eq!(usage.ename(), "UsageError");
}

fn check_input(kernel: &mut Kernel) {
    let request = kernel.start("name = input('name? ')\nprint('got', name)", true, 40);
    match kernel.next_event(GUARD) {
        Event::InputRequest {
            request: r,
            prompt,
            password,
        } => {
            assert_eq!((r, prompt.as_str(), password), (request, "name? ", false));
        }
        other => panic!("expected an input request, got {other:?}"),
    }
    kernel.executor.input_reply(&Lane::Main, "Ada".into());
    let outcome = kernel.finish(request, GUARD);
    assert_eq!(outcome.status(), "ok", "{}", outcome.reply);
    assert_eq!(outcome.stdout(), "got Ada\n");

    let request = kernel.start(
        "import getpass\nsecret = getpass.getpass()\nprint(len(secret))",
        true,
        41,
    );
    match kernel.next_event(GUARD) {
        Event::InputRequest {
            prompt, password, ..
        } => assert_eq!((prompt.as_str(), password), ("Password: ", true)),
        other => panic!("expected an input request, got {other:?}"),
    }
    kernel.executor.input_reply(&Lane::Main, "hunter2".into());
    assert_eq!(kernel.finish(request, GUARD).stdout(), "7\n");

    let refused = kernel.execute("input('no stdin here')");
    assert_eq!(refused.ename(), "StdinNotImplementedError");
    assert!(refused.reply["evalue"]
        .as_str()
        .unwrap_or("")
        .contains("does not support input requests"));
}

fn check_interrupt_sleep(kernel: &mut Kernel) {
    let request = kernel.start(
        "import time\nprint('sleeping', flush=True)\ntime.sleep(30)\nprint('woke')",
        false,
        50,
    );
    kernel.wait_for(
        GUARD,
        "the sleeping cell's output",
        |event| matches!(event, Event::Stream { text, .. } if text.contains("sleeping")),
    );
    let interrupted = Instant::now();
    kernel.executor.interrupt(&InterruptTarget::All);
    // Well under the 30 s the cell would sleep.
    let outcome = kernel.finish(request, Duration::from_secs(15));
    say!("  time.sleep interrupted after {:?}", interrupted.elapsed());
    assert_eq!(outcome.ename(), "KeyboardInterrupt", "{}", outcome.reply);
    assert!(!outcome.stdout().contains("woke"));
    assert_eq!(outcome.published("error").len(), 1);
    // No interrupt is left over for the next cell.
    assert_eq!(kernel.execute_ok("print('after')").stdout(), "after\n");
}

fn check_interrupt_input(kernel: &mut Kernel) {
    let request = kernel.start("input('waiting: ')", true, 51);
    kernel.wait_for(GUARD, "the input request", |event| {
        matches!(event, Event::InputRequest { .. })
    });
    kernel.executor.interrupt(&InterruptTarget::All);
    let outcome = kernel.finish(request, Duration::from_secs(15));
    assert_eq!(outcome.ename(), "KeyboardInterrupt", "{}", outcome.reply);
    assert_eq!(outcome.reply["evalue"], "Interrupted by user");
    // A reply that comes too late is dropped, not kept for the next input().
    kernel.executor.input_reply(&Lane::Main, "late".into());
    assert_eq!(
        kernel.execute_ok("print('after input')").stdout(),
        "after input\n"
    );
}

fn check_interrupt_when_idle(kernel: &mut Kernel) {
    kernel.executor.interrupt(&InterruptTarget::All);
    assert_eq!(
        kernel.execute_ok("print('unaffected')").stdout(),
        "unaffected\n"
    );
}

fn check_queries_while_busy(kernel: &mut Kernel) {
    kernel.execute_ok("alpha_beta_gamma = 1");
    let asked = Instant::now();
    kernel.query(Query::Complete {
        code: "alpha_b".into(),
        cursor_pos: 7,
    });
    say!(
        "  completion of a global on an idle lane answered in {:?}",
        asked.elapsed()
    );
    let request = kernel.start(
        "print('spinning', flush=True)\nwhile True:\n    pass",
        false,
        60,
    );
    kernel.wait_for(
        GUARD,
        "the busy cell's output",
        |event| matches!(event, Event::Stream { text, .. } if text.contains("spinning")),
    );
    let asked = Instant::now();
    let reply = kernel.query(Query::Complete {
        code: "alpha_be".into(),
        cursor_pos: 8,
    });
    say!(
        "  completion while a cell spins answered in {:?}",
        asked.elapsed()
    );
    assert_eq!(reply["status"], "ok", "{reply}");
    assert!(
        reply["matches"]
            .as_array()
            .unwrap()
            .contains(&json!("alpha_beta_gamma")),
        "{reply}"
    );
    assert_eq!(reply["cursor_start"], 0);
    assert_eq!(reply["cursor_end"], 8);
    assert!(reply["metadata"]["_jupyter_types_experimental"].is_array());

    let asked = Instant::now();
    let reply = kernel.query(Query::IsComplete {
        code: "for i in range(3):".into(),
    });
    say!(
        "  is_complete while a cell spins answered in {:?}",
        asked.elapsed()
    );
    assert_eq!(reply, json!({ "status": "incomplete", "indent": "    " }));

    kernel.executor.interrupt(&InterruptTarget::All);
    let outcome = kernel.finish(request, Duration::from_secs(15));
    assert_eq!(outcome.ename(), "KeyboardInterrupt");
}

fn check_queries(kernel: &mut Kernel) {
    kernel.execute_ok("import os");
    for round in 0..3 {
        let asked = Instant::now();
        let reply = kernel.query(Query::Complete {
            code: "os.pa".into(),
            cursor_pos: 5,
        });
        say!(
            "  completion {round} on an idle lane answered in {:?}",
            asked.elapsed()
        );
        assert_eq!(reply["status"], "ok", "{reply}");
        assert!(
            reply["matches"]
                .as_array()
                .unwrap()
                .contains(&json!("path")),
            "{reply}"
        );
        assert_eq!(
            (reply["cursor_start"].as_u64(), reply["cursor_end"].as_u64()),
            (Some(3), Some(5))
        );
    }
    let reply = kernel.query(Query::IsComplete {
        code: "x = 1".into(),
    });
    assert_eq!(reply, json!({ "status": "complete" }));
    let reply = kernel.query(Query::IsComplete {
        code: "x = (".into(),
    });
    assert_eq!(reply["status"], "incomplete");
    let reply = kernel.query(Query::Inspect {
        code: "len".into(),
        cursor_pos: 3,
        detail_level: 0,
    });
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["found"], true);
    assert!(reply["data"]["text/plain"]
        .as_str()
        .unwrap()
        .contains("Return the number of items"));
    let reply = kernel.query(Query::Inspect {
        code: "no_such_thing_here".into(),
        cursor_pos: 5,
        detail_level: 0,
    });
    assert_eq!(reply["found"], false);
    let reply = kernel.query(Query::CommInfo { target_name: None });
    assert_eq!(reply["status"], "ok");
    assert!(reply["comms"].is_object());
}

fn check_comms(kernel: &mut Kernel) {
    let outcome =
        kernel.execute_ok("import ipywidgets\nslider = ipywidgets.IntSlider(value=3)\nslider");
    let opens = outcome.published("comm_open");
    let open = opens
        .iter()
        .find(|open| open["data"]["state"]["_model_name"] == "IntSliderModel")
        .unwrap_or_else(|| panic!("no IntSlider comm_open in {opens:?}"));
    assert_eq!(open["target_name"], "jupyter.widget");
    let comm_id = open["comm_id"].as_str().expect("comm id").to_string();
    let view = outcome.published("execute_result");
    assert_eq!(
        view[0]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"],
        comm_id.as_str()
    );

    let info = kernel.query(Query::CommInfo {
        target_name: Some("jupyter.widget".into()),
    });
    assert_eq!(
        info["comms"][comm_id.as_str()]["target_name"],
        "jupyter.widget"
    );

    // The frontend moves the slider.
    kernel.next_request += 1;
    let request = kernel.next_request;
    let content = json!({ "comm_id": comm_id, "data": { "method": "update", "state": { "value": 9 }, "buffer_paths": [] } });
    kernel.executor.run(
        &Lane::Main,
        Job::Comm {
            request,
            msg_type: "comm_msg".into(),
            content,
            metadata: Map::new(),
            buffers: Vec::new(),
            parent_header: json!({ "msg_id": "comm_msg-request", "msg_type": "comm_msg" }),
        },
    );
    let outcome = kernel.finish(request, GUARD);
    assert_eq!(outcome.reply, Value::Null, "comm jobs owe no reply");
    assert_eq!(kernel.execute_ok("print(slider.value)").stdout(), "9\n");

    // The kernel side changes it: a comm_msg goes out.
    let outcome = kernel.execute_ok("slider.value = 4");
    let messages = outcome.published("comm_msg");
    assert!(
        messages
            .iter()
            .any(|m| m["comm_id"] == comm_id.as_str() && m["data"]["state"]["value"] == 4),
        "{messages:?}"
    );

    // The frontend closes it.
    kernel.next_request += 1;
    let request = kernel.next_request;
    let content = json!({ "comm_id": comm_id, "data": {} });
    kernel.executor.run(
        &Lane::Main,
        Job::Comm {
            request,
            msg_type: "comm_close".into(),
            content,
            metadata: Map::new(),
            buffers: Vec::new(),
            parent_header: json!({ "msg_id": "comm_close-request", "msg_type": "comm_close" }),
        },
    );
    kernel.finish(request, GUARD);
    let info = kernel.query(Query::CommInfo { target_name: None });
    assert!(info["comms"].get(comm_id.as_str()).is_none(), "{info}");
}

fn check_comm_buffers_and_parent(kernel: &mut Kernel) {
    let request = kernel.start("get_ipython().kernel.get_parent()['header']['msg_id']", false, 40);
    let outcome = kernel.finish(request, GUARD);
    let result = outcome.published("execute_result");
    assert_eq!(result[0]["data"]["text/plain"], format!("'request-{request}'"));

    kernel.execute_ok(concat!(
        "import comm\nreceived = []\n",
        "def opened(c, msg):\n",
        "    c.on_msg(lambda m: received.append((bytes(m['buffers'][0]), m['metadata'], m['header']['msg_id'])))\n",
        "comm.get_comm_manager().register_target('pk.test', opened)",
    ));
    let comm = |kernel: &mut Kernel, msg_type: &str, content: Value, buffers: Vec<Vec<u8>>| {
        kernel.next_request += 1;
        let request = kernel.next_request;
        let job = Job::Comm {
            request,
            msg_type: msg_type.into(),
            content,
            metadata: json!({ "tag": 7 }).as_object().cloned().unwrap(),
            buffers,
            parent_header: json!({ "msg_id": format!("{msg_type}-{request}"), "msg_type": msg_type }),
        };
        kernel.executor.run(&Lane::Main, job);
        kernel.finish(request, GUARD);
        request
    };
    comm(kernel, "comm_open", json!({ "comm_id": "c-1", "target_name": "pk.test", "data": {} }), vec![]);
    let sent = comm(kernel, "comm_msg", json!({ "comm_id": "c-1", "data": {} }), vec![vec![0, 1, 255]]);
    let outcome = kernel.execute_ok("received");
    assert_eq!(
        outcome.published("execute_result")[0]["data"]["text/plain"],
        format!("[(b'\\x00\\x01\\xff', {{'tag': 7}}, 'comm_msg-{sent}')]")
    );
}

fn check_matplotlib(kernel: &mut Kernel) {
    let outcome =
        kernel.execute_ok("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()");
    let images: Vec<_> = outcome
        .published("display_data")
        .into_iter()
        .filter(|d| d["data"]["image/png"].is_string())
        .collect();
    assert_eq!(images.len(), 1, "{:?}", outcome.events);
    let png = images[0]["data"]["image/png"].as_str().unwrap();
    assert!(png.starts_with("iVBORw0KG"), "base64 PNG expected");
}

fn check_fd_output(kernel: &mut Kernel) {
    let outcome = kernel.execute_ok(
        "import os, ctypes\n\
         print('before')\n\
         os.system('echo from-a-child')\n\
         os.write(2, b'raw fd 2\\n')\n\
         ctypes.CDLL(None).printf(b'c-level %d\\n', 7)\n\
         import subprocess\n\
         subprocess.run(['echo', 'from-subprocess'])\n\
         None",
    );
    let stdout = outcome.stdout();
    for expected in [
        "before\n",
        "from-a-child\n",
        "c-level 7\n",
        "from-subprocess\n",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from {stdout:?}"
        );
    }
    assert_eq!(outcome.stream(StreamName::Stderr), "raw fd 2\n");
}

fn check_thread_output(kernel: &mut Kernel) {
    kernel.execute_ok(
        "import threading\n\
         go = threading.Event()\n\
         worker = threading.Thread(target=lambda: (go.wait(), print('from the thread')))\n\
         worker.start()",
    );
    let request = kernel.start("go.set()\nworker.join()", false, 70);
    let outcome = kernel.finish(request, GUARD);
    assert_eq!(outcome.stdout(), "from the thread\n");
}

fn check_many_lines(kernel: &mut Kernel) {
    let started = Instant::now();
    let request = kernel.start("for i in range(100000):\n    print(i)", false, 80);
    let outcome = kernel.finish(request, GUARD);
    let elapsed = started.elapsed();
    let expected = (0..100_000).fold(String::new(), |mut text, i| {
        writeln!(text, "{i}").unwrap();
        text
    });
    assert!(
        outcome.stdout() == expected,
        "the 100,000 lines arrive complete and in order"
    );
    say!(
        "  100,000 printed lines: {elapsed:?} to the reply, {} stream events",
        outcome.events.len()
    );
}

fn check_round_trip(kernel: &mut Kernel) {
    let mut times: Vec<Duration> = (0..200)
        .map(|_| {
            let started = Instant::now();
            kernel.execute_ok("pass");
            started.elapsed()
        })
        .collect();
    times.sort();
    say!(
        "  `pass` through the executor: median {:?}, p99 {:?}",
        times[100],
        times[198]
    );
}

fn check_environment(kernel: &mut Kernel) {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv");
    let outcome = kernel.execute_ok(
        "import sys, os, signal\n\
         print(sys.prefix)\n\
         print(sys.executable)\n\
         print(os.environ.get('MPLBACKEND'))\n\
         print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n\
         print('_datetime' in sys.modules)",
    );
    let lines: Vec<String> = outcome.stdout().lines().map(str::to_string).collect();
    assert_eq!(PathBuf::from(&lines[0]), venv);
    assert_eq!(PathBuf::from(&lines[1]), venv.join("bin/python"));
    assert_eq!(lines[2], "module://matplotlib_inline.backend_inline");
    assert_eq!(lines[3], "True");
    assert_eq!(lines[4], "True");
}

type Check = fn(&mut Kernel);

fn drive(kernel: &mut Kernel) {
    let checks: &[(&str, Check)] = &[
        ("environment", check_environment),
        ("print", check_print),
        ("sys.stdout object", check_stdout_object),
        ("error", check_error),
        ("display", check_display),
        ("execute_result", check_execute_result),
        (
            "user_expressions and silent",
            check_user_expressions_and_silent,
        ),
        ("pager, magics, shell", check_pager_magic_and_shell),
        ("input", check_input),
        ("interrupt time.sleep", check_interrupt_sleep),
        ("interrupt input", check_interrupt_input),
        ("interrupt when idle", check_interrupt_when_idle),
        ("queries", check_queries),
        ("queries while busy", check_queries_while_busy),
        ("comms", check_comms),
        ("comm buffers and the parent request", check_comm_buffers_and_parent),
        ("matplotlib", check_matplotlib),
        ("thread output", check_thread_output),
        ("output to fds 1 and 2", check_fd_output),
        ("100,000 lines", check_many_lines),
        ("pass round trip", check_round_trip),
        ("still alive", |kernel| {
            assert_eq!(kernel.execute_ok("print('done')").stdout(), "done\n");
        }),
    ];
    for (name, check) in checks {
        say!("python_executor: {name}");
        check(kernel);
    }
}

fn main() {
    // As the binary does: log to a copy of the original stderr, since fd 2 becomes the cells'.
    // SAFETY: dup of fds 1 and 2; each new descriptor is owned by its File.
    let (report, log) = unsafe {
        (
            std::fs::File::from_raw_fd(libc::dup(1)),
            std::fs::File::from_raw_fd(libc::dup(2)),
        )
    };
    REPORT.set(Mutex::new(report)).expect("set once");
    std::panic::set_hook(Box::new(|panic| {
        say!("{panic}\n{}", std::backtrace::Backtrace::force_capture());
    }));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::sync::Mutex::new(log))
        .init();
    // Fail rather than hang, whatever goes wrong.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(600));
        say!("python_executor: timed out");
        std::process::exit(2);
    });
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let (sender, events) = tokio::sync::mpsc::unbounded_channel();
    let (executor, main_lane) = python::start(
        PythonOptions {
            python: Some(python),
        },
        sender,
    )
    .expect("start");

    let info = python::language_info();
    assert_eq!(info["name"], "python");
    assert!(info["version"].as_str().unwrap().starts_with("3."));
    assert!(python::banner().starts_with("Python 3."));

    let driver = std::thread::spawn(move || {
        // As in the kernel: SIGINT is for the main thread only.
        // SAFETY: changes this thread's signal mask only.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&raw mut set);
            libc::sigaddset(&raw mut set, libc::SIGINT);
            libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut kernel = Kernel {
            executor,
            events,
            runtime,
            next_request: 0,
            stash: Vec::new(),
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| drive(&mut kernel)));
        let shutdown = Instant::now();
        kernel.executor.shutdown();
        (result.is_ok(), shutdown)
    });

    let run = main_lane.run();
    let (passed, shutdown) = driver.join().expect("driver thread");
    say!(
        "python_executor: shutdown returned after {:?}",
        shutdown.elapsed()
    );
    if let Err(error) = &run {
        say!("python_executor: MainLane::run failed: {error}");
    }
    if !passed || run.is_err() {
        say!("python_executor: FAILED");
        std::process::exit(1);
    }
    say!("python_executor: all checks passed");
}
