//! The contract between the kernel (meaning) and whatever runs Python (the `python` module, or a
//! mock in tests). Jobs go in, events come out; neither side blocks the other.

use serde_json::{Map, Value};

/// The kernel's handle on one request while it is in flight; every event names the request it
/// belongs to, so output is parented to the right cell.
pub type RequestId = u64;

/// Where a job runs. Issue 3 adds named and fresh lanes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lane {
    Main,
}

/// An `execute_request` as the lane runs it. The magic line that chose the lane (if any) is
/// already removed from `code`.
#[derive(Debug, Clone)]
pub struct ExecuteJob {
    pub request: RequestId,
    pub code: String,
    pub silent: bool,
    pub store_history: bool,
    pub user_expressions: Map<String, Value>,
    pub allow_stdin: bool,
    /// The count this cell is shown with (kernel-wide, assigned in request order).
    pub execution_count: u64,
    /// The request's header, for code that asks "which request am I running?" (ipywidgets'
    /// `Output` widget captures output by the parent's `msg_id`).
    pub parent_header: Value,
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

/// Requests answered beside whatever the lane is running (they only read its namespace).
#[derive(Debug, Clone)]
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
    /// Any other iopub message (`display_data`, `update_display_data`, `execute_result`,
    /// `error`, `clear_output`, `comm_open`, `comm_msg`, `comm_close`, ...).
    Publish {
        request: Option<RequestId>,
        msg_type: String,
        content: Value,
        metadata: Map<String, Value>,
        buffers: Vec<Vec<u8>>,
    },
    /// `input()` / `getpass` in a cell: the kernel sends `input_request` on stdin to the client
    /// that sent `request` and later calls [`Executor::input_reply`] for that lane.
    InputRequest { request: RequestId, prompt: String, password: bool },
    /// The job is done. `reply` is the reply content (`execute_reply` for an execute job; `None`
    /// for comm jobs, which owe no reply).
    Finished { request: RequestId, reply: Option<Value> },
    /// The answer to a [`Query`] sent with [`Executor::query`].
    Answered { request: RequestId, reply: Value },
}

/// Runs Python for the kernel. Every method returns at once; results arrive as [`Event`]s on the
/// channel the executor was created with.
pub trait Executor: Send {
    /// Starts `job` on `lane`. The lane is idle (the kernel keeps per-lane queues).
    fn run(&mut self, lane: &Lane, job: Job);
    /// Answers `query` with `lane`'s namespace, without waiting for the lane's running job for
    /// more than a moment. The answer arrives as [`Event::Answered`] for `request`.
    fn query(&mut self, lane: &Lane, request: RequestId, query: Query);
    /// Delivers the client's `input_reply` to the lane blocked in `input()`.
    fn input_reply(&mut self, lane: &Lane, value: String);
    /// Raises `KeyboardInterrupt` in the running jobs of `target`, also in `time.sleep` and
    /// `input()`.
    fn interrupt(&mut self, target: &InterruptTarget);
    /// Interrupts everything and asks every lane to end; the process exits once the kernel has
    /// sent its last message.
    fn shutdown(&mut self);
}
