//! Subinterpreter lanes: named lanes and the warm pool of fresh lanes. Each interpreter is an
//! own-GIL subinterpreter that lives on its own thread from creation to end (a restart makes a
//! new interpreter on a new thread while the old one ends on its own), plus two control threads,
//! each with its own thread state of that interpreter: one raises interrupts in it, the other
//! answers queries with its namespace (so a slow completion never holds up an interrupt).
//!
//! Who owns what: [`Lanes`] (shared by the executor and the main lane) holds the current
//! interpreter of every lane and those being ended; a lane thread owns its interpreter
//! (`OwnInterpreter`, in `sublane`) and its shell, and is the only one that creates or ends them; each control
//! thread owns one thread state of the interpreter and deletes it before the lane thread ends
//! the interpreter (`CPython` aborts otherwise: "not the last thread").

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use crate::sync::{CondvarExt, LockExt};
use super::answers::Answers;
use super::backend::LaneBackend;
use super::ffi::InterpreterHandle;
use super::runtime::{ControlCommand, LaneCommand};
use super::sublane::{lane_thread, Link, Phase, SubLane};
use crate::lanes::{ErrorContent, Event, Job, Lane, Query, RequestId};
use crate::native::{self, LaneState};

/// How long an ending interpreter's threads (those its cells started) get to stop after
/// `SystemExit` was raised in them, and how long its control threads get to let go of their
/// thread states. Past that the interpreter is left alive (and Python is not finalized).
pub(super) const END_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether Python is ready for lanes to create interpreters.
enum Gate {
    /// The main lane is starting.
    Starting,
    Open(InterpreterHandle),
    /// The main lane could not start, or Python is being finalized.
    Closed(String),
}

/// The lanes of the process, shared by the executor (which starts jobs, interrupts, ends lanes)
/// and the main lane (which opens the gate once Python runs and waits for lanes at shutdown).
pub(crate) struct Lanes {
    pub(super) events: UnboundedSender<Event>,
    pub(super) answers: Arc<Answers>,
    fresh_count: usize,
    /// Whether `warm_pool` fills the pool (not with `PythonOptions::on_demand`); when not, a fresh
    /// lane starts with its first job.
    warm_fresh: bool,
    gate: Mutex<Gate>,
    gate_changed: Condvar,
    registry: Mutex<Registry>,
    /// Notified when a lane thread is done with Python.
    thread_done: Condvar,
}

#[derive(Default)]
pub(super) struct Registry {
    named: BTreeMap<String, Arc<SubLane>>,
    fresh: Vec<Option<Arc<SubLane>>>,
    /// Interpreters that were replaced (restart, stop, a fresh lane that could not be restored)
    /// and are ending on their threads.
    ending: Vec<Arc<SubLane>>,
    /// Lane threads that may still use Python.
    threads: usize,
    /// Interpreters that could not be ended (a thread of theirs would not stop).
    abandoned: usize,
    shutting_down: bool,
}

/// Answers `job` with an error (an `error` output for execute jobs, then `Finished`).
pub(crate) fn refuse(events: &UnboundedSender<Event>, job: &Job, ename: &str, evalue: &str) {
    for event in Event::refusal(job, ErrorContent::new(ename, evalue)) {
        let _ = events.send(event);
    }
}

impl Registry {
    /// Takes `sub` out of wherever it is listed.
    pub(super) fn remove(&mut self, sub: &Arc<SubLane>) {
        self.ending.retain(|other| !Arc::ptr_eq(other, sub));
        match &sub.lane {
            Lane::Named(name) => {
                if self.named.get(name).is_some_and(|current| Arc::ptr_eq(current, sub)) {
                    self.named.remove(name);
                }
            }
            Lane::Fresh(slot) => {
                if let Some(entry) = self.fresh.get_mut(*slot) {
                    if entry.as_ref().is_some_and(|current| Arc::ptr_eq(current, sub)) {
                        *entry = None;
                    }
                }
            }
            Lane::Main => {}
        }
    }
}

impl Lanes {
    pub(crate) fn new(
        events: UnboundedSender<Event>,
        answers: Arc<Answers>,
        fresh_count: usize,
        warm_fresh: bool,
    ) -> Lanes {
        Lanes {
            events,
            answers,
            fresh_count,
            warm_fresh,
            gate: Mutex::new(Gate::Starting),
            gate_changed: Condvar::new(),
            registry: Mutex::new(Registry {
                fresh: vec![None; fresh_count],
                ..Registry::default()
            }),
            thread_done: Condvar::new(),
        }
    }

    pub(super) fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock_unpoisoned()
    }

    fn lock_gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock_unpoisoned()
    }

    /// Python runs and the main interpreter imported what must come first: lanes may start.
    pub(crate) fn open(&self, main: InterpreterHandle) {
        *self.lock_gate() = Gate::Open(main);
        self.gate_changed.notify_all();
    }

    /// No lane may start from now on (the main lane failed, or Python is being finalized).
    pub(crate) fn close(&self, why: String) {
        *self.lock_gate() = Gate::Closed(why);
        self.gate_changed.notify_all();
    }

    pub(super) fn wait_gate(&self) -> Result<InterpreterHandle, String> {
        let mut gate = self.lock_gate();
        loop {
            match &*gate {
                Gate::Starting => {
                    gate = self
                        .gate_changed
                        .wait_unpoisoned(gate);
                }
                Gate::Open(main) => return Ok(*main),
                Gate::Closed(why) => return Err(why.clone()),
            }
        }
    }

    /// Starts `job` on a named or fresh lane, creating its interpreter if needed.
    pub(crate) fn run(self: &Arc<Self>, lane: &Lane, job: Job) {
        let mut registry = self.registry();
        if registry.shutting_down {
            drop(registry);
            refuse(&self.events, &job, "RuntimeError", "the kernel is shutting down");
            return;
        }
        let sub = match lane {
            Lane::Main => {
                drop(registry);
                refuse(&self.events, &job, "RuntimeError", "the main lane is not a subinterpreter lane");
                return;
            }
            Lane::Named(name) => {
                if let Some(sub) = registry.named.get(name) {
                    Arc::clone(sub)
                } else {
                    self.install(&mut registry, lane)
                }
            }
            Lane::Fresh(slot) => match registry.fresh.get(*slot) {
                Some(Some(sub)) => Arc::clone(sub),
                Some(None) => self.install(&mut registry, lane),
                None => {
                    drop(registry);
                    let evalue = format!(
                        "there is no fresh lane {slot}: the pool has {} (PARAKERNEL_FRESH_LANES)",
                        self.fresh_count
                    );
                    refuse(&self.events, &job, "RuntimeError", &evalue);
                    return;
                }
            },
        };
        sub.link().sent = Some(job.request());
        if let Err(mpsc::SendError(LaneCommand::Run(job))) = sub.inbox.send(LaneCommand::Run(job))
        {
            drop(registry);
            refuse(&self.events, &job, "RuntimeError", "the lane has stopped");
        }
    }

    /// Fills every empty slot of the fresh-lane pool; called when a lane is ready.
    ///
    /// Warming starts once the first subinterpreter lane of the session is ready, not with the
    /// kernel: a warm fresh lane costs about 18 MB of RSS and 100-150 ms of a core (measured on
    /// 3.13.0), which a notebook that never leaves the main lane should not pay. And not
    /// together with that first lane: on 2 cores, creating the pool at the same time made the
    /// first lane's first cell wait 230-650 ms instead of 110-170 ms.
    pub(super) fn warm_pool(self: &Arc<Self>) {
        if !self.warm_fresh {
            return;
        }
        let mut registry = self.registry();
        if registry.shutting_down {
            return;
        }
        for slot in 0..self.fresh_count {
            if registry.fresh[slot].is_none() {
                self.install(&mut registry, &Lane::Fresh(slot));
            }
        }
    }

    /// Starts the thread of a new interpreter for `lane` and makes it the lane's current one.
    fn install(self: &Arc<Self>, registry: &mut Registry, lane: &Lane) -> Arc<SubLane> {
        let sub = self.spawn(registry, lane.clone());
        match lane {
            Lane::Named(name) => {
                registry.named.insert(name.clone(), Arc::clone(&sub));
            }
            Lane::Fresh(slot) => registry.fresh[*slot] = Some(Arc::clone(&sub)),
            // `run` refuses the main lane; `warm_pool` and `end_lane` name fresh and named ones.
            Lane::Main => unreachable!("only subinterpreter lanes are installed"),
        }
        sub
    }

    /// Starts the thread of a new interpreter for `lane`.
    fn spawn(self: &Arc<Self>, registry: &mut Registry, lane: Lane) -> Arc<SubLane> {
        let (inbox, commands) = mpsc::channel();
        let sub = Arc::new(SubLane {
            state: Arc::new(LaneState::new(lane.clone(), self.events.clone())),
            lane,
            inbox,
            link: Mutex::new(Link::default()),
        });
        registry.threads += 1;
        let (lanes, thread_sub) = (Arc::clone(self), Arc::clone(&sub));
        let name = format!("pk-lane-{}", sub.lane.name());
        native::spawn_python_thread(&name, Some(native::PYTHON_STACK), move || {
            lane_thread(&lanes, &thread_sub, commands);
            lanes.forget(&thread_sub);
        });
        sub
    }

    /// The lane thread is done with Python: drop the lane from the registry if it is still
    /// there (it ended at shutdown) and count the thread out.
    pub(super) fn forget(&self, sub: &Arc<SubLane>) {
        let mut registry = self.registry();
        registry.remove(sub);
        registry.threads -= 1;
        self.thread_done.notify_all();
    }

    pub(super) fn record_abandoned(&self) {
        self.registry().abandoned += 1;
    }

    /// Every interpreter of `lane`: the current one first, then those being ended.
    fn interpreters_of(&self, lane: &Lane) -> Vec<Arc<SubLane>> {
        let registry = self.registry();
        let current = match lane {
            Lane::Main => None,
            Lane::Named(name) => registry.named.get(name).cloned(),
            Lane::Fresh(slot) => registry.fresh.get(*slot).cloned().flatten(),
        };
        current
            .into_iter()
            .chain(registry.ending.iter().filter(|sub| &sub.lane == lane).cloned())
            .collect()
    }

    fn all(&self) -> Vec<Arc<SubLane>> {
        let registry = self.registry();
        registry
            .named
            .values()
            .cloned()
            .chain(registry.fresh.iter().flatten().cloned())
            .chain(registry.ending.iter().cloned())
            .collect()
    }

    /// Hands the client's `input_reply` to the lane's waiting `input()`.
    pub(crate) fn input_reply(&self, lane: &Lane, value: String) -> bool {
        self.interpreters_of(lane)
            .first()
            .is_some_and(|sub| sub.state.reply_input(value))
    }

    /// Hands the kernel's answer to lane call `id`, to whichever interpreter of the lane made it.
    pub(crate) fn call_reply(&self, lane: &Lane, id: u64, reply: Result<Value, String>) -> bool {
        self.interpreters_of(lane)
            .into_iter()
            .find(|sub| sub.state.awaits_call(id))
            .is_some_and(|sub| sub.state.reply_call(id, reply))
    }

    /// Interrupts the running jobs of `lane` (every lane when `None`).
    pub(crate) fn interrupt(&self, lane: Option<&Lane>) {
        let subs = match lane {
            Some(lane) => self.interpreters_of(lane),
            None => self.all(),
        };
        for sub in subs {
            sub.interrupt();
        }
    }

    /// Answers `query` with the namespace of `lane`'s interpreter. Gives the query back when the
    /// lane has no running interpreter (the caller answers from the main lane).
    pub(crate) fn query(&self, lane: &Lane, request: RequestId, query: Query) -> Result<(), Query> {
        let Some(sub) = self.interpreters_of(lane).into_iter().next() else {
            return Err(query);
        };
        let link = sub.link();
        match (&link.queries, link.phase) {
            (Some(queries), Phase::Idle | Phase::Running(_)) => {
                if queries.send(ControlCommand::Query(request, query)).is_err() {
                    self.answers.unanswerable(request);
                }
                Ok(())
            }
            _ => Err(query),
        }
    }

    /// Ends the interpreter of a named lane (its running job is interrupted and still finishes);
    /// with `restart` a new interpreter starts at once.
    pub(crate) fn end_lane(self: &Arc<Self>, lane: &Lane, restart: bool) {
        let Lane::Named(name) = lane else {
            tracing::warn!(lane = lane.name(), "only named lanes can be ended or restarted");
            return;
        };
        let mut registry = self.registry();
        if registry.shutting_down {
            return;
        }
        if let Some(old) = registry.named.remove(name) {
            old.interrupt();
            let _ = old.inbox.send(LaneCommand::End);
            registry.ending.push(old);
        }
        if restart {
            self.install(&mut registry, lane);
        }
    }

    /// Interrupts every lane and asks each interpreter to end; no lane starts after this.
    pub(crate) fn shut_down(&self) {
        let subs = {
            let mut registry = self.registry();
            registry.shutting_down = true;
            drop(registry);
            self.all()
        };
        for sub in subs {
            sub.interrupt();
            let _ = sub.inbox.send(LaneCommand::End);
        }
    }

    /// Waits until every lane thread is done with Python, at most until `deadline`. True when
    /// every interpreter was ended (Python may then be finalized).
    pub(crate) fn wait_ended(&self, deadline: Instant) -> bool {
        let mut registry = self.registry();
        while registry.threads > 0 {
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    lanes = registry.threads,
                    "lanes did not end in time (a cell stuck in C code?)"
                );
                return false;
            }
            registry = self
                .thread_done
                .wait_timeout_unpoisoned(registry, deadline - now);
        }
        registry.abandoned == 0
    }

    /// A fresh lane whose restore cannot be trusted: a new interpreter takes its slot (before the
    /// job's `Finished` frees the slot, so nothing new reaches the old inbox; a job found there
    /// all the same moves to the new one). The old one then ends.
    pub(super) fn replace_fresh(self: &Arc<Self>, old: &Arc<SubLane>, slot: usize, commands: &Receiver<LaneCommand>) {
        let mut registry = self.registry();
        let current = registry.fresh[slot].as_ref().is_some_and(|sub| Arc::ptr_eq(sub, old));
        let new = (current && !registry.shutting_down).then(|| {
            registry.ending.push(Arc::clone(old));
            self.install(&mut registry, &Lane::Fresh(slot))
        });
        // Under the registry lock no more jobs reach the old inbox.
        while let Ok(command) = commands.try_recv() {
            if let LaneCommand::Run(job) = command {
                match &new {
                    Some(new) => {
                        new.link().sent = Some(job.request());
                        let _ = new.inbox.send(LaneCommand::Run(job));
                    }
                    None => refuse(&self.events, &job, "RuntimeError", "the kernel is shutting down"),
                }
            }
        }
    }
}

impl LaneBackend for Arc<Lanes> {
    fn run(&self, lane: &Lane, job: Job) {
        match super::embed::lanes_unavailable() {
            Some(why) => refuse(&self.events, &job, "RuntimeError", &why),
            None => Lanes::run(self, lane, job),
        }
    }

    fn query(&self, lane: &Lane, request: RequestId, query: Query) -> Result<(), Query> {
        // A fresh lane's namespace is empty by design.
        if matches!(lane, Lane::Fresh(_)) {
            return Err(query);
        }
        Lanes::query(self, lane, request, query)
    }

    fn input_reply(&self, lane: &Lane, value: String) -> bool {
        Lanes::input_reply(self, lane, value)
    }

    fn interrupt(&self, lane: Option<&Lane>) {
        Lanes::interrupt(self, lane);
    }

    fn call_reply(&self, lane: &Lane, id: u64, reply: Result<Value, String>) -> bool {
        Lanes::call_reply(self, lane, id, reply)
    }

    fn end_lane(&self, lane: &Lane, restart: bool) {
        Lanes::end_lane(self, lane, restart);
    }
}
