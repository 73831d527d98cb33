//! The kernel's logic against a mock executor and unbound transport queues: no sockets, no
//! Python. Each test waits on real messages; nothing is timed.

use serde_json::{json, Value};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use crate::lanes::{Event, Executor, InterruptTarget, Job, Lane, LaneCall, Query, RequestId, StreamName};
use super::{Kernel, KernelInfo};
use crate::transport::{Channel, Incoming, Peer, Transport};
use crate::wire::{Message, Session, Signer, Verifier, QUOTED_CHARS};

#[derive(Debug)]
enum Call {
    Run(Lane, Job),
    Query(RequestId, Query),
    InputReply(String),
    Interrupt(InterruptTarget),
    CallReply(Lane, u64, Result<Value, String>),
    EndLane(Lane, bool),
    Shutdown,
}

const FRESH_LANES: usize = 2;

/// Records every call; `unavailable` is what it says of lanes (`None`: they can run).
struct MockExecutor(UnboundedSender<Call>, Option<String>);

impl Executor for MockExecutor {
    fn run(&mut self, lane: &Lane, job: Job) {
        self.0.send(Call::Run(lane.clone(), job)).unwrap();
    }
    fn query(&mut self, _lane: &Lane, request: RequestId, query: Query) {
        self.0.send(Call::Query(request, query)).unwrap();
    }
    fn input_reply(&mut self, _lane: &Lane, value: String) {
        self.0.send(Call::InputReply(value)).unwrap();
    }
    fn interrupt(&mut self, target: &InterruptTarget) {
        self.0.send(Call::Interrupt(target.clone())).unwrap();
    }
    fn call_reply(&mut self, lane: &Lane, id: u64, reply: Result<Value, String>) {
        self.0.send(Call::CallReply(lane.clone(), id, reply)).unwrap();
    }
    fn end_lane(&mut self, lane: &Lane, restart: bool) {
        self.0.send(Call::EndLane(lane.clone(), restart)).unwrap();
    }
    fn fresh_lanes(&self) -> usize {
        FRESH_LANES
    }
    fn cpu_seconds(&self) -> std::collections::BTreeMap<String, f64> {
        std::collections::BTreeMap::from([("main".to_owned(), 0.5)])
    }

    fn lanes_unavailable(&self) -> Option<String> {
        self.1.clone()
    }
    fn shutdown(&mut self) {
        self.0.send(Call::Shutdown).unwrap();
    }
}

const KEY: &[u8] = b"test-key";

/// A client talking to a kernel that runs on its own task.
struct Harness {
    peer: Peer,
    calls: UnboundedReceiver<Call>,
    events: UnboundedSender<Event>,
    client: Session,
    verifier: Verifier,
    kernel: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A kernel whose executor says lanes cannot run, and why (`None`: they can).
    async fn start_with(lanes_unavailable: Option<String>) -> Self {
        Self::start_kernel(lanes_unavailable, false).await
    }

    /// A kernel that gives each client session a lane of its own.
    async fn start_per_session() -> Self {
        Self::start_kernel(None, true).await
    }

    async fn start_kernel(lanes_unavailable: Option<String>, lane_per_session: bool) -> Self {
        let (transport, peer) = Transport::unbound();
        let (calls_tx, calls) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let info = KernelInfo { language_info: json!({"name": "python"}), banner: "test".into() };
        let kernel = Kernel::new(Session::new(Signer::new(KEY)), MockExecutor(calls_tx, lanes_unavailable), transport.outgoing.clone(), info)
            .with_lane_per_session(lane_per_session);
        let kernel = tokio::spawn(kernel.serve(transport, events_rx));
        let mut harness = Self {
            peer,
            calls,
            events,
            client: Session::new(Signer::new(KEY)),
            verifier: Verifier::new(Signer::new(KEY)),
            kernel,
        };
        let starting = harness.next(Channel::Iopub).await;
        assert_eq!(starting.content["execution_state"], "starting");
        harness
    }

    fn request(&self, msg_type: &str, content: Value) -> Message {
        self.client.message(msg_type, content, None, vec![bytes::Bytes::from_static(b"client")])
    }

    async fn send(&self, channel: Channel, message: &Message) {
        self.send_frames(channel, message.encode(&self.client.signer)).await;
    }

    async fn send_frames(&self, channel: Channel, frames: Vec<bytes::Bytes>) {
        let queue = match channel {
            Channel::Shell => &self.peer.shell,
            Channel::Control => &self.peer.control,
            Channel::Stdin => &self.peer.stdin,
            Channel::Iopub => unreachable!("clients do not send on iopub"),
        };
        queue.send(Incoming { channel, frames }).await.unwrap();
    }

    /// The next message the kernel sends, which must be on `channel`.
    async fn next(&mut self, channel: Channel) -> Message {
        let outgoing = self.peer.outgoing.recv().await.expect("the kernel stopped sending");
        let message = Message::decode(outgoing.frames, &mut self.verifier).expect("the kernel signs what it sends");
        assert_eq!(outgoing.channel, channel, "expected {channel:?}, got {}", message.msg_type());
        message
    }

    async fn expect_status(&mut self, state: &str, parent: &Message) {
        let status = self.next(Channel::Iopub).await;
        assert_eq!(status.msg_type(), "status");
        assert_eq!(status.content["execution_state"], state);
        assert_eq!(status.parent_header.unwrap().msg_id, parent.header.msg_id);
    }

    async fn call(&mut self) -> Call {
        self.calls.recv().await.expect("the kernel dropped the executor")
    }

    async fn run_call(&mut self) -> crate::lanes::ExecuteJob {
        match self.call().await {
            Call::Run(_, Job::Execute(job)) => job,
            other => panic!("expected an execute job, got {other:?}"),
        }
    }

    fn event(&self, event: Event) {
        self.events.send(event).unwrap();
    }

    /// Sends an execute request and reads its busy and execute_input.
    async fn execute(&mut self, code: &str) -> Message {
        let request = self.request("execute_request", json!({"code": code}));
        self.send(Channel::Shell, &request).await;
        self.expect_status("busy", &request).await;
        request
    }

    /// Reads the execute_input that precedes a job, then the job itself.
    async fn started(&mut self, request: &Message) -> crate::lanes::ExecuteJob {
        let input = self.next(Channel::Iopub).await;
        assert_eq!(input.msg_type(), "execute_input");
        assert_eq!(input.parent_header.unwrap().msg_id, request.header.msg_id);
        self.run_call().await
    }
}

fn ok_reply(count: u64) -> Option<crate::lanes::ExecuteReply> {
    Some(crate::lanes::ExecuteReply::Ok { execution_count: count, user_expressions: serde_json::Map::new(), payload: Vec::new() })
}

#[tokio::test]
async fn kernel_info_is_answered_between_busy_and_idle() {
    let mut h = Harness::start().await;
    let request = h.request("kernel_info_request", json!({}));
    h.send(Channel::Control, &request).await;
    h.expect_status("busy", &request).await;
    let reply = h.next(Channel::Control).await;
    assert_eq!(reply.msg_type(), "kernel_info_reply");
    assert_eq!(reply.content["protocol_version"], "5.5");
    assert_eq!(reply.content["language_info"]["name"], "python");
    assert_eq!(reply.identities[0].as_ref(), b"client");
    h.expect_status("idle", &request).await;
}

#[tokio::test]
async fn a_cell_runs_and_its_streams_precede_its_reply_and_idle() {
    let mut h = Harness::start().await;
    let request = h.execute("print('x')").await;
    let job = h.started(&request).await;
    assert_eq!(job.execution_count, 1);
    assert_eq!(job.code, "print('x')");
    // The lane coalesced its writes (lanes::streams); the kernel publishes them as they come.
    for line in 0..3 {
        h.event(Event::Stream { request: Some(job.request), name: StreamName::Stdout, text: format!("{line}\n") });
    }
    h.event(Event::Finished { request: job.request, reply: ok_reply(1) });
    for line in 0..3 {
        let stream = h.next(Channel::Iopub).await;
        assert_eq!(stream.msg_type(), "stream");
        assert_eq!(stream.content, json!({"name": "stdout", "text": format!("{line}\n")}));
        assert_eq!(stream.parent_header.unwrap().msg_id, request.header.msg_id);
    }
    let reply = h.next(Channel::Shell).await;
    assert_eq!(reply.msg_type(), "execute_reply");
    assert_eq!(reply.content["execution_count"], 1);
    h.expect_status("idle", &request).await;
}

#[tokio::test]
async fn stop_on_error_aborts_only_what_is_queued_behind_the_failure() {
    let mut h = Harness::start().await;
    let first = h.execute("1/0").await;
    let job = h.started(&first).await;
    let second = h.execute("a").await;
    let third = h.execute("b").await;
    h.event(Event::Finished {
        request: job.request,
        reply: Some(crate::lanes::ExecuteReply::error(1, crate::lanes::ErrorContent::new("ZeroDivisionError", ""))),
    });
    let reply = h.next(Channel::Shell).await;
    assert_eq!(reply.content["status"], "error");
    h.expect_status("idle", &first).await;
    h.expect_status("busy", &second).await;
    for (aborted, next_busy) in [(&second, Some(&third)), (&third, None)] {
        let reply = h.next(Channel::Shell).await;
        assert_eq!(reply.content["status"], "aborted");
        assert_eq!(reply.parent_header.unwrap().msg_id, aborted.header.msg_id);
        h.expect_status("idle", aborted).await;
        if let Some(next) = next_busy {
            h.expect_status("busy", next).await;
        }
    }
    // The lane goes on with the next request.
    let fourth = h.execute("c").await;
    let job = h.started(&fourth).await;
    assert_eq!(job.execution_count, 4);
}

#[tokio::test]
async fn kernel_info_on_control_is_answered_while_a_cell_runs_and_busy_follows_its_idle() {
    let mut h = Harness::start().await;
    let cell = h.execute("import time; time.sleep(100)").await;
    let job = h.started(&cell).await;
    let info = h.request("kernel_info_request", json!({}));
    h.send(Channel::Control, &info).await;
    h.expect_status("busy", &info).await;
    assert_eq!(h.next(Channel::Control).await.msg_type(), "kernel_info_reply");
    h.expect_status("idle", &info).await;
    h.expect_status("busy", &cell).await;
    h.event(Event::Finished { request: job.request, reply: ok_reply(1) });
    h.next(Channel::Shell).await;
    h.expect_status("idle", &cell).await;
}

#[tokio::test]
async fn malformed_messages_are_dropped_and_bad_content_gets_an_error_reply() {
    let mut h = Harness::start().await;
    let request = h.request("kernel_info_request", json!({}));
    let mut tampered = request.encode(&h.client.signer);
    tampered[2] = bytes::Bytes::from_static(b"0000");
    h.send_frames(Channel::Shell, tampered).await;
    h.send_frames(Channel::Shell, vec![bytes::Bytes::from_static(b"junk")]).await;
    // Signed content that is not JSON, or not a JSON object, is dropped (typed only after the
    // signature check, straight from the frame).
    for content in [&b"{code:"[..], b"[1]", br#"{"code": 5, oops"#] {
        let mut frames = h.request("execute_request", json!({})).encode(&h.client.signer);
        frames[6] = bytes::Bytes::copy_from_slice(content);
        frames[2] = bytes::Bytes::from(h.client.signer.sign(&[&frames[3], &frames[4], &frames[5], &frames[6]]));
        h.send_frames(Channel::Shell, frames).await;
    }
    let frames = request.encode(&h.client.signer);
    h.send_frames(Channel::Shell, frames.clone()).await;
    h.send_frames(Channel::Shell, frames).await; // replayed: dropped
    let bad = h.request("execute_request", json!({"code": 5}));
    h.send(Channel::Shell, &bad).await;

    // Only the good kernel_info and the bad execute_request are answered.
    h.expect_status("busy", &request).await;
    assert_eq!(h.next(Channel::Shell).await.msg_type(), "kernel_info_reply");
    h.expect_status("idle", &request).await;
    h.expect_status("busy", &bad).await;
    let reply = h.next(Channel::Shell).await;
    assert_eq!(reply.msg_type(), "execute_reply");
    assert_eq!(reply.content["status"], "error");
    assert!(reply.content["evalue"].as_str().unwrap().contains("expected a string"));
    h.expect_status("idle", &bad).await;
    assert!(h.calls.try_recv().is_err(), "nothing ran");
}

#[tokio::test]
async fn a_comm_message_reaches_the_main_lane_as_it_was_sent() {
    let mut h = Harness::start().await;
    let mut message = h.request("comm_msg", json!({"comm_id": "c1", "data": {"value": [1, "two"]}}));
    message.metadata.insert("version".into(), json!("2.1.0"));
    message.buffers.push(bytes::Bytes::from_static(b"\x00\x01"));
    h.send(Channel::Shell, &message).await;
    h.expect_status("busy", &message).await;
    let Call::Run(lane, Job::Comm { msg_type, content, metadata, buffers, parent_header, .. }) = h.call().await else {
        panic!("expected a comm job")
    };
    assert_eq!(lane, Lane::Main);
    assert_eq!(msg_type, "comm_msg");
    assert_eq!(content, json!({"comm_id": "c1", "data": {"value": [1, "two"]}}));
    assert_eq!(metadata["version"], "2.1.0");
    assert_eq!(buffers, vec![b"\x00\x01".to_vec()]);
    assert_eq!(parent_header["msg_id"], json!(message.header.msg_id));
}

#[tokio::test]
async fn unknown_requests_get_an_error_reply() {
    let mut h = Harness::start().await;
    let request = h.request("debug_request", json!({}));
    h.send(Channel::Control, &request).await;
    h.expect_status("busy", &request).await;
    let reply = h.next(Channel::Control).await;
    assert_eq!(reply.msg_type(), "debug_reply");
    assert_eq!(reply.content["ename"], "UnknownMessageType");
    h.expect_status("idle", &request).await;
}

/// What the kernel logs while it is alive (on this thread: the tests' runtime runs the kernel's
/// task on the thread that awaits it).
#[derive(Clone, Default)]
struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_peers_long_strings_are_logged_cut() {
    let log = LogCapture::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let mut h = Harness::start().await;
    let long_type = format!("{}_request", "t".repeat(10_240));
    let unknown = h.request(&long_type, json!({}));
    h.send(Channel::Shell, &unknown).await;
    h.expect_status("busy", &unknown).await;
    assert_eq!(h.next(Channel::Shell).await.content["ename"], "UnknownMessageType");
    h.expect_status("idle", &unknown).await;
    let long_value = "v".repeat(10_240);
    let refused = h.request("execute_request", json!({"code": "1", "silent": long_value}));
    h.send(Channel::Shell, &refused).await;
    h.expect_status("busy", &refused).await;
    assert_eq!(h.next(Channel::Shell).await.content["status"], "error");
    h.expect_status("idle", &refused).await;

    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let unknown_line = log.lines().find(|line| line.contains("unknown message type")).expect(&log);
    assert!(unknown_line.contains(&format!("msg_type=\"{}…\" (10248 bytes)", "t".repeat(QUOTED_CHARS))), "{unknown_line}");
    let refused_line = log.lines().find(|line| line.contains("refused a request")).expect(&log);
    assert!(refused_line.contains("invalid type: string"), "{refused_line}");
    assert!(refused_line.len() < 600, "{refused_line}");
    for line in log.lines() {
        assert!(line.len() < 600, "a log line of {} bytes: {}…", line.len(), &line[..200]);
    }
}

#[tokio::test]
async fn completion_is_a_query_answered_beside_the_running_cell() {
    let mut h = Harness::start().await;
    let cell = h.execute("while True: pass").await;
    h.started(&cell).await;
    let complete = h.request("complete_request", json!({"code": "pri", "cursor_pos": 3}));
    h.send(Channel::Shell, &complete).await;
    h.expect_status("busy", &complete).await;
    let Call::Query(id, Query::Complete { code, cursor_pos }) = h.call().await else { panic!("not a query") };
    assert_eq!((code.as_str(), cursor_pos), ("pri", 3));
    h.event(Event::Answered { request: id, reply: Some(json!({"status": "ok", "matches": ["print"]})) });
    let reply = h.next(Channel::Shell).await;
    assert_eq!(reply.content["matches"], json!(["print"]));
}

#[tokio::test]
async fn input_goes_to_the_client_that_sent_the_cell_and_back_to_the_lane() {
    let mut h = Harness::start().await;
    let cell = h.execute("input('name? ')").await;
    let job = h.started(&cell).await;
    h.event(Event::InputRequest { request: job.request, prompt: "name? ".into(), password: false });
    let input_request = h.next(Channel::Stdin).await;
    assert_eq!(input_request.content["prompt"], "name? ");
    assert_eq!(input_request.identities[0].as_ref(), b"client");
    assert_eq!(input_request.parent_header.as_ref().unwrap().msg_id, cell.header.msg_id);
    let answer = h.client.reply(&input_request, "input_reply", json!({"value": "Ada"}));
    h.send(Channel::Stdin, &answer).await;
    assert!(matches!(h.call().await, Call::InputReply(value) if value == "Ada"));
}

#[tokio::test]
async fn output_after_the_cell_finished_keeps_its_parent() {
    let mut h = Harness::start().await;
    let cell = h.execute("start a thread").await;
    let job = h.started(&cell).await;
    h.event(Event::Finished { request: job.request, reply: ok_reply(1) });
    h.next(Channel::Shell).await;
    h.expect_status("idle", &cell).await;
    h.event(Event::Output {
        request: Some(job.request),
        output: crate::lanes::Output::parse("display_data", br#"{"data": {"text/plain": "late"}, "metadata": {}, "transient": {}}"#).unwrap(),
        metadata: serde_json::Map::new(),
        buffers: vec![],
    });
    let display = h.next(Channel::Iopub).await;
    assert_eq!(display.msg_type(), "display_data");
    assert_eq!(display.parent_header.unwrap().msg_id, cell.header.msg_id);
}

#[tokio::test]
async fn a_lane_cell_is_refused_with_the_reason_when_lanes_cannot_run() {
    let reason = "subinterpreter lanes need Python 3.13 (or 3.12.4 and newer)";
    let mut h = Harness::start_with(Some(reason.to_owned())).await;
    for code in ["%%lane a\nprint(1)", "%%parallel\nprint(1)"] {
        let cell = h.execute(code).await;
        let mut error = None;
        let reply = loop {
            let outgoing = h.peer.outgoing.recv().await.expect("the kernel stopped sending");
            let message = Message::decode(outgoing.frames, &mut h.verifier).unwrap();
            match (outgoing.channel, message.msg_type()) {
                (Channel::Shell, _) => break message,
                (Channel::Iopub, "error") => error = Some(message),
                _ => {}
            }
        };
        assert_eq!(reply.content["status"], "error");
        assert_eq!(reply.content["ename"], "LaneError");
        let evalue = reply.content["evalue"].as_str().unwrap();
        assert!(evalue.contains(reason), "{evalue}");
        let error = error.expect("the refusal is shown under the cell");
        assert_eq!(error.content["evalue"], reply.content["evalue"]);
        assert_eq!(error.parent_header.unwrap().msg_id, cell.header.msg_id);
        h.expect_status("idle", &cell).await;
    }
    // Nothing ran; the main lane still does.
    assert!(h.calls.try_recv().is_err(), "a refused cell ran");
    let cell = h.execute("print(1)").await;
    let job = h.started(&cell).await;
    assert_eq!(job.code, "print(1)");
}

#[tokio::test]
async fn silent_cells_do_not_count() {
    let mut h = Harness::start().await;
    let silent = h.request("execute_request", json!({"code": "x", "silent": true}));
    h.send(Channel::Shell, &silent).await;
    h.expect_status("busy", &silent).await;
    let job = h.run_call().await;
    assert_eq!(job.execution_count, 0);
    assert!(job.silent);
    h.event(Event::Finished { request: job.request, reply: ok_reply(0) });
    h.next(Channel::Shell).await;
    h.expect_status("idle", &silent).await;
    let counted = h.execute("y").await;
    assert_eq!(h.started(&counted).await.execution_count, 1);
}

#[tokio::test]
async fn interrupt_and_shutdown_reach_the_executor_and_shutdown_ends_serving() {
    let mut h = Harness::start().await;
    let interrupt = h.request("interrupt_request", json!({}));
    h.send(Channel::Control, &interrupt).await;
    h.expect_status("busy", &interrupt).await;
    assert!(matches!(h.call().await, Call::Interrupt(InterruptTarget::All)));
    assert_eq!(h.next(Channel::Control).await.content["status"], "ok");
    h.expect_status("idle", &interrupt).await;

    let shutdown = h.request("shutdown_request", json!({"restart": true}));
    h.send(Channel::Control, &shutdown).await;
    h.expect_status("busy", &shutdown).await;
    assert!(matches!(h.call().await, Call::Shutdown));
    let reply = h.next(Channel::Control).await;
    assert_eq!(reply.content["restart"], true);
    h.expect_status("idle", &shutdown).await;
    h.kernel.await.unwrap();
}

#[tokio::test]
async fn every_subscription_is_welcomed() {
    let mut h = Harness::start().await;
    h.peer.subscriptions.send(bytes::Bytes::new()).await.unwrap();
    let welcome = h.next(Channel::Iopub).await;
    assert_eq!(welcome.msg_type(), "iopub_welcome");
    assert_eq!(welcome.content["subscription"], "");

    // A stranger's topic is not echoed to every subscriber; a short plain one is welcomed.
    h.peer.subscriptions.send(bytes::Bytes::from_static(b"<script>alert(0)</script> x")).await.unwrap();
    h.peer.subscriptions.send(bytes::Bytes::from(vec![b'a'; 1000])).await.unwrap();
    h.peer.subscriptions.send(bytes::Bytes::from_static(b"kernel.status")).await.unwrap();
    let welcome = h.next(Channel::Iopub).await;
    assert_eq!(welcome.content["subscription"], "kernel.status");
}

#[tokio::test]
async fn history_is_the_kernels_record_in_request_order() {
    let mut h = Harness::start().await;
    for code in ["a = 1", "b = 2"] {
        let cell = h.execute(code).await;
        let job = h.started(&cell).await;
        h.event(Event::Finished { request: job.request, reply: ok_reply(job.execution_count) });
        h.next(Channel::Shell).await;
        h.expect_status("idle", &cell).await;
    }
    let request = h.request("history_request", json!({"hist_access_type": "tail", "n": 10}));
    h.send(Channel::Shell, &request).await;
    h.expect_status("busy", &request).await;
    let reply = h.next(Channel::Shell).await;
    assert_eq!(reply.content["history"], json!([[1, 1, "a = 1"], [1, 2, "b = 2"]]));
}

mod lanes;
