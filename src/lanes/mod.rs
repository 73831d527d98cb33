//! The contract between the kernel (meaning) and whatever runs Python (the `python` module, or a
//! mock in tests). Jobs go in, events come out; neither side blocks the other.

use std::sync::Arc;

pub mod streams;

use serde_json::{Map, Value};

pub use crate::wire::content::{ErrorContent, ExecuteReply, Output};

impl Event {
    /// The events that show `error` under a cell and answer it with an error reply: a cell no
    /// lane runs (a lane that cannot start, a kernel shutting down).
    pub fn refusal(job: &Job, error: ErrorContent) -> Vec<Event> {
        let request = job.request();
        let Job::Execute(execute) = job else {
            return vec![Event::Finished { request, reply: None }];
        };
        let reply = ExecuteReply::error(execute.execution_count, error.clone());
        vec![
            Event::Output { request: Some(request), output: Output::Error(error), metadata: Map::new(), buffers: Vec::new() },
            Event::Finished { request, reply: Some(reply) },
        ]
    }
}

/// The kernel's handle on one request while it is in flight; every event names the request it
/// belongs to, so output is parented to the right cell.
pub type RequestId = u64;

/// Where a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// The main interpreter, on the process's main thread.
    Main,
    /// An own-GIL subinterpreter named by the user; created on first use, kept until restarted
    /// or stopped.
    Named(String),
    /// Slot `n` of the warm pool of fresh lanes: it keeps nothing from one job to the next.
    Fresh(usize),
}

impl Lane {
    /// The name users see (`%lanes`, errors): `main`, the lane's name, or `fresh-N`.
    pub fn name(&self) -> String {
        match self {
            Lane::Main => "main".to_owned(),
            Lane::Named(name) => name.clone(),
            Lane::Fresh(slot) => format!("fresh-{slot}"),
        }
    }
}

/// A cell's code, held once and shared by everyone who needs it (the kernel's history, the
/// `execute_input` echo, the lane's job): a 200 MB cell is 200 MB in the kernel, not a copy per
/// holder. A `CellCode` may be a suffix of the code as sent (the job's code without the
/// `%%lane` line) and still shares the text.
#[derive(Clone)]
pub struct CellCode {
    // `Arc<String>`, not `Arc<str>`: a `String` moves in without copying its bytes.
    text: Arc<String>,
    start: usize,
}

impl CellCode {
    pub fn as_str(&self) -> &str {
        &self.text[self.start..]
    }

    /// The same code from byte `start` on (a char boundary of [`Self::as_str`]), sharing it.
    #[must_use]
    pub fn suffix(&self, start: usize) -> Self {
        assert!(self.as_str().is_char_boundary(start), "a suffix starts at a character");
        CellCode { text: Arc::clone(&self.text), start: self.start + start }
    }
}

impl From<String> for CellCode {
    fn from(text: String) -> Self {
        CellCode { text: Arc::new(text), start: 0 }
    }
}

impl From<&str> for CellCode {
    fn from(text: &str) -> Self {
        CellCode::from(text.to_owned())
    }
}

impl std::ops::Deref for CellCode {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for CellCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), formatter)
    }
}

impl PartialEq for CellCode {
    fn eq(&self, other: &CellCode) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for CellCode {}

impl PartialEq<str> for CellCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for CellCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// An `execute_request` as the lane runs it. The magic line that chose the lane (if any) is
/// already removed from `code`.
#[derive(Debug, Clone)]
pub struct ExecuteJob {
    pub request: RequestId,
    pub code: CellCode,
    pub silent: bool,
    pub store_history: bool,
    pub user_expressions: Map<String, Value>,
    pub allow_stdin: bool,
    /// The count this cell is shown with (kernel-wide, assigned in request order).
    pub execution_count: u64,
    /// The request's header, for code that asks "which request am I running?" (ipywidgets'
    /// `Output` widget captures output by the parent's `msg_id`).
    pub parent_header: Value,
    /// The names copied from the main lane before the cell and back after it.
    pub transfer: Transfer,
}

/// `%%lane NAME --in a,b --out c`: the values copied from the home lane's namespace (the main
/// lane's) into the lane's before the cell (`inputs`), and back after it (`outputs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Transfer {
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// The lane the values come from and go to: `None` for the main lane; with one lane per
    /// session, the session's own lane.
    pub home: Option<String>,
}

impl Transfer {
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty() && self.outputs.is_empty()
    }
}

/// Work that runs in a lane in request order, one at a time: the kernel hands a lane its next
/// job only after the previous one's [`Event::Finished`].
#[derive(Debug, Clone)]
pub enum Job {
    Execute(ExecuteJob),
    /// `comm_open`, `comm_msg` or `comm_close`; `msg_type` says which. Finishes with no reply.
    Comm {
        request: RequestId,
        msg_type: String,
        content: Value,
        metadata: Map<String, Value>,
        /// Binary buffers (e.g. widget state), as the frontend sent them.
        buffers: Vec<Vec<u8>>,
        parent_header: Value,
    },
}

impl Job {
    pub fn request(&self) -> RequestId {
        match self {
            Job::Execute(job) => job.request,
            Job::Comm { request, .. } => *request,
        }
    }
}

/// Requests answered beside whatever the lane is running (they only read its namespace). They
/// cross to the lane's shell as JSON tagged with `kind` (`complete`, `inspect`, ...): the names
/// are these variants', in snake case.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Query {
    Complete { code: String, cursor_pos: usize },
    Inspect { code: String, cursor_pos: usize, detail_level: u8 },
    IsComplete { code: String },
    CommInfo { target_name: Option<String> },
}

/// Which lanes an interrupt reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterruptTarget {
    /// Every lane that is running a job (`interrupt_request`, SIGINT).
    All,
    /// One lane (`%lane interrupt NAME`); nothing happens if it is idle.
    Lane(Lane),
}

/// What a lane asks of the kernel (parakernel's own magics). The lane blocks, interruptibly,
/// until [`Executor::call_reply`] answers the call with the same `id`. A lane's shell names a
/// call by its `op` (these variants, in snake case) with its fields beside it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum LaneCall {
    /// `%lanes`: one row per lane (name, kind, state, running cell, queued, cells run).
    Lanes,
    /// `%wait [NAME ...]`: answered when the named lanes (every other lane when empty) have
    /// finished every cell requested before the calling one.
    Wait {
        #[serde(default)]
        lanes: Vec<String>,
    },
    /// `%lane interrupt NAME`.
    Interrupt { lane: String },
    /// `%lane restart NAME`: queued cells are aborted, the running one interrupted, and the
    /// lane gets a new interpreter.
    Restart { lane: String },
    /// `%lane stop NAME`: as restart, but the lane is gone until a cell names it again.
    Stop { lane: String },
    /// `parakernel.LanePool`'s workers: run `code` as a job of its own on the next free fresh
    /// lane, beside the calling cell (silent, not in the history, its output under the calling
    /// cell, no reply to any client). Answered at once with the job's id; the job ends when its
    /// code returns.
    Spawn { code: String },
}

/// The two streams a cell writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamName {
    Stdout,
    Stderr,
}

impl StreamName {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::Stdout => "stdout",
            StreamName::Stderr => "stderr",
        }
    }
}

/// What a lane tells the kernel. `request` is the request the lane is running, or ran last
/// (output of threads a cell started); `None` before the first request.
#[derive(Debug, Clone)]
pub enum Event {
    /// Text written to `sys.stdout` / `sys.stderr`; the kernel coalesces these.
    Stream { request: Option<RequestId>, name: StreamName, text: String },
    /// Any other iopub output (display data and its updates, results, errors, clear_output,
    /// comm messages), with the message's metadata and binary buffers.
    Output {
        request: Option<RequestId>,
        output: Output,
        metadata: Map<String, Value>,
        buffers: Vec<Vec<u8>>,
    },
    /// `input()` / `getpass` in a cell: the kernel sends `input_request` on stdin to the client
    /// that sent `request` and later calls [`Executor::input_reply`] for that lane.
    InputRequest { request: RequestId, prompt: String, password: bool },
    /// The job is done. `reply` is the `execute_reply` of an execute job; `None` for comm jobs,
    /// which owe no reply.
    Finished { request: RequestId, reply: Option<ExecuteReply> },
    /// The answer to a [`Query`] sent with [`Executor::query`]; `None` when the lane cannot
    /// answer (the kernel then sends its empty answer at once).
    Answered { request: RequestId, reply: Option<Value> },
    /// A lane asks the kernel something; `id` is the lane's own number for the call, echoed by
    /// [`Executor::call_reply`] so a lane can ignore the answer to a call it gave up
    /// (interrupted).
    Call { lane: Lane, id: u64, request: Option<RequestId>, call: LaneCall },
}

/// Runs Python for the kernel. Every method returns at once; results arrive as [`Event`]s on the
/// channel the executor was created with.
pub trait Executor: Send {
    /// Starts `job` on `lane`. The lane is idle (the kernel keeps per-lane queues). A named lane
    /// is created on first use; if it cannot be, the job finishes with an error reply (and an
    /// `error` output) that says why.
    fn run(&mut self, lane: &Lane, job: Job);
    /// Answers `query` with `lane`'s namespace, without waiting for the lane's running job for
    /// more than a moment. The answer arrives as [`Event::Answered`] for `request`.
    fn query(&mut self, lane: &Lane, request: RequestId, query: Query);
    /// Delivers the client's `input_reply` to the lane blocked in `input()`.
    fn input_reply(&mut self, lane: &Lane, value: String);
    /// Raises `KeyboardInterrupt` in the running jobs of `target`, also in `time.sleep` and
    /// `input()`.
    fn interrupt(&mut self, target: &InterruptTarget);
    /// Answers the [`Event::Call`] `id` of `lane`: a JSON value, or an error message the lane
    /// raises.
    fn call_reply(&mut self, lane: &Lane, id: u64, reply: Result<Value, String>);
    /// Ends a named lane's interpreter. Its running job (if any) is interrupted first and still
    /// gets its [`Event::Finished`]. With `restart` a new interpreter is made at once; otherwise
    /// at the lane's next job.
    fn end_lane(&mut self, lane: &Lane, restart: bool);
    /// How many fresh lanes the warm pool has (the kernel runs at most that many fresh jobs at
    /// once).
    fn fresh_lanes(&self) -> usize;
    /// CPU seconds each lane's thread spent running its jobs, by lane name (`%lanes`).
    fn cpu_seconds(&self) -> std::collections::BTreeMap<String, f64>;
    /// Why subinterpreter lanes cannot run in this process (e.g. CPython older than 3.12.4), or
    /// `None` when they can.
    fn lanes_unavailable(&self) -> Option<String>;
    /// Interrupts everything and asks every lane to end; the process exits once the kernel has
    /// sent its last message.
    fn shutdown(&mut self);
}

#[cfg(test)]
mod tests {
    #[test]
    fn lane_calls_and_queries_are_named_by_their_variants() {
        use super::{LaneCall, Query};
        let call: LaneCall = serde_json::from_str(r#"{"op": "wait", "lanes": ["a"]}"#).unwrap();
        assert_eq!(call, LaneCall::Wait { lanes: vec!["a".into()] });
        assert_eq!(serde_json::from_str::<LaneCall>(r#"{"op": "wait"}"#).unwrap(), LaneCall::Wait { lanes: vec![] });
        assert_eq!(serde_json::from_str::<LaneCall>(r#"{"op": "restart", "lane": "b"}"#).unwrap(), LaneCall::Restart { lane: "b".into() });
        let unknown = serde_json::from_str::<LaneCall>(r#"{"op": "reboot"}"#).unwrap_err().to_string();
        assert!(unknown.contains("lanes") && unknown.contains("stop"), "{unknown}");
        assert!(serde_json::from_str::<LaneCall>(r#"{"op": "stop"}"#).is_err(), "stop needs a lane");
        let query = serde_json::to_value(Query::IsComplete { code: "x".into() }).unwrap();
        assert_eq!(query, serde_json::json!({"kind": "is_complete", "code": "x"}));
    }

    use super::CellCode;

    #[test]
    fn a_suffix_shares_the_text() {
        let code = CellCode::from("%%lane a\nx = 1".to_owned());
        let job = code.suffix("%%lane a\n".len());
        assert_eq!(job, "x = 1");
        assert_eq!(code, "%%lane a\nx = 1");
        assert!(std::ptr::eq(code.as_str()[9..].as_ptr(), job.as_ptr()));
        assert_eq!(job.suffix(4), "1");
        assert_eq!(format!("{job:?}"), "\"x = 1\"");
    }
}
