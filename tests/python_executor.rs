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

use parakernel::lanes::{
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
    /// Requests started and not finished yet (their events may arrive interleaved).
    in_flight: std::collections::BTreeSet<RequestId>,
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

    /// The content of every output of type `wanted`, as it goes on the wire.
    fn published(&self, wanted: &str) -> Vec<Value> {
        self.events
            .iter()
            .filter_map(|event| match event {
                Event::Output { output, .. } if output.msg_type() == wanted => {
                    Some(serde_json::to_value(output).expect("outputs are JSON"))
                }
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

    /// The next event from the executor, or `None` once `deadline` has passed.
    fn receive_until(&mut self, deadline: Instant) -> Option<Event> {
        let left = deadline.saturating_duration_since(Instant::now());
        let events = &mut self.events;
        match self.runtime.block_on(async { tokio::time::timeout(left, events.recv()).await }) {
            Ok(Some(event)) => Some(event),
            Ok(None) => panic!("the event channel closed"),
            Err(tokio::time::error::Elapsed { .. }) => None,
        }
    }

    /// Reads events until `wanted` matches one, which is returned; the others are stashed.
    fn wait_for(&mut self, guard: Duration, what: &str, wanted: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + guard;
        let mut skipped = Vec::new();
        let mut from_stash = std::mem::take(&mut self.stash).into_iter();
        loop {
            let Some(event) = from_stash.next().or_else(|| self.receive_until(deadline)) else {
                panic!("no {what} within {guard:?}; other events: {skipped:?}")
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
        self.start_on(&Lane::Main, code, allow_stdin, execution_count)
    }

    fn start_on(
        &mut self,
        lane: &Lane,
        code: &str,
        allow_stdin: bool,
        execution_count: u64,
    ) -> RequestId {
        self.next_request += 1;
        let request = self.next_request;
        self.in_flight.insert(request);
        let job = ExecuteJob {
            request,
            code: code.into(),
            silent: false,
            store_history: true,
            user_expressions: Map::new(),
            allow_stdin,
            execution_count,
            parent_header: json!({ "msg_id": format!("request-{request}"), "msg_type": "execute_request" }),
            transfer: parakernel::lanes::Transfer::default(),
        };
        self.executor.run(lane, Job::Execute(job));
        request
    }

    /// The request an event belongs to, for events that belong to one.
    fn request_of(event: &Event) -> Option<RequestId> {
        match event {
            Event::Stream { request, .. }
            | Event::Output { request, .. }
            | Event::Call { request, .. } => *request,
            Event::InputRequest { request, .. }
            | Event::Finished { request, .. }
            | Event::Answered { request, .. } => Some(*request),
        }
    }

    /// Collects the events of `request` until its `Finished`. Events of other requests in
    /// flight (and lane calls) are kept for later; any other event is a failure.
    fn finish(&mut self, request: RequestId, guard: Duration) -> Outcome {
        let mut events = Vec::new();
        let deadline = Instant::now() + guard;
        let mut kept = Vec::new();
        let mut pending = std::mem::take(&mut self.stash).into_iter();
        loop {
            let Some(event) = pending.next().or_else(|| self.receive_until(deadline)) else {
                panic!("request {request} did not finish within {guard:?}; its events: {events:?}")
            };
            let owner = Self::request_of(&event);
            match event {
                Event::Finished { request: finished, reply } if finished == request => {
                    kept.extend(pending);
                    self.stash = kept;
                    self.in_flight.remove(&request);
                    return Outcome { events, reply: reply.map_or(Value::Null, |reply| reply.to_value()) };
                }
                Event::Stream { .. } | Event::Output { .. } | Event::InputRequest { .. }
                    if owner == Some(request) =>
                {
                    events.push(event);
                }
                Event::Call { .. } => kept.push(event),
                other if owner.is_some_and(|owner| self.in_flight.contains(&owner)) => {
                    kept.push(other);
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
        self.execute_ok_on(&Lane::Main, code)
    }

    fn execute_on(&mut self, lane: &Lane, code: &str) -> Outcome {
        let request = self.start_on(lane, code, false, self.next_request + 1);
        self.finish(request, GUARD)
    }

    fn execute_ok_on(&mut self, lane: &Lane, code: &str) -> Outcome {
        let outcome = self.execute_on(lane, code);
        assert_eq!(
            outcome.status(),
            "ok",
            "cell {code:?} failed in lane {}: {}",
            lane.name(),
            outcome.reply
        );
        outcome
    }

    fn query(&mut self, query: Query) -> Value {
        self.query_on(&Lane::Main, query)
    }

    fn query_on(&mut self, lane: &Lane, query: Query) -> Value {
        self.next_request += 1;
        let request = self.next_request;
        self.executor.query(lane, request, query);
        match self.wait_for(
            GUARD,
            "query answer",
            |event| matches!(event, Event::Answered { request: r, .. } if *r == request),
        ) {
            Event::Answered { reply, .. } => reply.expect("the lane answers"),
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
            Event::Output { output, .. } => Some(output.msg_type()),
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
    let first = outcome.published("display_data")[0].clone();
    assert_eq!(first["data"]["text/plain"], "'first'");
    assert_eq!(first["transient"]["display_id"], "d1");
    let update = outcome.published("update_display_data")[0].clone();
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
            transfer: parakernel::lanes::Transfer::default(),
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

// --- lanes ----------------------------------------------------------------------------------------

fn named(name: &str) -> Lane {
    Lane::Named(name.to_owned())
}

/// The text of the first `execute_result`.
fn result_text(outcome: &Outcome) -> String {
    outcome.published("execute_result")[0]["data"]["text/plain"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn check_lanes_available(kernel: &mut Kernel) {
    assert_eq!(kernel.executor.lanes_unavailable(), None);
    assert!(kernel.executor.fresh_lanes() >= 2, "at least 2 fresh lanes by default");
}

fn check_named_lane_basics(kernel: &mut Kernel) {
    let a = named("alpha");
    let before = rss_bytes();
    let created = Instant::now();
    let outcome = kernel.execute_ok_on(
        &a,
        "import _interpreters, sys, threading\n\
         alpha_x = 41\n\
         print(_interpreters.get_current()[0] != 0, threading.current_thread().ident == threading.get_ident())\n\
         type(get_ipython()).__name__",
    );
    say!("  first cell of a new named lane (interpreter + IPython): {:?}", created.elapsed());
    // The first lane also warmed the fresh-lane pool.
    for slot in 0..kernel.executor.fresh_lanes() {
        kernel.execute_ok_on(&Lane::Fresh(slot), "pass");
    }
    let lanes = kernel.executor.fresh_lanes() + 1;
    let grown = i64::try_from(rss_bytes()).unwrap() - i64::try_from(before).unwrap();
    say!(
        "  RSS of the first named lane and the warm pool: +{:.1} MB for {lanes} lanes ({:.1} MB each)",
        megabytes(grown),
        megabytes(grown) / f64::from(u32::try_from(lanes).unwrap())
    );
    assert_eq!(outcome.stdout(), "True True\n");
    assert_eq!(result_text(&outcome), "'ZMQInteractiveShell'");
    let outcome = kernel.execute_ok_on(&a, "alpha_x += 1\nalpha_x");
    assert_eq!(result_text(&outcome), "42", "a named lane keeps its globals");
    let main = kernel.execute_ok("print('alpha_x' in globals())");
    assert_eq!(main.stdout(), "False\n", "the main lane does not see a lane's globals");
}

/// The process's resident set size.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kilobytes: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kilobytes * 1024
}

#[allow(clippy::cast_precision_loss)]
fn megabytes(bytes: i64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// A cell that leaves its mark `me` and waits for `other`'s: two of them finish only if they run
/// at the same time. The deadline is a failure guard.
fn rendezvous(dir: &std::path::Path, me: &str, other: &str) -> String {
    format!(
        "import os, time\n\
         open({me:?}, 'w').close()\n\
         deadline = time.monotonic() + 60\n\
         while not os.path.exists({other:?}):\n\
         \x20   if time.monotonic() > deadline:\n\
         \x20       raise TimeoutError('the other lane never ran at the same time')\n\
         \x20   time.sleep(0.001)\n\
         print('met')",
        me = dir.join(me).display().to_string(),
        other = dir.join(other).display().to_string(),
    )
}

fn check_lane_isolation(kernel: &mut Kernel) {
    let (a, b) = (named("alpha"), named("beta"));
    kernel.execute_ok_on(&a, "import colorsys, sys\nsys.marker = 'alpha'");
    let outcome = kernel.execute_ok_on(
        &b,
        "import sys\nprint('alpha_x' in globals(), 'colorsys' in sys.modules, getattr(sys, 'marker', None))",
    );
    assert_eq!(outcome.stdout(), "False False None\n", "lanes have their own globals and modules");
    let outcome = kernel.execute_ok("import sys\nprint('colorsys' in sys.modules, hasattr(sys, 'marker'))");
    assert_eq!(outcome.stdout(), "False False\n");
    let outcome = kernel.execute_ok_on(&a, "print(sys.marker, 'colorsys' in sys.modules)");
    assert_eq!(outcome.stdout(), "alpha True\n");
}

fn check_named_lanes_meet(kernel: &mut Kernel) {
    let dir = tempfile::tempdir().unwrap();
    let first = kernel.start_on(&named("alpha"), &rendezvous(dir.path(), "a", "b"), false, 1);
    let second = kernel.start_on(&named("beta"), &rendezvous(dir.path(), "b", "a"), false, 2);
    for request in [first, second] {
        let outcome = kernel.finish(request, GUARD);
        assert_eq!(outcome.status(), "ok", "{}", outcome.reply);
        assert_eq!(outcome.stdout(), "met\n");
    }
}

fn check_fresh_lanes_meet(kernel: &mut Kernel) {
    let dir = tempfile::tempdir().unwrap();
    let first = kernel.start_on(&Lane::Fresh(0), &rendezvous(dir.path(), "a", "b"), false, 1);
    let second = kernel.start_on(&Lane::Fresh(1), &rendezvous(dir.path(), "b", "a"), false, 2);
    for request in [first, second] {
        let outcome = kernel.finish(request, GUARD);
        assert_eq!(outcome.status(), "ok", "{}", outcome.reply);
        assert_eq!(outcome.stdout(), "met\n");
    }
}

fn check_fresh_keeps_nothing(kernel: &mut Kernel) {
    let fresh = Lane::Fresh(0);
    let outcome = kernel.execute_ok_on(
        &fresh,
        "import colorsys, os, sys, builtins, contextvars\n\
         y = 5\n\
         os.environ['PK_FRESH_TEST'] = '1'\n\
         sys.path.append('/nowhere')\n\
         builtins.leaked = True\n\
         var = contextvars.ContextVar('var', default='unset')\n\
         var.set('set')\n\
         sys.modules['_parakernel_shell'].leaked_var = var\n\
         def f(): pass\n\
         y",
    );
    assert_eq!(result_text(&outcome), "5");
    let outcome = kernel.execute_ok_on(
        &fresh,
        "import os, sys, builtins\n\
         print('y' in globals(), 'f' in globals(), 'colorsys' in sys.modules)\n\
         print('PK_FRESH_TEST' in os.environ, '/nowhere' in sys.path, hasattr(builtins, 'leaked'))\n\
         print(sys.modules['_parakernel_shell'].leaked_var.get(), len(In), len(Out), _)",
    );
    assert_eq!(
        outcome.stdout(),
        "False False False\nFalse False False\nunset 2 0 \n",
        "a fresh lane starts every cell clean"
    );
    kernel.execute_ok("del_me = 1");
    let outcome = kernel.execute_ok_on(&fresh, "print('del_me' in globals())");
    assert_eq!(outcome.stdout(), "False\n");
}

fn check_output_parenting_interleaved(kernel: &mut Kernel) {
    let dir = tempfile::tempdir().unwrap();
    let body = |name: &str, me: &str, other: &str| {
        format!(
            "{}\nfrom IPython.display import display\nfor i in range(3000):\n    print('{name}', i)\n    if i % 1000 == 0:\n        display('{name}-' + str(i))\n",
            rendezvous(dir.path(), me, other)
        )
    };
    let first = kernel.start_on(&named("alpha"), &body("alpha", "a", "b"), false, 1);
    let second = kernel.start_on(&named("beta"), &body("beta", "b", "a"), false, 2);
    for (request, name) in [(first, "alpha"), (second, "beta")] {
        let outcome = kernel.finish(request, GUARD);
        assert_eq!(outcome.status(), "ok", "{}", outcome.reply);
        let mut expected = String::from("met\n");
        for i in 0..3000 {
            writeln!(expected, "{name} {i}").unwrap();
        }
        assert!(outcome.stdout() == expected, "{name}'s output is complete, in order, and only its own");
        let displays: Vec<String> = outcome
            .published("display_data")
            .iter()
            .map(|data| data["data"]["text/plain"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(displays, [0, 1000, 2000].map(|i| format!("'{name}-{i}'")));
    }
}

fn check_lane_thread_output(kernel: &mut Kernel) {
    let a = named("alpha");
    kernel.execute_ok_on(
        &a,
        "import threading\n\
         go = threading.Event()\n\
         worker = threading.Thread(target=lambda: (go.wait(), print('from the lane thread')))\n\
         worker.start()",
    );
    let request = kernel.start_on(&a, "go.set()\nworker.join()", false, 70);
    let outcome = kernel.finish(request, GUARD);
    assert_eq!(outcome.stdout(), "from the lane thread\n");
}

fn check_lane_interrupt_sleep(kernel: &mut Kernel) {
    let a = named("alpha");
    let request = kernel.start_on(
        &a,
        "import time\nprint('sleeping', flush=True)\ntime.sleep(30)\nprint('woke')",
        false,
        50,
    );
    kernel.wait_for(GUARD, "the sleeping cell's output", |event| {
        matches!(event, Event::Stream { text, request: Some(r), .. } if text.contains("sleeping") && *r == request)
    });
    let interrupted = Instant::now();
    kernel.executor.interrupt(&InterruptTarget::All);
    let outcome = kernel.finish(request, Duration::from_secs(15));
    say!("  time.sleep in a lane interrupted after {:?}", interrupted.elapsed());
    assert_eq!(outcome.ename(), "KeyboardInterrupt", "{}", outcome.reply);
    assert!(!outcome.stdout().contains("woke"));
    assert_eq!(outcome.published("error").len(), 1);
    assert_eq!(kernel.execute_ok_on(&a, "print('after')").stdout(), "after\n");

    // How long from `interrupt()` to the exception in the lane (without IPython's traceback).
    for (what, code) in [
        ("time.sleep", "time.sleep(30)"),
        ("a busy loop", "while True:\n        pass"),
    ] {
        let request = kernel.start_on(
            &a,
            &format!("import time\nprint('ready', flush=True)\ntry:\n    {code}\nexcept KeyboardInterrupt:\n    print(time.time())"),
            false,
            51,
        );
        kernel.wait_for(GUARD, "ready", |event| {
            matches!(event, Event::Stream { text, request: Some(r), .. } if text.contains("ready") && *r == request)
        });
        let sent = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        kernel.executor.interrupt(&InterruptTarget::Lane(a.clone()));
        let outcome = kernel.finish(request, Duration::from_secs(15));
        let raised: f64 = outcome.stdout().trim().parse().unwrap_or_else(|_| panic!("{}", outcome.reply));
        say!("  interrupt of {what} in a lane: KeyboardInterrupt raised {:.2} ms after interrupt()", (raised - sent) * 1000.0);
    }
}

fn check_lane_interrupt_one(kernel: &mut Kernel) {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag").display().to_string();
    let (a, b) = (named("alpha"), named("beta"));
    let waiting = kernel.start_on(
        &a,
        &format!(
            "import os\nprint('waiting', flush=True)\nwhile not os.path.exists({flag:?}):\n    pass\nprint('released')"
        ),
        false,
        1,
    );
    let spinning = kernel.start_on(&b, "print('spinning', flush=True)\nwhile True:\n    pass", false, 2);
    for (request, text) in [(waiting, "waiting"), (spinning, "spinning")] {
        kernel.wait_for(GUARD, text, |event| {
            matches!(event, Event::Stream { text: t, request: Some(r), .. } if t.contains(text) && *r == request)
        });
    }
    let interrupted = Instant::now();
    kernel.executor.interrupt(&InterruptTarget::Lane(b.clone()));
    let outcome = kernel.finish(spinning, Duration::from_secs(15));
    say!("  a busy loop in a lane interrupted after {:?}", interrupted.elapsed());
    assert_eq!(outcome.ename(), "KeyboardInterrupt", "{}", outcome.reply);
    // The other lane was not touched: it still waits, and ends normally once released.
    std::fs::write(&flag, "").unwrap();
    let outcome = kernel.finish(waiting, GUARD);
    assert_eq!(outcome.status(), "ok", "{}", outcome.reply);
    // ("waiting" was read above.)
    assert_eq!(outcome.stdout(), "released\n");
    // Interrupting an idle lane leaves nothing behind for its next cell.
    kernel.executor.interrupt(&InterruptTarget::Lane(a.clone()));
    kernel.executor.interrupt(&InterruptTarget::All);
    assert_eq!(kernel.execute_ok_on(&a, "print('unaffected')").stdout(), "unaffected\n");
    assert_eq!(kernel.execute_ok_on(&b, "print('unaffected')").stdout(), "unaffected\n");
}

fn check_lane_input(kernel: &mut Kernel) {
    let a = named("alpha");
    let request = kernel.start_on(&a, "name = input('name? ')\nprint('got', name)", true, 40);
    match kernel.wait_for(GUARD, "an input request", |event| matches!(event, Event::InputRequest { .. })) {
        Event::InputRequest { request: r, prompt, password } => {
            assert_eq!((r, prompt.as_str(), password), (request, "name? ", false));
        }
        _ => unreachable!(),
    }
    kernel.executor.input_reply(&a, "Ada".into());
    let outcome = kernel.finish(request, GUARD);
    assert_eq!(outcome.stdout(), "got Ada\n", "{}", outcome.reply);

    let request = kernel.start_on(&a, "import sys\nsys.stdin.readline()", true, 41);
    kernel.wait_for(GUARD, "an input request", |event| matches!(event, Event::InputRequest { .. }));
    kernel.executor.input_reply(&a, "from stdin".into());
    let outcome = kernel.finish(request, GUARD);
    assert_eq!(result_text(&outcome), "'from stdin\\n'");

    let request = kernel.start_on(&a, "input('waiting: ')", true, 42);
    kernel.wait_for(GUARD, "an input request", |event| matches!(event, Event::InputRequest { .. }));
    kernel.executor.interrupt(&InterruptTarget::Lane(a.clone()));
    let outcome = kernel.finish(request, Duration::from_secs(15));
    assert_eq!(outcome.ename(), "KeyboardInterrupt", "{}", outcome.reply);
    assert_eq!(outcome.reply["evalue"], "Interrupted by user");
    kernel.executor.input_reply(&a, "late".into());
    assert_eq!(kernel.execute_ok_on(&a, "print('after input')").stdout(), "after input\n");
}

fn check_refused_modules(kernel: &mut Kernel) {
    let a = named("alpha");
    let outcome = kernel.execute_on(&a, "import numpy as np");
    assert_eq!(outcome.ename(), "ImportError", "{}", outcome.reply);
    let evalue = outcome.reply["evalue"].as_str().unwrap_or_default().to_owned();
    say!("  import numpy in a lane: {evalue}");
    for part in ["numpy cannot be imported in lane 'alpha'", "main lane", "%%lane main", "lane:"] {
        assert!(evalue.contains(part), "{part:?} missing from {evalue:?}");
    }
    // Any extension module CPython refuses (here a PyO3 one and a C one) says the same.
    for module in ["rpds", "psutil"] {
        let outcome = kernel.execute_on(&a, &format!("import {module}"));
        let evalue = outcome.reply["evalue"].as_str().unwrap_or_default();
        assert!(
            evalue.starts_with(&format!("{module} cannot be imported in lane 'alpha': its extension module {module}."))
                && evalue.contains("%%lane main"),
            "{evalue}"
        );
    }
    let outcome = kernel.execute_ok_on(&a, "import json, decimal, sqlite3, ssl, hashlib, asyncio\nprint('still here')");
    assert_eq!(outcome.stdout(), "still here\n");
    // The main lane imports numpy as usual.
    assert_eq!(kernel.execute_ok("import numpy\nprint(numpy.arange(3).sum())").stdout(), "3\n");

    let outcome = kernel.execute_on(&a, "import signal\nsignal.signal(signal.SIGINT, signal.SIG_DFL)");
    assert_eq!(outcome.ename(), "ValueError");
    assert!(outcome.reply["evalue"].as_str().unwrap().contains("%%lane main"), "{}", outcome.reply);
    let outcome = kernel.execute_on(&a, "import multiprocessing\nmultiprocessing.Process(target=print).start()");
    assert_eq!(outcome.ename(), "RuntimeError", "{}", outcome.reply);
    assert!(outcome.reply["evalue"].as_str().unwrap().contains("spawn"), "{}", outcome.reply);
    // A daemon thread, which CPython refuses here, starts as a plain thread the lane ends.
    let outcome = kernel.execute_ok_on(
        &a,
        "import threading\nt = threading.Thread(target=print, args=('daemon',), daemon=True)\nt.start(); t.join()\nprint(t.daemon)",
    );
    assert_eq!(outcome.stdout(), "daemon\nTrue\n");
    let outcome = kernel.execute_on(&a, "%%lane other\nprint(1)");
    assert_eq!(outcome.ename(), "UsageError", "{}", outcome.reply);
    assert!(outcome.reply["evalue"].as_str().unwrap().contains("first line"), "{}", outcome.reply);
}

fn check_lane_restart(kernel: &mut Kernel) {
    let a = named("alpha");
    kernel.execute_ok_on(&a, "z = 1");
    kernel.executor.end_lane(&a, true);
    let outcome = kernel.execute_ok_on(&a, "print('z' in globals())");
    assert_eq!(outcome.stdout(), "False\n", "a restarted lane starts clean");

    // Restart while a cell runs: the cell is interrupted and still finishes.
    let request = kernel.start_on(&a, "import time\nprint('sleeping', flush=True)\ntime.sleep(30)", false, 9);
    kernel.wait_for(GUARD, "the sleeping cell's output", |event| {
        matches!(event, Event::Stream { text, request: Some(r), .. } if text.contains("sleeping") && *r == request)
    });
    kernel.executor.end_lane(&a, true);
    let outcome = kernel.finish(request, Duration::from_secs(15));
    assert_eq!(outcome.ename(), "KeyboardInterrupt", "{}", outcome.reply);
    assert_eq!(kernel.execute_ok_on(&a, "print('new')").stdout(), "new\n");

    // Stop: gone until a cell names the lane again.
    let b = named("beta");
    kernel.execute_ok_on(&b, "w = 1");
    kernel.executor.end_lane(&b, false);
    assert_eq!(kernel.execute_ok_on(&b, "print('w' in globals())").stdout(), "False\n");
}

fn check_lane_queries(kernel: &mut Kernel) {
    let (a, b) = (named("alpha"), named("beta"));
    kernel.execute_ok_on(&a, "lane_only_variable = 1");
    let spinning = kernel.start_on(&b, "print('spinning', flush=True)\nwhile True:\n    pass", false, 2);
    kernel.wait_for(GUARD, "spinning", |event| {
        matches!(event, Event::Stream { text, request: Some(r), .. } if text.contains("spinning") && *r == spinning)
    });
    let complete = Query::Complete { code: "lane_only_v".into(), cursor_pos: 11 };
    // The first completion in an interpreter imports Jedi (0.6-0.9 s here, seconds under load):
    // the executor answers in full however long it takes (the kernel keeps the deadline).
    for round in 0..2 {
        let asked = Instant::now();
        let reply = kernel.query_on(&a, complete.clone());
        say!("  completion {round} in a lane's namespace (another lane busy): {:?}", asked.elapsed());
        assert_eq!(reply["status"], "ok", "{reply}");
        assert!(reply["matches"].as_array().unwrap().contains(&json!("lane_only_variable")), "{reply}");
    }
    let asked = Instant::now();
    let reply = kernel.query_on(&b, Query::Complete { code: "lane_only_v".into(), cursor_pos: 11 });
    say!("  completion in a lane that spins: {:?}", asked.elapsed());
    assert_eq!(reply["status"], "ok", "{reply}");
    assert!(!reply["matches"].as_array().unwrap().contains(&json!("lane_only_variable")), "{reply}");
    let reply = kernel.query_on(&a, Query::Inspect { code: "lane_only_variable".into(), cursor_pos: 5, detail_level: 0 });
    assert_eq!(reply["found"], true, "{reply}");
    // A lane that does not exist yet: the main lane answers.
    kernel.execute_ok("main_only_variable = 1");
    let reply = kernel.query_on(&named("not-yet"), Query::Complete { code: "main_only_v".into(), cursor_pos: 11 });
    assert!(reply["matches"].as_array().unwrap().contains(&json!("main_only_variable")), "{reply}");
    kernel.executor.interrupt(&InterruptTarget::Lane(b.clone()));
    assert_eq!(kernel.finish(spinning, GUARD).ename(), "KeyboardInterrupt");

    // A cell that holds its GIL (here: C code called through ctypes.PyDLL, which keeps it) holds
    // the answer until it lets go; the answer is then full. Sparing the editor the wait is the
    // kernel's deadline (kernel::queries), not the executor's.
    let holding = kernel.start_on(
        &b,
        "import ctypes\nprint('holding', flush=True)\nctypes.PyDLL(None).sleep(1)",
        false,
        3,
    );
    kernel.wait_for(GUARD, "holding", |event| {
        matches!(event, Event::Stream { text, request: Some(r), .. } if text.contains("holding") && *r == holding)
    });
    let asked = Instant::now();
    let reply = kernel.query_on(&b, Query::Complete { code: "lane_only_v".into(), cursor_pos: 11 });
    say!("  completion in a lane that holds its GIL: {:?} (answered once it let go)", asked.elapsed());
    assert_eq!(reply["status"], "ok", "{reply}");
    assert!(!reply["matches"].as_array().unwrap().contains(&json!("lane_only_variable")), "{reply}");
    assert_eq!(kernel.finish(holding, GUARD).status(), "ok");
}

/// Waits for the lane call of `request` and returns its id and what it asks.
fn next_call(kernel: &mut Kernel, request: RequestId) -> (Lane, u64, parakernel::lanes::LaneCall) {
    match kernel.wait_for(GUARD, "a lane call", |event| {
        matches!(event, Event::Call { request: Some(r), .. } if *r == request)
    }) {
        Event::Call { lane, id, call, .. } => (lane, id, call),
        _ => unreachable!(),
    }
}

fn check_lane_calls(kernel: &mut Kernel) {
    use parakernel::lanes::LaneCall;
    let a = named("alpha");
    // %lanes: the kernel answers the rows, the lane adds CPU time and shows a table.
    let request = kernel.start_on(&a, "%lanes", false, 1);
    let (lane, id, call) = next_call(kernel, request);
    assert_eq!((lane, call), (a.clone(), LaneCall::Lanes));
    let rows = json!([
        { "name": "main", "kind": "main", "state": "idle", "running": null, "queued": 0, "cells_run": 12 },
        { "name": "alpha", "kind": "named", "state": "busy", "running": 7, "queued": 0, "cells_run": 30 },
    ]);
    kernel.executor.call_reply(&a, id, Ok(rows));
    let outcome = kernel.finish(request, GUARD);
    assert_eq!(outcome.status(), "ok", "{}", outcome.reply);
    let table = outcome.published("display_data")[0].clone();
    let text = table["data"]["text/plain"].as_str().unwrap();
    let html = table["data"]["text/html"].as_str().unwrap();
    say!("  %lanes:\n{text}");
    assert!(text.contains("CPU time") && text.contains("alpha") && text.contains(" s"), "{text}");
    assert!(html.contains("<td>alpha</td>") && html.contains("<th>CPU time</th>"), "{html}");

    // %wait and %lane go to the kernel; a refusal raises LaneError with its message.
    let request = kernel.start_on(&a, "%wait beta gamma", false, 2);
    let (_, id, call) = next_call(kernel, request);
    assert_eq!(call, LaneCall::Wait { lanes: vec!["beta".into(), "gamma".into()] });
    kernel.executor.call_reply(&a, id, Ok(Value::Null));
    assert_eq!(kernel.finish(request, GUARD).status(), "ok");
    for (code, expected) in [
        ("%lane interrupt beta", LaneCall::Interrupt { lane: "beta".into() }),
        ("%lane restart beta", LaneCall::Restart { lane: "beta".into() }),
        ("%lane stop beta", LaneCall::Stop { lane: "beta".into() }),
    ] {
        let request = kernel.start_on(&a, code, false, 3);
        let (_, id, call) = next_call(kernel, request);
        assert_eq!(call, expected);
        kernel.executor.call_reply(&a, id, Ok(Value::Null));
        assert_eq!(kernel.finish(request, GUARD).status(), "ok");
    }
    let request = kernel.start_on(&a, "%lane restart nope", false, 4);
    let (_, id, _) = next_call(kernel, request);
    kernel.executor.call_reply(&a, id, Err("there is no lane named nope".into()));
    let outcome = kernel.finish(request, GUARD);
    assert_eq!((outcome.ename(), outcome.reply["evalue"].as_str()), ("LaneError", Some("there is no lane named nope")));
    let outcome = kernel.execute_on(&a, "%lane frobnicate beta");
    assert_eq!(outcome.ename(), "UsageError");
    assert!(outcome.reply["evalue"].as_str().unwrap().contains("%lane interrupt NAME"));

    // An interrupted %wait raises KeyboardInterrupt; the late answer is dropped.
    let request = kernel.start_on(&a, "%wait", false, 5);
    let (_, id, _) = next_call(kernel, request);
    kernel.executor.interrupt(&InterruptTarget::Lane(a.clone()));
    let outcome = kernel.finish(request, Duration::from_secs(15));
    assert_eq!(outcome.ename(), "KeyboardInterrupt", "{}", outcome.reply);
    kernel.executor.call_reply(&a, id, Ok(Value::Null));
    assert_eq!(kernel.execute_ok_on(&a, "print('after')").stdout(), "after\n");

    // The main lane has the same magics, and an interrupt wakes its %wait too.
    let request = kernel.start("%wait alpha", false, 6);
    let (lane, id, _) = next_call(kernel, request);
    assert_eq!(lane, Lane::Main);
    kernel.executor.call_reply(&Lane::Main, id, Ok(Value::Null));
    assert_eq!(kernel.finish(request, GUARD).status(), "ok");
    let request = kernel.start("%wait", false, 7);
    next_call(kernel, request);
    kernel.executor.interrupt(&InterruptTarget::All);
    assert_eq!(kernel.finish(request, Duration::from_secs(15)).ename(), "KeyboardInterrupt");
    assert_eq!(kernel.execute_ok("print('main after')").stdout(), "main after\n");
}

fn check_fresh_replaced_when_untrusted(kernel: &mut Kernel) {
    let fresh = Lane::Fresh(1);
    let interpreter = |outcome: &Outcome| outcome.stdout().lines().next().unwrap_or_default().to_owned();
    let before = kernel.execute_ok_on(&fresh, "import _interpreters\nprint(_interpreters.get_current()[0])");
    let same = kernel.execute_ok_on(&fresh, "import _interpreters\nprint(_interpreters.get_current()[0])");
    assert_eq!(interpreter(&before), interpreter(&same), "a restored fresh lane keeps its interpreter");
    // A thread left running: the lane cannot be restored and gets a new interpreter (the old
    // one ends once SystemExit stopped the thread).
    kernel.execute_ok_on(
        &fresh,
        "import threading, time\nthreading.Thread(target=time.sleep, args=(1000,), name='sleeper').start()",
    );
    let after = kernel.execute_ok_on(
        &fresh,
        "import _interpreters, threading\n\
         print(_interpreters.get_current()[0])\n\
         print([t.name for t in threading.enumerate() if t.name == 'sleeper'])",
    );
    assert_ne!(interpreter(&after), interpreter(&before), "{}", after.stdout());
    assert!(after.stdout().ends_with("\n[]\n"), "{}", after.stdout());
}

fn check_resources(kernel: &mut Kernel) {
    // A bare own-GIL subinterpreter, made from the main lane, for comparison.
    let outcome = kernel.execute_ok(
        "import _interpreters, gc\n\
         def rss():\n\
         \x20   with open('/proc/self/status') as f:\n\
         \x20       return next(int(l.split()[1]) for l in f if l.startswith('VmRSS')) * 1024\n\
         before = rss(); ids = [_interpreters.create() for _ in range(4)]; after = rss()\n\
         for i in ids: _interpreters.destroy(i)\n\
         print((after - before) // 4)",
    );
    let bare: i64 = outcome.stdout().trim().parse().unwrap();
    let before = rss_bytes();
    let created = Instant::now();
    let outcome = kernel.execute_ok_on(&named("measured"), "pass");
    let creation = created.elapsed();
    let lane = i64::try_from(rss_bytes()).unwrap() - i64::try_from(before).unwrap();
    assert_eq!(outcome.status(), "ok");
    say!(
        "  a new named lane: first cell after {creation:?}; RSS +{:.1} MB with IPython (bare subinterpreter: +{:.1} MB)",
        megabytes(lane),
        megabytes(bare)
    );
}

fn check_fresh_dispatch_and_memory(kernel: &mut Kernel) {
    let cell = "import json, decimal, fractions, dataclasses, collections\n\
                @dataclasses.dataclass\nclass Point:\n    x: int\n    y: int\n\
                points = [Point(i, i * i) for i in range(2000)]\n\
                text = json.dumps([dataclasses.asdict(p) for p in points])\n\
                total = sum(decimal.Decimal(p.y) for p in points)\n\
                len(text)";
    // Warm-up: every slot runs the cell a few times.
    for round in 0..20 {
        kernel.execute_ok_on(&Lane::Fresh(round % 2), cell);
    }
    let before = rss_bytes();
    let jobs = 200;
    for round in 0..jobs {
        kernel.execute_ok_on(&Lane::Fresh(round % 2), cell);
    }
    let growth = i64::try_from(rss_bytes()).unwrap() - i64::try_from(before).unwrap();
    say!("  RSS after {jobs} fresh-lane cells: {:+.2} MB (after 20 warm-up cells)", megabytes(growth));
    assert!(megabytes(growth) < 30.0, "fresh lanes leak: {:+.1} MB", megabytes(growth));

    let mut times: Vec<Duration> = (0..200)
        .map(|_| {
            let started = Instant::now();
            kernel.execute_ok_on(&named("alpha"), "pass");
            started.elapsed()
        })
        .collect();
    times.sort();
    say!("  `pass` on a named lane: median {:?}, p99 {:?}", times[100], times[198]);
    // Dispatch latency of `pass`: alternating slots (restore runs while the other slot works),
    // and one slot back to back (the job waits for the previous job's restore).
    for (label, slots) in [("alternating slots", 2), ("one slot, back to back", 1)] {
        let mut times: Vec<Duration> = (0..200)
            .map(|round| {
                let started = Instant::now();
                kernel.execute_ok_on(&Lane::Fresh(round % slots), "pass");
                started.elapsed()
            })
            .collect();
        times.sort();
        say!("  `pass` on a warm fresh lane, {label}: median {:?}, p99 {:?}", times[100], times[198]);
    }
}

fn check_lane_cpu_time(kernel: &mut Kernel) {
    let a = named("alpha");
    kernel.execute_ok_on(&a, "import time\nstart = time.thread_time()\nwhile time.thread_time() - start < 0.3:\n    pass");
    let outcome = kernel.execute_ok_on(&a, "import json, _parakernel\njson.loads(_parakernel.cpu_times())['alpha']");
    let seconds: f64 = result_text(&outcome).parse().unwrap();
    assert!(seconds >= 0.25, "alpha's CPU time: {seconds}");
}

fn check_lane_shell_commands(kernel: &mut Kernel) {
    let a = named("alpha");
    let outcome = kernel.execute_ok_on(
        &a,
        "!echo from-a-lane-shell; echo to-stderr >&2\nfiles = !printf 'one\\ntwo\\n'\nprint(files, _exit_code)\n!exit 3\nprint(_exit_code)",
    );
    assert_eq!(outcome.stdout(), "from-a-lane-shell\nto-stderr\n['one', 'two'] 0\n3\n");
    // An interrupt stops the command, as ^C would; the cell goes on.
    let request = kernel.start_on(&a, "!echo started; sleep 30\nprint('after', _exit_code)", false, 3);
    kernel.wait_for(GUARD, "started", |event| {
        matches!(event, Event::Stream { text, request: Some(r), .. } if text.contains("started") && *r == request)
    });
    kernel.executor.interrupt(&InterruptTarget::Lane(a.clone()));
    let outcome = kernel.finish(request, Duration::from_secs(15));
    assert_eq!(outcome.stdout(), "after -2\n", "{}", outcome.reply);
}

fn check_lane_comms(kernel: &mut Kernel) {
    let a = named("alpha");
    let outcome = kernel.execute_ok_on(&a, "import ipywidgets\nslider = ipywidgets.IntSlider(value=3)\nslider");
    let opens = outcome.published("comm_open");
    let open = opens
        .iter()
        .find(|open| open["data"]["state"]["_model_name"] == "IntSliderModel")
        .unwrap_or_else(|| panic!("no IntSlider comm_open in {opens:?}"));
    let comm_id = open["comm_id"].as_str().unwrap().to_owned();
    kernel.next_request += 1;
    let request = kernel.next_request;
    kernel.in_flight.insert(request);
    kernel.executor.run(
        &a,
        Job::Comm {
            request,
            msg_type: "comm_msg".into(),
            content: json!({ "comm_id": comm_id, "data": { "method": "update", "state": { "value": 9 }, "buffer_paths": [] } }),
            metadata: Map::new(),
            buffers: Vec::new(),
            parent_header: json!({ "msg_id": "comm-in-lane", "msg_type": "comm_msg" }),
        },
    );
    assert_eq!(kernel.finish(request, GUARD).reply, Value::Null);
    assert_eq!(kernel.execute_ok_on(&a, "print(slider.value)").stdout(), "9\n");
    let info = kernel.query_on(&a, Query::CommInfo { target_name: None });
    assert!(info["comms"].get(comm_id.as_str()).is_some(), "{info}");
}

fn check_abandoned_interpreter(kernel: &mut Kernel) {
    // A thread that neither SystemExit nor the lane's wake-ups can stop (a lock wait): the fresh
    // lane gets a new interpreter at once, the old one is left behind after its bound, and
    // Python is then not finalized at shutdown.
    let fresh = Lane::Fresh(0);
    kernel.execute_ok_on(&fresh, "import threading\nthreading.Thread(target=threading.Event().wait).start()");
    assert_eq!(kernel.execute_ok_on(&fresh, "print('next')").stdout(), "next\n");
}

/// On a Python where subinterpreter lanes would crash: every lane job is refused with the
/// reason and the cure, the main lane goes on.
fn check_lanes_refused(kernel: &mut Kernel, why: &str) {
    say!("  lanes unavailable: {why}");
    assert!(why.contains("3.13") && why.contains("gh-119213"), "{why}");
    assert_eq!(kernel.executor.fresh_lanes(), 0);
    for lane in [named("alpha"), Lane::Fresh(0)] {
        let outcome = kernel.execute_on(&lane, "print('ran')");
        assert_eq!(outcome.status(), "error");
        assert_eq!(outcome.reply["evalue"], why);
        assert!(outcome.stdout().is_empty());
        assert_eq!(outcome.published("error").len(), 1);
    }
    assert_eq!(kernel.execute_ok("print('main runs')").stdout(), "main runs\n");
}

fn drive_lanes(kernel: &mut Kernel) {
    if let Some(why) = kernel.executor.lanes_unavailable() {
        say!("python_executor: lanes refused on this Python");
        return check_lanes_refused(kernel, &why);
    }
    let checks: &[(&str, Check)] = &[
        ("lanes available", check_lanes_available),
        ("named lane basics", check_named_lane_basics),
        ("shell commands in a lane", check_lane_shell_commands),
        ("lane isolation", check_lane_isolation),
        ("two named lanes meet", check_named_lanes_meet),
        ("two fresh lanes meet", check_fresh_lanes_meet),
        ("a fresh lane keeps nothing", check_fresh_keeps_nothing),
        ("output parented under interleaving", check_output_parenting_interleaved),
        ("thread output in a lane", check_lane_thread_output),
        ("interrupt time.sleep in a lane", check_lane_interrupt_sleep),
        ("interrupt one lane", check_lane_interrupt_one),
        ("input in a lane", check_lane_input),
        ("modules and features refused in lanes", check_refused_modules),
        ("restart and stop", check_lane_restart),
        ("queries in lanes", check_lane_queries),
        ("lane calls", check_lane_calls),
        ("a fresh lane that cannot be restored", check_fresh_replaced_when_untrusted),
        ("lane CPU time", check_lane_cpu_time),
        ("lane resources", check_resources),
        ("fresh dispatch and memory", check_fresh_dispatch_and_memory),
        ("comms in a lane", check_lane_comms),
        ("an interpreter that cannot be ended", check_abandoned_interpreter),
    ];
    for (name, check) in checks {
        say!("python_executor: {name}");
        check(kernel);
    }
    // Left running for shutdown: a lane stuck in C code and a busy one.
    say!("python_executor: shutdown with a lane stuck in C code");
    let stuck = kernel.start_on(&named("stuck"), "import ctypes\nprint('stuck', flush=True)\nctypes.CDLL(None).sleep(100)", false, 1);
    kernel.wait_for(GUARD, "the stuck cell's output", |event| {
        matches!(event, Event::Stream { text, request: Some(r), .. } if text.contains("stuck") && *r == stuck)
    });
    kernel.start_on(&named("busy"), "while True:\n    pass", false, 2);
}

type Check = fn(&mut Kernel);

fn drive(kernel: &mut Kernel) {
    if std::env::var_os("PARAKERNEL_TEST_LANES_ONLY").is_some() {
        return drive_lanes(kernel);
    }
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
    drive_lanes(kernel);
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
    // PARAKERNEL_TEST_PYTHON: another environment (e.g. one of Python 3.12.1, with
    // PARAKERNEL_TEST_LANES_ONLY=1, to check that lanes are refused there).
    let python = std::env::var_os("PARAKERNEL_TEST_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
        PathBuf::from,
    );
    let (sender, events) = tokio::sync::mpsc::unbounded_channel();
    let (executor, main_lane) = python::start(
        PythonOptions {
            python: Some(python),
            on_demand: false,
            on_main_ready: None,
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
            in_flight: std::collections::BTreeSet::new(),
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| drive(&mut kernel)));
        let shutdown = Instant::now();
        kernel.executor.shutdown();
        (result.is_ok(), shutdown)
    });

    let run = main_lane.run();
    let (passed, shutdown) = driver.join().expect("driver thread");
    let shutdown = shutdown.elapsed();
    say!("python_executor: shutdown returned after {shutdown:?}");
    // The kernel's promise: shutdown ends within 5 s, also with a lane stuck in C code.
    let passed = passed && shutdown < Duration::from_secs(5);
    if let Err(error) = &run {
        say!("python_executor: MainLane::run failed: {error}");
    }
    if !passed || run.is_err() {
        say!("python_executor: FAILED");
        std::process::exit(1);
    }
    say!("python_executor: all checks passed");
}
