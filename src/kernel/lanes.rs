//! The kernel's side of lanes: an `execute_request` counted and routed to its lane (a session's
//! own lane under one lane per session), the fresh pool's queue, and the calls lanes make
//! (`%lanes`, `%wait`, `%lane interrupt|restart|stop`, a pool's spawned jobs). Pure bookkeeping:
//! the executor does the work.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::debug;

use crate::lanes::{CellCode, ErrorContent, ExecuteJob, ExecuteReply, Executor, InterruptTarget, Job, Lane, LaneCall, RequestId, Transfer};
use super::routing::{self, Route};
use super::{Kernel, SetAside, Waiter};
use crate::wire::{quoted, ExecuteRequest};
use super::{cell_tags, header_json};

/// How long a job whose lane was restarted or stopped has to return (an interrupted job ends in
/// milliseconds) before the kernel answers it and sets its interpreter aside.
const SET_ASIDE_GRACE: Duration = Duration::from_secs(2);

impl<E: Executor> Kernel<E> {
    /// The lane of a cell (`None`: any fresh lane) and its code without the magic line (sharing
    /// the cell's text), or an error message for the user.
    pub(super) fn route(&mut self, code: &CellCode, tags: &[String], session: &str) -> Result<(Option<Lane>, Transfer, CellCode), String> {
        let routed = routing::route(code, tags).map_err(|error| error.to_string())?;
        // The routed code is what is left after the magic line.
        let routed_code = code.suffix(code.len() - routed.code.len());
        let mut transfer = routed.transfer;
        if !transfer.is_empty() {
            // One lane per session: the values come from (and go to) the session's own lane.
            transfer.home = self.session_lane(session).map(|lane| lane.name());
        }
        let lane = match routed.route {
            Route::Main => return Ok((Some(Lane::Main), transfer, routed_code)),
            Route::Default => match self.session_lane(session) {
                None => return Ok((Some(Lane::Main), transfer, routed_code)),
                lane => lane,
            },
            Route::Named(name) => Some(self.named_lane(name, session)),
            Route::Fresh => None,
        };
        if let Some(reason) = self.executor.lanes_unavailable() {
            // The reason already says how to run the cell in the main lane.
            return Err(format!("this cell asks for a subinterpreter lane, but {reason}."));
        }
        if lane.is_none() && self.executor.fresh_lanes() == 0 {
            return Err("no fresh lanes are configured (PARAKERNEL_FRESH_LANES=0); use %%lane NAME".to_owned());
        }
        Ok((lane, transfer, routed_code))
    }

    /// An `execute_request`: counted, recorded in the history, routed to its lane and queued
    /// there (or refused, when its lane cannot be had).
    pub(super) fn execute(&mut self, id: RequestId, execute: ExecuteRequest) {
        // Moved, never copied: the history, the echo and the job share this text.
        let code = CellCode::from(execute.code);
        let counted = !execute.silent && execute.store_history;
        let session = self.in_flight[&id].message.header.session.clone();
        // One lane per session: each session (notebook) counts its own cells, as a kernel of
        // its own would.
        let count = if self.lane_per_session {
            self.session_counts.entry(session.clone()).or_insert(0)
        } else {
            &mut self.execution_count
        };
        if counted {
            *count += 1;
        }
        let count = *count;
        if counted {
            self.history.record(count, code.clone());
        }
        let flight = self.in_flight.get_mut(&id).expect("begun");
        flight.stop_on_error = execute.stop_on_error;
        flight.execution_count = count;
        let tags = cell_tags(&flight.message.metadata);
        let parent_header = header_json(&flight.message.header);
        let (lane, transfer, code) = match self.route(&code, &tags, &session) {
            Ok(routed) => routed,
            Err(message) => {
                self.refuse_cell(id, "LaneError", &message);
                return;
            }
        };
        let job = Job::Execute(ExecuteJob {
            request: id,
            code,
            silent: execute.silent,
            store_history: execute.store_history,
            user_expressions: execute.user_expressions,
            allow_stdin: execute.allow_stdin,
            execution_count: count,
            parent_header,
            transfer,
        });
        match lane {
            Some(lane) => self.enqueue(lane, job),
            None => self.enqueue_fresh(job),
        }
    }

    /// A cell that cannot run: an `error` output the user sees under the cell, and an error
    /// reply. Nothing runs.
    pub(super) fn refuse_cell(&mut self, id: RequestId, ename: &str, message: &str) {
        let error = ErrorContent::new(ename, message);
        self.publish(id, "error", &error);
        let count = self.in_flight.get(&id).map_or(0, |flight| flight.execution_count);
        let reply = ExecuteReply::error(count, error).to_value();
        self.finish(id, Some(reply));
    }

    /// Queues a fresh job in the pool; it starts on the first free fresh lane.
    pub(super) fn enqueue_fresh(&mut self, job: Job) {
        self.in_flight.get_mut(&job.request()).expect("begun").pooled = true;
        self.pool.push_back(job);
        self.start_fresh();
    }

    /// Moves pooled jobs onto idle fresh lanes.
    pub(super) fn start_fresh(&mut self) {
        while !self.pool.is_empty() {
            let idle = self.lanes.iter().find_map(|(lane, queue)| {
                let free = queue.running.is_none() && queue.waiting.is_empty();
                (matches!(lane, Lane::Fresh(_)) && free).then(|| lane.clone())
            });
            let Some(lane) = idle else { return };
            let job = self.pool.pop_front().expect("not empty");
            if let Some(flight) = self.in_flight.get_mut(&job.request()) {
                flight.pooled = false;
            }
            self.enqueue(lane, job);
        }
    }

    /// Which lane answers a query on `code`: a `%%lane NAME` cell asks that lane (when it exists)
    /// about the code below the magic line. Returns the lane, the code and cursor it sees, and
    /// how many characters were cut off the front.
    pub(super) fn query_lane(&self, code: &str, cursor_pos: usize, session: &str) -> (Lane, String, usize, usize) {
        // Without a magic line: the session's own lane (one lane per session), else main.
        let default = self
            .session_lanes
            .get(session)
            .map(|name| Lane::Named(name.clone()))
            .filter(|lane| self.lanes.contains_key(lane))
            .unwrap_or(Lane::Main);
        let Some((first, rest)) = code.split_once('\n') else {
            return (default, code.to_owned(), cursor_pos, 0);
        };
        let offset = first.chars().count() + 1;
        let magic = first.trim_start().starts_with("%%lane") || first.trim_start().starts_with("%%parallel");
        if !magic || cursor_pos < offset {
            return (default, code.to_owned(), cursor_pos, 0);
        }
        let lane = match routing::route(code, &[]) {
            Ok(routed) => match routed.route {
                // A lane not made yet, or a fresh lane: main's namespace is the best guess.
                Route::Named(name) => self.existing_named_lane(&name, session).unwrap_or(Lane::Main),
                _ => Lane::Main,
            },
            Err(_) => Lane::Main,
        };
        (lane, rest.to_owned(), cursor_pos - offset, offset)
    }

    pub(super) fn on_call(&mut self, lane: Lane, id: u64, request: Option<RequestId>, call: LaneCall) {
        debug!(lane = %quoted(&lane.name()), id, call = %quoted(&format!("{call:?}")), "lane call");
        let reply = match call {
            LaneCall::Lanes => Ok(self.lanes_table()),
            LaneCall::Wait { lanes } => match self.wait_targets(&lanes, request) {
                Ok(targets) => {
                    let before = request.unwrap_or(self.next_request);
                    self.waiters.push(Waiter { caller: lane, id, before, targets });
                    self.answer_waiters();
                    return;
                }
                Err(message) => Err(message),
            },
            LaneCall::Interrupt { lane: name } => self.lookup(&name, request).map(|target| {
                self.executor.interrupt(&InterruptTarget::Lane(target));
                json!({"lane": name, "interrupted": true})
            }),
            LaneCall::Restart { lane: name } => self.end_lane(&lane, &name, request, true),
            LaneCall::Stop { lane: name } => self.end_lane(&lane, &name, request, false),
            LaneCall::Spawn { code } => self.spawn(&lane, request, code),
        };
        self.executor.call_reply(&lane, id, reply);
    }

    fn wait_targets(&self, names: &[String], request: Option<RequestId>) -> Result<Vec<Lane>, String> {
        names.iter().map(|name| self.lookup(name, request)).collect()
    }

    /// Answers every `%wait` whose lanes have finished the cells requested before it.
    pub(super) fn answer_waiters(&mut self) {
        let mut index = 0;
        while index < self.waiters.len() {
            if self.waiting_for(&self.waiters[index]) {
                index += 1;
                continue;
            }
            let waiter = self.waiters.swap_remove(index);
            self.executor.call_reply(&waiter.caller, waiter.id, Ok(json!({"waited": true})));
        }
    }

    /// `LaneCall::Spawn`: a job of its own on a fresh lane, under the calling cell's message.
    fn spawn(&mut self, owner: &Lane, caller: Option<RequestId>, code: String) -> Result<Value, String> {
        let Some(flight) = caller.and_then(|id| self.in_flight.get(&id)) else {
            return Err("lane jobs can be started only while a cell runs (the cell that starts them shows their output)".to_owned());
        };
        if let Some(reason) = self.executor.lanes_unavailable() {
            return Err(format!("this needs subinterpreter lanes, but {reason}."));
        }
        if self.executor.fresh_lanes() == 0 {
            return Err("no fresh lanes are configured (PARAKERNEL_FRESH_LANES=0)".to_owned());
        }
        let message = flight.message.clone();
        let (channel, execution_count) = (flight.channel, flight.execution_count);
        let id = self.next_request;
        self.next_request += 1;
        let parent_header = super::header_json(&message.header);
        self.in_flight.insert(id, super::InFlight {
            message,
            channel,
            lane: None,
            pooled: false,
            stop_on_error: false,
            execution_count,
            fallback: None,
            query_offset: 0,
            spawned: Some(owner.clone()),
        });
        self.enqueue_fresh(Job::Execute(crate::lanes::ExecuteJob {
            request: id,
            code: CellCode::from(code),
            silent: true,
            store_history: false,
            user_expressions: serde_json::Map::new(),
            allow_stdin: false,
            execution_count,
            parent_header,
            transfer: Transfer::default(),
        }));
        Ok(json!({"job": id}))
    }

    /// The jobs `owner` spawned (a lane pool's workers) end with it: the running ones are
    /// interrupted (a worker leaves when interrupted), those not started are dropped.
    fn end_spawned_by(&mut self, owner: &Lane) {
        let mut running = Vec::new();
        let mut queued = Vec::new();
        for (id, flight) in &self.in_flight {
            if flight.spawned.as_ref() != Some(owner) {
                continue;
            }
            match &flight.lane {
                Some(lane) => running.push(lane.clone()),
                None => queued.push(*id),
            }
        }
        for lane in running {
            self.executor.interrupt(&InterruptTarget::Lane(lane));
        }
        self.pool.retain(|job| !queued.contains(&job.request()));
        for id in queued {
            self.finish(id, None);
        }
    }

    /// Whether an earlier job of the waiter's lanes is still queued or running.
    fn waiting_for(&self, waiter: &Waiter) -> bool {
        self.in_flight.range(..waiter.before).filter(|(_, flight)| flight.spawned.is_none()).any(|(_, flight)| {
            let in_target = |lane: &Lane| {
                if waiter.targets.is_empty() {
                    *lane != waiter.caller
                } else {
                    waiter.targets.contains(lane)
                }
            };
            let pooled_target = flight.pooled
                && (waiter.targets.is_empty() || waiter.targets.iter().any(|lane| matches!(lane, Lane::Fresh(_))));
            flight.lane.as_ref().is_some_and(in_target) || pooled_target
        })
    }

    /// `%lane restart` / `%lane stop`: queued cells of the lane are aborted and the executor
    /// ends its interpreter (interrupting a running cell). Stopping a session's own lane (one
    /// lane per session) stops the lanes its cells named too, as does stopping the session's
    /// scope when it never had a lane of its own (a main-lane notebook).
    fn end_lane(&mut self, caller: &Lane, name: &str, request: Option<RequestId>, restart: bool) -> Result<Value, String> {
        let resolved = self.lookup(name, request);
        let scope = match &resolved {
            Ok(Lane::Named(own)) => Some(own.clone()),
            Err(_) => Some(name.to_owned()),
            Ok(_) => None,
        };
        let scoped = scope.filter(|scope| !restart && self.session_lanes.values().any(|known| known == scope)).map(|scope| self.scoped_lanes(&scope)).unwrap_or_default();
        let mut also = Vec::new();
        for lane in scoped.iter().filter(|lane| *lane != caller) {
            match lane {
                // A fresh lane running one of the session's cells (a `parallel` cell, a pool's
                // worker) gets a new interpreter: the cell is set aside, the lane serves on.
                Lane::Fresh(_) => {
                    self.end_unchecked(lane, true);
                }
                _ => {
                    self.end_one(caller, lane, &lane.name(), false)?;
                }
            }
            also.push(lane.name());
        }
        let mut ended = match resolved {
            Ok(lane) => self.end_one(caller, &lane, name, restart)?,
            Err(_) if !also.is_empty() => json!({"lane": name, "restarted": false, "stopped": true, "aborted": 0}),
            Err(message) => return Err(message),
        };
        if !also.is_empty() {
            ended["also"] = json!(also);
        }
        Ok(ended)
    }

    /// Ends one lane (`end_lane`).
    fn end_one(&mut self, caller: &Lane, lane: &Lane, name: &str, restart: bool) -> Result<Value, String> {
        let verb = if restart { "restart" } else { "stop" };
        let lane = lane.clone();
        match &lane {
            Lane::Main => {
                return Err(format!(
                    "the main lane is the kernel's own interpreter and cannot {verb}: restart the kernel instead (Kernel → Restart Kernel)"
                ))
            }
            Lane::Fresh(_) => {
                return Err(format!("{name} is a fresh lane: it keeps nothing between cells, so there is nothing to {verb}"))
            }
            Lane::Named(_) if lane == *caller => {
                return Err(format!(
                    "a lane cannot {verb} itself: run `%lane {verb} {name}` from another lane, e.g. the main lane"
                ))
            }
            Lane::Named(_) => {}
        }
        let aborted = self.end_unchecked(&lane, restart);
        Ok(json!({"lane": name, "restarted": restart, "stopped": !restart, "aborted": aborted}))
    }

    /// Ends `lane` (`end_one` has checked that it may): its queued cells are aborted, its
    /// running cell set aside. Returns how many cells were aborted.
    fn end_unchecked(&mut self, lane: &Lane, restart: bool) -> usize {
        let lane = lane.clone();
        let queued: Vec<Job> = self.lanes.get_mut(&lane).map(|queue| queue.waiting.drain(..).collect()).unwrap_or_default();
        for job in &queued {
            self.abort(job);
        }
        self.executor.end_lane(&lane, restart);
        self.close_comms_of(&lane);
        self.end_spawned_by(&lane);
        // The running job is interrupted and leaves the lane: the name serves new cells at once,
        // whether or not the job can be interrupted.
        if let Some(queue) = self.lanes.get_mut(&lane) {
            if let Some(running) = queue.running.take() {
                let aside = SetAside {
                    lane: lane.clone(),
                    label: queue.running_label.take(),
                    since: Instant::now(),
                    answer_by: Some(Instant::now() + SET_ASIDE_GRACE),
                    restart,
                };
                self.set_aside.insert(running, aside);
            }
        }
        if !restart {
            self.lanes.remove(&lane);
        }
        queued.len()
    }

    /// Answers the set-aside jobs that have not returned within [`SET_ASIDE_GRACE`]: an error
    /// under the cell that says where its interpreter went. Their lanes are serving new cells.
    pub(super) fn answer_set_aside(&mut self) {
        let now = Instant::now();
        let due: Vec<RequestId> = self
            .set_aside
            .iter()
            .filter(|(_, job)| job.answer_by.is_some_and(|by| by <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(job) = self.set_aside.get_mut(&id) else { continue };
            job.answer_by = None;
            let verb = if job.restart { "restarted" } else { "stopped" };
            let message = format!(
                "lane {} was {verb} while this cell was blocked in a call that cannot be interrupted (C code that \
                 does not return to Python); the lane's name serves new cells in a new interpreter, and the old \
                 interpreter is set aside (shown by %lanes) until the call returns, then ended",
                job.lane.name()
            );
            self.refuse_cell(id, "LaneSetAside", &message);
        }
    }

    /// One row per lane for `%lanes` (the lane's shell only formats it).
    fn lanes_table(&self) -> Value {
        let cpu = self.executor.cpu_seconds();
        let mut rows: Vec<Value> = self
            .lanes
            .iter()
            .map(|(lane, queue)| {
                let kind = match lane {
                    Lane::Main => "main",
                    Lane::Named(_) => "named",
                    Lane::Fresh(_) => "fresh",
                };
                let state = if queue.running.is_some() { "running" } else { "idle" };
                json!({
                    "name": lane.name(), "kind": kind, "state": state,
                    "running": queue.running_label, "queued": queue.waiting.len(),
                    "cells_run": queue.cells_run, "cpu": cpu.get(&lane.name()),
                    "session": queue.session,
                })
            })
            .collect();
        for job in self.set_aside.values() {
            let verb = if job.restart { "restarted" } else { "stopped" };
            rows.push(json!({
                "name": format!("{} (set aside)", job.lane.name()), "kind": "named",
                "state": format!("{verb} {:.0} s ago; ends when its cell returns", job.since.elapsed().as_secs_f64()),
                "running": job.label, "queued": 0, "cells_run": 0,
            }));
        }
        if !self.pool.is_empty() {
            rows.push(json!({
                "name": "fresh pool", "kind": "pool", "state": "waiting for a free fresh lane",
                "running": null, "queued": self.pool.len(), "cells_run": 0,
            }));
        }
        Value::Array(rows)
    }
}
