//! What lanes tell the kernel: output (published under the request that made it), input
//! requests (sent to the client that sent the cell), finished jobs (their reply, the lane's next
//! job, `stop_on_error`), query answers and lane calls; and the client's `input_reply`.

use bytes::Bytes;
use serde_json::json;
use tracing::{debug, warn};

use super::{Channel, Kernel};
use crate::lanes::{Event, ExecuteReply, Executor, Job, Lane, Output, RequestId};
use crate::wire::{quoted, Message, Request, WireError};

impl<E: Executor> Kernel<E> {
    pub(super) fn on_event(&mut self, event: Event) {
        match event {
            // Coalesced in the lane (`lanes::streams`): published as it comes.
            Event::Stream { request, name, text } => self.publish_stream(request, name, text),
            Event::Output { request, output, metadata, buffers } => {
                match &output {
                    Output::ExecuteResult(result) => self.record_result(request, result),
                    Output::Comm(kind, content) => {
                        let lane = self.lane_of_request(request);
                        self.comms.note(*kind, content, &lane);
                    }
                    _ => {}
                }
                let parent = request.and_then(|id| self.header_of(id)).cloned();
                let mut message = self.iopub_message(output.msg_type(), output, parent.as_ref());
                message.metadata = metadata;
                message.buffers = buffers.into_iter().map(Bytes::from).collect();
                self.send(Channel::Iopub, &message);
            }
            Event::InputRequest { request, prompt, password } => {
                let Some(flight) = self.in_flight.get(&request) else {
                    warn!(request, "input requested by a request that is not running");
                    return;
                };
                let lane = flight.lane.clone().unwrap_or(Lane::Main);
                let message = self.session.reply(
                    &flight.message,
                    "input_request",
                    json!({"prompt": prompt, "password": password}),
                );
                self.awaiting_input.push_back((message.header.msg_id.clone(), lane));
                self.send(Channel::Stdin, &message);
            }
            Event::Finished { request, reply } => self.on_finished(request, reply),
            Event::Answered { request, reply } => self.on_answered(request, reply),
            Event::Call { lane, id, request, call } => self.on_call(lane, id, request, call),
        }
    }

    pub(super) fn on_finished(&mut self, id: RequestId, reply: Option<ExecuteReply>) {
        if let Some(job) = self.set_aside.remove(&id) {
            // Its lane has moved on: nothing queued there depends on this job any more.
            debug!(id, lane = %quoted(&job.lane.name()), "a set-aside job returned");
            if job.answer_by.is_some() {
                self.finish(id, reply.map(|reply| reply.to_value()));
            }
            return;
        }
        let Some(lane) = self.in_flight.get(&id).and_then(|flight| flight.lane.clone()) else {
            warn!(id, "a lane finished a request the kernel does not know");
            return;
        };
        let failed = reply.as_ref().is_some_and(ExecuteReply::is_error);
        let abort = failed && self.in_flight[&id].stop_on_error;
        let session = self.in_flight[&id].message.header.session.clone();
        let executed = reply.is_some();
        if let Some(queue) = self.lanes.get_mut(&lane) {
            if queue.running == Some(id) {
                queue.running = None;
                queue.running_label = None;
                queue.cells_run += u64::from(executed);
            }
        }
        self.finish(id, reply.map(|reply| reply.to_value()));
        if abort {
            self.abort_queued(&lane, &session);
        }
        self.start_next(&lane);
        if matches!(lane, Lane::Fresh(_)) {
            self.start_fresh();
        }
    }

    /// `stop_on_error`: the cells queued behind a failed one in the same lane are answered
    /// `aborted` without running; other lanes and non-execute jobs go on. With one lane per
    /// session, the failed cell's session's cells are, and only those: on every lane and in the
    /// fresh pool (a notebook's error stops the notebook), while a lane two notebooks share
    /// (main) goes on with the other's.
    pub(super) fn abort_queued(&mut self, lane: &Lane, session: &str) {
        // `None`: every cell (without lanes per session).
        let of_session: Option<std::collections::HashSet<RequestId>> = self.lane_per_session.then(|| {
            let ours = |flight: &super::InFlight| flight.spawned.is_none() && flight.message.header.session == session;
            self.in_flight.iter().filter(|(_, flight)| ours(flight)).map(|(id, _)| *id).collect()
        });
        let aborts = |job: &Job| of_session.as_ref().is_none_or(|ours| ours.contains(&job.request()));
        let lanes: Vec<Lane> = if self.lane_per_session { self.lanes.keys().cloned().collect() } else { vec![lane.clone()] };
        let mut aborted = Vec::new();
        for lane in &lanes {
            if let Some(queue) = self.lanes.get_mut(lane) {
                aborted.extend(take_cells(&mut queue.waiting, aborts));
            }
        }
        if self.lane_per_session {
            aborted.extend(take_cells(&mut self.pool, aborts));
        }
        for job in aborted {
            self.abort(&job);
        }
    }

    /// Answers a job that will not run: `aborted` for a cell, nothing owed for a comm message.
    pub(super) fn abort(&mut self, job: &Job) {
        let count = self.in_flight.get(&job.request()).map_or(0, |flight| flight.execution_count);
        let reply = matches!(job, Job::Execute(_)).then(|| ExecuteReply::aborted(count).to_value());
        self.finish(job.request(), reply);
    }

    pub(super) fn on_stdin(&mut self, message: &Message<()>, request: Result<Request, WireError>) {
        let Ok(Request::InputReply(reply)) = request else {
            warn!(msg_type = %quoted(message.msg_type()), "unexpected message on stdin; dropped");
            return;
        };
        let parent = message.parent_header.as_ref().map(|header| header.msg_id.as_str());
        let position = self
            .awaiting_input
            .iter()
            .position(|(msg_id, _)| Some(msg_id.as_str()) == parent)
            .or(if self.awaiting_input.is_empty() { None } else { Some(0) });
        match position.and_then(|position| self.awaiting_input.remove(position)) {
            Some((_, lane)) => self.executor.input_reply(&lane, reply.value),
            None => warn!("input_reply with no input_request waiting; dropped"),
        }
    }
}

/// Takes the cells (execute jobs) `aborts` picks out of `queue`, leaving the rest in order.
fn take_cells(queue: &mut std::collections::VecDeque<Job>, aborts: impl Fn(&Job) -> bool) -> Vec<Job> {
    let (taken, kept): (Vec<Job>, Vec<Job>) = queue.drain(..).partition(|job| matches!(job, Job::Execute(_)) && aborts(job));
    queue.extend(kept);
    taken
}
