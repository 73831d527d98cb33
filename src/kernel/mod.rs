//! What each request means: one dispatch table, busy/idle published in one place, the
//! kernel-wide execution counter, per-lane queues with `stop_on_error`, stream coalescing,
//! history, input routing, interrupt and shutdown. Never touches sockets or Python: frames come
//! and go through [`Transport`]'s queues, and Python runs behind [`Executor`].

mod comms;
mod events;
mod history;
mod lanes;
mod queries;
mod sessions;
pub mod routing;

pub use queries::{QUERY_BOUND_BUSY, QUERY_BOUND_IDLE};

/// The longest iopub topic answered with an `iopub_welcome` (printable ASCII only).
const MAX_WELCOMED_TOPIC: usize = 64;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, error, info, warn};

use crate::transport::{Channel, Incoming, Outgoing, RateLimit, Transport};
use crate::wire::{quoted, reply_type, Header, Message, Request, Session, Verifier, WireError};
use crate::lanes::{ErrorContent, Event, ExecuteJob, Executor, Job, Lane, Query, RequestId, StreamName};
use crate::wire::content::{CommKind, ExecuteResult};
use history::History;

/// What `kernel_info_reply` says about the language; known before Python starts.
#[derive(Debug, Clone)]
pub struct KernelInfo {
    pub language_info: Value,
    pub banner: String,
}

/// How many finished requests keep their header, so that output written later by threads a cell
/// started is still parented to that cell.
const REMEMBERED_FINISHED: usize = 1024;

/// How long the last messages may take to leave once the kernel stops serving.
const FLUSH_BOUND: Duration = Duration::from_secs(2);


/// How many characters of an error about a peer's message a log line shows: enough for our own
/// words around the peer's value that the error quotes.
const LOGGED_ERROR_CHARS: usize = 240;

/// A request between its `busy` and its `idle`. Its content is not kept: it was typed into the
/// [`Request`] (whose parts went where they are used) and its frame freed.
#[derive(Debug)]
pub(super) struct InFlight {
    message: Message<()>,
    channel: Channel,
    /// The lane of a job (execute or comm), once it has one.
    lane: Option<Lane>,
    /// A job waiting in the fresh pool's queue for a free fresh lane.
    pooled: bool,
    stop_on_error: bool,
    execution_count: u64,
    /// For a query: the answer sent if the lane does not answer within [`QUERY_BOUND_BUSY`] (a busy lane) or [`QUERY_BOUND_IDLE`], and
    /// how many characters of the cell (a `%%lane` line) the lane did not see.
    fallback: Option<Value>,
    query_offset: usize,
    /// A job a lane spawned (`LaneCall::Spawn`), under the message of the cell that spawned it,
    /// and the lane that did: no client waits for its reply or its status, `%wait` does not
    /// wait for it, and the end of the spawning lane interrupts it.
    spawned: Option<Lane>,
}

#[derive(Debug, Default)]
struct LaneQueue {
    running: Option<RequestId>,
    /// `In [n]: first line` of the running cell, for `%lanes`.
    running_label: Option<String>,
    waiting: VecDeque<Job>,
    cells_run: u64,
    /// The client session whose default lane this is (one lane per session).
    session: Option<String>,
}

/// A job whose lane was restarted or stopped while it ran. The lane's name went to a new
/// interpreter at once; the old one was interrupted and ends once the job returns. A job that
/// has not returned by `answer_by` (a call CPython cannot interrupt, e.g. C code through ctypes)
/// is answered by the kernel; `%lanes` shows the job until it returns.
#[derive(Debug)]
struct SetAside {
    lane: Lane,
    label: Option<String>,
    since: Instant,
    /// `None` once the kernel answered the job.
    answer_by: Option<Instant>,
    restart: bool,
}

/// A `%wait` not answered yet.
#[derive(Debug)]
struct Waiter {
    caller: Lane,
    id: u64,
    /// Only requests before this one are waited for.
    before: RequestId,
    /// Empty: every lane but the caller's.
    targets: Vec<Lane>,
}

/// The kernel's state; one task owns it, so nothing here is shared.
pub struct Kernel<E: Executor> {
    session: Session,
    verifier: Verifier,
    executor: E,
    outgoing: tokio::sync::mpsc::UnboundedSender<Outgoing>,
    info: KernelInfo,
    next_request: RequestId,
    in_flight: BTreeMap<RequestId, InFlight>,
    /// Finished requests' headers, and the lane each ran in.
    finished: HashMap<RequestId, (Header, Option<Lane>)>,
    finished_order: VecDeque<RequestId>,
    lanes: BTreeMap<Lane, LaneQueue>,
    /// Fresh jobs waiting for a free fresh lane.
    pool: VecDeque<Job>,
    set_aside: BTreeMap<RequestId, SetAside>,
    comms: comms::Comms,
    waiters: Vec<Waiter>,
    /// Pending query answers, earliest deadline first.
    query_deadlines: VecDeque<(Instant, RequestId)>,
    /// Limits the warnings about dropped and refused messages.
    drop_warnings: RateLimit,
    execution_count: u64,
    history: History,
    /// `input_request`s sent and not yet answered: (its msg_id, the lane that waits).
    awaiting_input: VecDeque<(String, Lane)>,
    shutting_down: bool,
    /// One lane per client session: a session's cells without a magic line or a lane tag run
    /// in a lane of its own (`parakernel install --lane-per-session`, `parakernel run`).
    lane_per_session: bool,
    /// The lane name of each session that has sent a cell.
    session_lanes: BTreeMap<String, String>,
    /// One lane per session: each session's execution count.
    session_counts: HashMap<String, u64>,
}

impl<E: Executor> Kernel<E> {
    pub fn new(session: Session, executor: E, outgoing: tokio::sync::mpsc::UnboundedSender<Outgoing>, info: KernelInfo) -> Self {
        let mut lanes = BTreeMap::new();
        lanes.insert(Lane::Main, LaneQueue::default());
        for slot in 0..executor.fresh_lanes() {
            lanes.insert(Lane::Fresh(slot), LaneQueue::default());
        }
        Self {
            verifier: Verifier::new(session.signer.clone()),
            session,
            executor,
            outgoing,
            info,
            next_request: 1,
            in_flight: BTreeMap::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            lanes,
            pool: VecDeque::new(),
            set_aside: BTreeMap::new(),
            comms: comms::Comms::default(),
            waiters: Vec::new(),
            query_deadlines: VecDeque::new(),
            drop_warnings: RateLimit::new(),
            execution_count: 0,
            history: History::default(),
            awaiting_input: VecDeque::new(),
            shutting_down: false,
            lane_per_session: false,
            session_lanes: BTreeMap::new(),
            session_counts: HashMap::new(),
        }
    }

    /// Gives each client session a lane of its own (see `lane_per_session`).
    #[must_use]
    pub fn with_lane_per_session(mut self, on: bool) -> Self {
        self.lane_per_session = on;
        self
    }

    /// Serves until a `shutdown_request` has been answered, or the transport is gone. Control is
    /// read before everything else, so `kernel_info` and `interrupt` never wait behind cells.
    pub async fn serve(mut self, mut transport: Transport, mut events: UnboundedReceiver<Event>) {
        self.publish_status("starting", None);
        let mut events_open = true;
        while !self.shutting_down {
            let query_deadline = self.query_deadlines.front().map(|(deadline, _)| *deadline);
            let set_aside_deadline = self.set_aside.values().filter_map(|job| job.answer_by).min();
            tokio::select! {
                biased;
                Some(incoming) = transport.control.recv() => self.on_incoming(incoming),
                event = events.recv(), if events_open => match event {
                    Some(event) => self.on_event(event),
                    None => {
                        error!("the Python side has gone away; only kernel_info and shutdown are answered now");
                        events_open = false;
                    }
                },
                () = sleep_until(query_deadline), if query_deadline.is_some() => self.expire_queries(),
                () = sleep_until(set_aside_deadline), if set_aside_deadline.is_some() => self.answer_set_aside(),
                Some(incoming) = transport.shell.recv() => self.on_incoming(incoming),
                Some(incoming) = transport.stdin.recv() => self.on_incoming(incoming),
                Some(topic) = transport.subscriptions.recv() => self.welcome(topic),
                else => break,
            }
        }
        // A client that stopped reading must not hold the process: the flush is bounded.
        if tokio::time::timeout(FLUSH_BOUND, transport.flush()).await.is_err() {
            warn!("outgoing messages were not all written within {FLUSH_BOUND:?}");
        }
    }

    /// One log line for a message dropped or refused, as long as peers do not send them faster
    /// than [`RateLimit`] allows (anyone who can reach a port can send unsigned garbage);
    /// then one line that counts what was left out.
    fn warn_dropped(&mut self, channel: Channel, error: &str, what: &str) {
        let Some(suppressed) = self.drop_warnings.allow(std::time::Instant::now()) else { return };
        if suppressed > 0 {
            warn!(suppressed, "warnings about dropped messages were left out of the log");
        }
        warn!(?channel, error = %quoted(error).limit(LOGGED_ERROR_CHARS), "{what}");
    }

    fn on_incoming(&mut self, incoming: Incoming) {
        let Incoming { channel, frames } = incoming;
        let (message, content) = match Message::receive(frames, &mut self.verifier) {
            Ok(message) => message.take_content(),
            Err(error) => {
                self.warn_dropped(channel, &error.to_string(), "dropped a message");
                return;
            }
        };
        debug!(?channel, msg_type = %quoted(message.msg_type()), "received");
        let request = Request::parse(message.msg_type(), &content);
        // The content frame (libzmq's buffer: 200 MB for a 200 MB cell) is freed as soon as it
        // is typed, before the cell is queued.
        drop(content);
        if channel == Channel::Stdin {
            self.on_stdin(&message, request);
            return;
        }
        let request = match request {
            Ok(request) => request,
            Err(error @ WireError::Content { .. }) => {
                let error = error.to_string();
                self.warn_dropped(channel, &error, "refused a request");
                let id = self.begin(message, channel);
                let reply = error_content("BadRequest", &error);
                self.finish(id, Some(reply));
                return;
            }
            Err(error) => {
                self.warn_dropped(channel, &error.to_string(), "dropped a message");
                return;
            }
        };
        let id = self.begin(message, channel);
        self.dispatch(id, request);
    }

    /// The one dispatch table: what each request does.
    fn dispatch(&mut self, id: RequestId, request: Request) {
        let session = self.in_flight[&id].message.header.session.clone();
        match request {
            Request::KernelInfo(_) => {
                let reply = self.kernel_info();
                self.finish(id, Some(reply));
            }
            Request::Execute(execute) => self.execute(id, execute),
            Request::Complete(complete) => {
                let cursor_pos = complete.cursor_pos.unwrap_or_else(|| complete.code.chars().count());
                let (lane, code, cursor_pos, offset) = self.query_lane(&complete.code, cursor_pos, &session);
                let fallback = json!({
                    "status": "ok", "matches": [], "cursor_start": cursor_pos + offset,
                    "cursor_end": cursor_pos + offset, "metadata": {},
                });
                self.query(id, &lane, Query::Complete { code, cursor_pos }, fallback, offset);
            }
            Request::Inspect(inspect) => {
                let cursor_pos = inspect.cursor_pos.unwrap_or_else(|| inspect.code.chars().count());
                let (lane, code, cursor_pos, offset) = self.query_lane(&inspect.code, cursor_pos, &session);
                let detail_level = inspect.detail_level;
                let fallback = json!({"status": "ok", "found": false, "data": {}, "metadata": {}});
                self.query(id, &lane, Query::Inspect { code, cursor_pos, detail_level }, fallback, offset);
            }
            Request::IsComplete(is_complete) => {
                let fallback = json!({"status": "unknown"});
                self.query(id, &Lane::Main, Query::IsComplete { code: is_complete.code }, fallback, 0);
            }
            Request::CommInfo(comm_info) => {
                let reply = self.comms.info(comm_info.target_name.as_deref());
                self.finish(id, Some(reply));
            }
            Request::History(history) => {
                let reply = self.history.reply(&history);
                self.finish(id, Some(reply));
            }
            Request::CommOpen(comm) | Request::CommMsg(comm) | Request::CommClose(comm) => {
                let flight = &self.in_flight[&id];
                let kind = match flight.message.msg_type() {
                    "comm_open" => CommKind::Open,
                    "comm_close" => CommKind::Close,
                    _ => CommKind::Msg,
                };
                // The frontend opens comms with targets the main lane registered; messages
                // for a comm go to the lane it lives in.
                let lane = self.comms.lane_of(&comm.comm_id);
                let mut content = comm.rest;
                content.insert("comm_id".to_owned(), Value::String(comm.comm_id));
                self.comms.note(kind, &content, &lane);
                let content = Value::Object(content);
                let job = Job::Comm {
                    request: id,
                    msg_type: flight.message.msg_type().to_owned(),
                    content,
                    metadata: flight.message.metadata.clone(),
                    buffers: flight.message.buffers.iter().map(|buffer| buffer.to_vec()).collect(),
                    parent_header: header_json(&flight.message.header),
                };
                self.enqueue(lane, job);
            }
            Request::Interrupt(_) => {
                for target in self.interrupt_targets(&session) {
                    self.executor.interrupt(&target);
                }
                self.finish(id, Some(json!({"status": "ok"})));
            }
            Request::Shutdown(shutdown) => {
                info!(restart = shutdown.restart, "shutting down");
                self.executor.shutdown();
                self.finish(id, Some(json!({"status": "ok", "restart": shutdown.restart})));
                self.shutting_down = true;
            }
            Request::InputReply(_) => {
                warn!("input_reply arrived on a channel other than stdin; ignored");
                self.finish(id, None);
            }
            Request::Unknown(msg_type) => {
                warn!(msg_type = %quoted(&msg_type), "unknown message type");
                let reply = reply_type(&msg_type).map(|_| {
                    error_content("UnknownMessageType", &format!("parakernel does not handle {msg_type}"))
                });
                self.finish(id, reply);
            }
        }
    }

    fn kernel_info(&self) -> Value {
        json!({
            "status": "ok",
            "protocol_version": crate::wire::PROTOCOL_VERSION,
            "implementation": "parakernel",
            "implementation_version": env!("CARGO_PKG_VERSION"),
            "language_info": self.info.language_info,
            "banner": self.info.banner,
            "help_links": [
                {"text": "Python Reference", "url": "https://docs.python.org/3/"},
                {"text": "IPython Reference", "url": "https://ipython.readthedocs.io/en/stable/"},
            ],
            "debugger": false,
            "supported_features": [],
        })
    }

    /// Queues `job` behind its lane's running job; the lane gets it when it is free.
    fn enqueue(&mut self, lane: Lane, job: Job) {
        self.in_flight.get_mut(&job.request()).expect("begun").lane = Some(lane.clone());
        let queue = self.lanes.entry(lane.clone()).or_default();
        queue.waiting.push_back(job);
        self.start_next(&lane);
    }

    fn start_next(&mut self, lane: &Lane) {
        let queue = self.lanes.entry(lane.clone()).or_default();
        if queue.running.is_some() {
            return;
        }
        let Some(job) = queue.waiting.pop_front() else {
            return;
        };
        queue.running = Some(job.request());
        queue.running_label = match &job {
            Job::Execute(execute) => Some(running_label(execute)),
            Job::Comm { msg_type, .. } => Some(msg_type.clone()),
        };
        if let Job::Execute(execute) = &job {
            if !execute.silent {
                // The echo borrows the cell's code: serialized once, straight into its frame.
                let content = ExecuteInput { code: &execute.code, execution_count: execute.execution_count };
                self.publish(execute.request, "execute_input", content);
            }
        }
        self.executor.run(lane, job);
    }

    /// Registers a request and publishes its `busy`.
    fn begin(&mut self, message: Message<()>, channel: Channel) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        self.publish_status("busy", Some(&message.header));
        self.in_flight
            .insert(id, InFlight {
                message,
                channel,
                lane: None,
                pooled: false,
                stop_on_error: false,
                execution_count: 0,
                fallback: None,
                query_offset: 0,
                spawned: None,
            });
        id
    }

    /// Sends the reply (if one is owed) and the `idle` of a request, after all of its output.
    /// While other requests still run, a `busy` parented to one of them follows, so a client's
    /// indicator (which shows the last status) reads busy until the last request is done.
    fn finish(&mut self, id: RequestId, reply: Option<Value>) {
        let Some(flight) = self.in_flight.remove(&id) else {
            warn!(id, "finished a request twice");
            return;
        };
        if flight.spawned.is_some() {
            self.remember_finished(id, flight.message.header, flight.lane);
            return;
        }
        if let (Some(content), Some(reply_type)) = (reply, reply_type(flight.message.msg_type())) {
            let message = self.session.reply(&flight.message, &reply_type, content);
            self.send(flight.channel, &message);
        }
        self.publish_status("idle", Some(&flight.message.header));
        if let Some(still_running) = self.in_flight.values().find(|flight| flight.spawned.is_none()) {
            let header = still_running.message.header.clone();
            self.publish_status("busy", Some(&header));
        }
        let ran_in_a_lane = flight.lane.is_some() || flight.pooled;
        self.remember_finished(id, flight.message.header, flight.lane);
        if ran_in_a_lane {
            self.answer_waiters();
        }
    }

    fn remember_finished(&mut self, id: RequestId, header: Header, lane: Option<Lane>) {
        self.finished.insert(id, (header, lane));
        self.finished_order.push_back(id);
        if self.finished_order.len() > REMEMBERED_FINISHED {
            if let Some(oldest) = self.finished_order.pop_front() {
                self.finished.remove(&oldest);
            }
        }
    }

    fn header_of(&self, id: RequestId) -> Option<&Header> {
        self.in_flight.get(&id).map(|flight| &flight.message.header).or_else(|| self.finished.get(&id).map(|(header, _)| header))
    }

    fn finished_lane(&self, id: RequestId) -> Option<Lane> {
        self.finished.get(&id).and_then(|(_, lane)| lane.clone())
    }

    fn record_result(&mut self, request: Option<RequestId>, result: &ExecuteResult) {
        let (Some(count), Some(text)) = (result.execution_count, result.data.get("text/plain").and_then(Value::as_str))
        else {
            return;
        };
        if request.is_some() {
            self.history.record_output(count, text);
        }
    }

    fn welcome(&mut self, topic: Bytes) {
        // Every subscriber gets the welcome, so its topic must not carry a stranger's text to
        // them: Jupyter clients subscribe to everything (an empty topic) or to a short name.
        let plain = topic.len() <= MAX_WELCOMED_TOPIC && topic.iter().all(|byte| byte.is_ascii_graphic());
        if !plain {
            debug!(topic_length = topic.len(), "a subscription to an unusual topic is not welcomed");
            return;
        }
        let content = json!({"subscription": String::from_utf8_lossy(&topic)});
        let mut message = self.iopub_message("iopub_welcome", content, None);
        message.identities = if topic.is_empty() { Vec::new() } else { vec![topic] };
        self.send(Channel::Iopub, &message);
    }

    fn publish_stream(&mut self, request: Option<RequestId>, name: StreamName, text: String) {
        let parent = request.and_then(|id| self.header_of(id)).cloned();
        let message = self.iopub_message("stream", json!({"name": name.as_str(), "text": text}), parent.as_ref());
        self.send(Channel::Iopub, &message);
    }

    fn publish<C: Serialize>(&mut self, request: RequestId, msg_type: &str, content: C) {
        let parent = self.header_of(request).cloned();
        let message = self.iopub_message(msg_type, content, parent.as_ref());
        self.send(Channel::Iopub, &message);
    }

    fn publish_status(&mut self, state: &str, parent: Option<&Header>) {
        let message = self.iopub_message("status", json!({"execution_state": state}), parent);
        self.send(Channel::Iopub, &message);
    }

    fn iopub_message<C>(&self, msg_type: &str, content: C, parent: Option<&Header>) -> Message<C> {
        let topic = Bytes::from(format!("kernel.{}.{msg_type}", self.session.id));
        self.session.message(msg_type, content, parent, vec![topic])
    }

    fn send<C: Serialize>(&self, channel: Channel, message: &Message<C>) {
        let frames = message.encode(&self.session.signer);
        if self.outgoing.send(Outgoing { channel, frames }).is_err() {
            debug!(?channel, "transport closed; message not sent");
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

/// The cell's tags, as JupyterLab sends them in the request's metadata.
pub(super) fn cell_tags(metadata: &Map<String, Value>) -> Vec<String> {
    metadata
        .get("tags")
        .and_then(Value::as_array)
        .map(|tags| tags.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// `In [n]: first line` (shortened), how `%lanes` shows a running cell.
fn running_label(execute: &ExecuteJob) -> String {
    let first = execute.code.lines().find(|line| !line.trim().is_empty()).unwrap_or("").trim();
    let shown: String = first.chars().take(60).collect();
    let ellipsis = if shown.len() < first.len() { "…" } else { "" };
    format!("In [{}]: {shown}{ellipsis}", execute.execution_count)
}

/// `execute_input` content, borrowing the cell's code.
#[derive(Serialize)]
struct ExecuteInput<'a> {
    code: &'a str,
    execution_count: u64,
}

pub(super) fn header_json(header: &Header) -> Value {
    serde_json::to_value(header).expect("a header is plain JSON")
}

fn error_content(ename: &str, evalue: &str) -> Value {
    ErrorContent::new(ename, evalue).reply()
}

#[cfg(test)]
mod tests;
