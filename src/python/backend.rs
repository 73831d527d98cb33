//! What the executor asks of one kind of lane. The main lane ([`super::main_lane::MainBackend`])
//! and the subinterpreter lanes ([`super::lanes::Lanes`]) implement it; a process lane would be
//! one more implementation, and one more arm in `PythonExecutor::backend`.

use serde_json::Value;

use crate::lanes::{Job, Lane, Query, RequestId};

pub(crate) trait LaneBackend {
    /// Starts `job` on `lane` (idle: the kernel keeps the queues); a job no lane can run is
    /// answered with an error.
    fn run(&self, lane: &Lane, job: Job);
    /// Answers `query` with `lane`'s namespace; gives it back when the lane has none to offer
    /// (a fresh lane, a lane not started yet), for the main lane to answer.
    fn query(&self, lane: &Lane, request: RequestId, query: Query) -> Result<(), Query>;
    /// Hands the client's `input_reply` to the lane's `input()`; false if none waits.
    fn input_reply(&self, lane: &Lane, value: String) -> bool;
    /// Interrupts the running job of `lane` (of every lane of this backend when `None`).
    fn interrupt(&self, lane: Option<&Lane>);
    /// Answers a lane call; false if the call is no longer waited for.
    fn call_reply(&self, lane: &Lane, id: u64, reply: Result<Value, String>) -> bool;
    /// Ends `lane`'s interpreter (a new one at once with `restart`).
    fn end_lane(&self, lane: &Lane, restart: bool);
}
