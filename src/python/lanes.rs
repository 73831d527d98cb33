//! Subinterpreter lanes: named lanes and the warm pool of fresh lanes. Each interpreter is an
//! own-GIL subinterpreter that lives on its own thread from creation to end (a restart makes a
//! new interpreter on a new thread while the old one ends on its own), plus two control threads,
//! each with its own thread state of that interpreter: one raises interrupts in it, the other
//! answers queries with its namespace (so a slow completion never holds up an interrupt).
//!
//! Who owns what: [`Lanes`] (shared by the executor and the main lane) holds the current
//! interpreter of every lane and those being ended; a lane thread owns its interpreter
//! ([`OwnInterpreter`]) and its shell, and is the only one that creates or ends them; each control
//! thread owns one thread state of the interpreter and deletes it before the lane thread ends
//! the interpreter (`CPython` aborts otherwise: "not the last thread").

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use crate::sync::{CondvarExt, LockExt};
use super::answers::Answers;
use super::backend::LaneBackend;
use super::ffi::{AsyncException, Gil, InterpreterHandle, OwnInterpreter};
use super::lane::LaneRuntime;
use super::runtime::{self, ControlCommand, LaneCommand, LaneKind};
use crate::lanes::{ErrorContent, Event, Job, Lane, Query, RequestId};
use crate::native::{self, LaneState};

/// How long an ending interpreter's threads (those its cells started) get to stop after
/// `SystemExit` was raised in them, and how long its control threads get to let go of their
/// thread states. Past that the interpreter is left alive (and Python is not finalized).
const END_TIMEOUT: Duration = Duration::from_secs(1);

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
    events: UnboundedSender<Event>,
    answers: Arc<Answers>,
    fresh_count: usize,
    gate: Mutex<Gate>,
    gate_changed: Condvar,
    registry: Mutex<Registry>,
    /// Notified when a lane thread is done with Python.
    thread_done: Condvar,
}

#[derive(Default)]
struct Registry {
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

/// One subinterpreter of a lane, and the handles to its threads.
struct SubLane {
    lane: Lane,
    inbox: Sender<LaneCommand>,
    state: Arc<LaneState>,
    link: Mutex<Link>,
}

/// What the executor needs to reach a running interpreter; changed by the lane thread with the
/// interpreter's GIL held, so a control thread (holding that GIL) sees a stable value.
#[derive(Default)]
struct Link {
    phase: Phase,
    control: Option<Sender<ControlCommand>>,
    /// The thread that answers queries: a completion (seconds, the first time jedi loads)
    /// never holds up an interrupt.
    queries: Option<Sender<ControlCommand>>,
    /// The job sent to the lane and not started yet (the kernel sends one at a time).
    sent: Option<RequestId>,
    /// That job was interrupted before it started: it is answered `KeyboardInterrupt` instead
    /// of running (an interrupt while a new lane's interpreter starts is not lost).
    interrupted: Option<RequestId>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Starting,
    Idle,
    Running(RequestId),
    Ending,
}

/// Answers `job` with an error (an `error` output for execute jobs, then `Finished`).
pub(crate) fn refuse(events: &UnboundedSender<Event>, job: &Job, ename: &str, evalue: &str) {
    for event in Event::refusal(job, ErrorContent::new(ename, evalue)) {
        let _ = events.send(event);
    }
}

impl Registry {
    /// Takes `sub` out of wherever it is listed.
    fn remove(&mut self, sub: &Arc<SubLane>) {
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
    ) -> Lanes {
        Lanes {
            events,
            answers,
            fresh_count,
            gate: Mutex::new(Gate::Starting),
            gate_changed: Condvar::new(),
            registry: Mutex::new(Registry {
                fresh: vec![None; fresh_count],
                ..Registry::default()
            }),
            thread_done: Condvar::new(),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
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

    fn wait_gate(&self) -> Result<InterpreterHandle, String> {
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
    fn warm_pool(self: &Arc<Self>) {
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
    fn forget(&self, sub: &Arc<SubLane>) {
        let mut registry = self.registry();
        registry.remove(sub);
        registry.threads -= 1;
        self.thread_done.notify_all();
    }

    fn record_abandoned(&self) {
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
    fn replace_fresh(self: &Arc<Self>, old: &Arc<SubLane>, slot: usize, commands: &Receiver<LaneCommand>) {
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

impl SubLane {
    fn link(&self) -> MutexGuard<'_, Link> {
        self.link.lock_unpoisoned()
    }

    /// Asks the control thread to interrupt the running job, if there is one.
    fn interrupt(&self) {
        let mut link = self.link();
        if let (Phase::Running(request), Some(control)) = (link.phase, &link.control) {
            let _ = control.send(ControlCommand::Interrupt(request));
        } else {
            link.interrupted = link.sent;
        }
    }

    fn set_phase(&self, _gil: Gil<'_>, phase: Phase) {
        self.link().phase = phase;
    }

    /// Raises `KeyboardInterrupt` in the job for `request` if it still runs: wakes its wait, or
    /// raises asynchronously in the lane thread. With `gil` (this interpreter's, held by a
    /// control thread) the lane thread runs no Python: its phase and its waits cannot change.
    fn interrupt_running(&self, gil: Gil<'_>, request: RequestId) -> bool {
        if self.link().phase != Phase::Running(request) {
            return false;
        }
        if self.state.interrupt_lane_thread() {
            return true;
        }
        self.state.lane_thread().is_some_and(|thread| gil.set_async_exc(thread, AsyncException::KeyboardInterrupt))
    }
}

/// The body of a lane thread: creates the interpreter, serves jobs until told to end, ends it.
fn lane_thread(lanes: &Arc<Lanes>, sub: &Arc<SubLane>, commands: Receiver<LaneCommand>) {
    let main = match lanes.wait_gate() {
        Ok(main) => main,
        Err(why) => return refuse_all(lanes, sub, &commands, &why),
    };
    sub.state.bind_lane_thread();
    let started = Instant::now();
    // SAFETY: the gate is open, so Python runs and `main` is the main interpreter, which is not
    // finalized while this thread is counted in `Registry::threads`; no thread state is attached
    // to this new thread.
    let interpreter = match unsafe { OwnInterpreter::create(main) } {
        Ok(interpreter) => interpreter,
        Err(why) => {
            let why = format!("could not create the lane's interpreter: {why}");
            tracing::error!(lane = sub.lane.name(), "{why}");
            return refuse_all(lanes, sub, &commands, &why);
        }
    };
    tracing::debug!(lane = sub.lane.name(), elapsed = ?started.elapsed(), "interpreter created");
    // SAFETY: `create` returned with the new interpreter's thread state attached to this thread;
    // it stays attached (except inside `Gil::detach`) until `end` or `abandon` below, after
    // `serve` returned and dropped every object of the interpreter.
    let gil = unsafe { Gil::assume() };
    let ended = serve(lanes, sub, gil, interpreter.handle(), commands, started);
    if ended {
        // SAFETY: attached (above); `serve` stopped the control threads (their thread states are
        // deleted) and every thread the cells started, and dropped the shell's objects.
        unsafe { interpreter.end() };
        give_back_memory();
    } else {
        tracing::warn!(
            lane = sub.lane.name(),
            "a thread of the lane would not stop: its interpreter is left running"
        );
        lanes.record_abandoned();
        // SAFETY: attached (above); `serve` dropped the shell's objects.
        unsafe { interpreter.abandon() };
    }
    tracing::debug!(lane = sub.lane.name(), ended, "lane ended");
}

/// Returns the free memory of the C heap to the system after an interpreter ended: glibc keeps
/// what a thread freed in that thread's arena, and trims an arena's top only, so what the ended
/// interpreter used (its objects, if Python's allocator is malloc, and every buffer of its
/// extension modules) stayed counted in the kernel's RSS. Runs with no thread state attached.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only takes glibc's arena locks; no Python is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Answers every job sent to this lane with `why` (the lane cannot run). The lane leaves the
/// registry first, so the next job for it tries again with a new interpreter, and no job is
/// sent to this one after the inbox is drained.
fn refuse_all(lanes: &Lanes, sub: &Arc<SubLane>, commands: &Receiver<LaneCommand>, why: &str) {
    let mut registry = lanes.registry();
    registry.remove(sub);
    while let Ok(command) = commands.try_recv() {
        if let LaneCommand::Run(job) = command {
            refuse(&lanes.events, &job, "RuntimeError", why);
        }
    }
}

/// Starts the shell and the control threads, serves jobs, then stops them. Returns whether the
/// interpreter may be ended (nothing of it runs any more).
fn serve(
    lanes: &Arc<Lanes>,
    sub: &Arc<SubLane>,
    gil: Gil<'_>,
    interpreter: InterpreterHandle,
    commands: Receiver<LaneCommand>,
    started: Instant,
) -> bool {
    let runtime = match LaneRuntime::start(gil, Arc::clone(&sub.state)) {
        Ok(runtime) => runtime,
        Err(error) => {
            let mut why = format!("the lane could not start: {error}");
            if let super::PythonError::Setup { exception, .. } = &error {
                why = format!("{why}: {exception}\n{}", exception.traceback.concat());
            }
            tracing::error!(lane = sub.lane.name(), "{why}");
            gil.detach(move || refuse_all(lanes, sub, &commands, &why));
            return true;
        }
    };
    tracing::debug!(lane = sub.lane.name(), elapsed = ?started.elapsed(), "lane ready");
    let spawn_control = |role: &str| {
        let (sender, inbox) = mpsc::channel();
        let interrupted = Arc::clone(sub);
        let thread = runtime::spawn_control_thread(
            &format!("pk-{role}-{}", sub.lane.name()),
            interpreter,
            Arc::clone(&lanes.answers),
            inbox,
            move |gil, request| interrupted.interrupt_running(gil, request),
        );
        (sender, thread)
    };
    let controls = vec![spawn_control("ctl"), spawn_control("query")];
    {
        let mut link = sub.link();
        link.control = Some(controls[0].0.clone());
        link.queries = Some(controls[1].0.clone());
        link.phase = Phase::Idle;
    }
    gil.detach(|| lanes.warm_pool());

    runtime::serve(gil, &runtime, &sub.state, &SubKind { lanes, sub }, commands);

    sub.set_phase(gil, Phase::Ending);
    {
        let mut link = sub.link();
        link.control = None;
        link.queries = None;
    }
    // Both control threads delete their thread states before the interpreter may end.
    let control_stopped = runtime::stop_control_threads(gil, controls, END_TIMEOUT);
    let threads_stopped = runtime.end_threads(END_TIMEOUT.as_secs_f64());
    drop(runtime);
    control_stopped && threads_stopped
}

/// What a subinterpreter lane does around each job: the phase its control thread reads (an
/// interrupt raises only in the job it was meant for), an interrupt that came before the job
/// started, and a fresh lane's restore.
struct SubKind<'a> {
    lanes: &'a Arc<Lanes>,
    sub: &'a Arc<SubLane>,
}

impl LaneKind for SubKind<'_> {
    fn begin(&self, gil: Gil<'_>, job: &Job) -> Option<Vec<Event>> {
        let request = job.request();
        let interrupted = {
            let mut link = self.sub.link();
            link.sent = None;
            link.phase = Phase::Running(request);
            link.interrupted.take() == Some(request)
        };
        if !interrupted {
            return None;
        }
        self.sub.set_phase(gil, Phase::Idle);
        Some(Event::refusal(job, ErrorContent::new("KeyboardInterrupt", "interrupted before the cell started")))
    }

    fn end(&self, gil: Gil<'_>) {
        self.sub.set_phase(gil, Phase::Idle);
        // An interrupt that reached the lane as the job ended must not hit what runs next. The
        // control thread raises only while holding this GIL and seeing `Running(request)`.
        if let Some(thread) = self.sub.state.lane_thread() {
            gil.set_async_exc(thread, AsyncException::Clear);
        }
    }

    /// A fresh lane is restored before its job is finished: what the restore prints (`__del__`
    /// of the cell's objects) is still the cell's output, published before its idle. The kernel
    /// sends the slot nothing new before this `Finished`.
    fn after(&self, gil: Gil<'_>, runtime: &LaneRuntime<'_>, commands: Receiver<LaneCommand>) -> Option<Receiver<LaneCommand>> {
        let Lane::Fresh(slot) = self.sub.lane else { return Some(commands) };
        let restored = Instant::now();
        let trusted = runtime.restore();
        tracing::trace!(slot, elapsed = ?restored.elapsed(), trusted, "fresh lane restored");
        if trusted {
            return Some(commands);
        }
        let (lanes, sub) = (self.lanes, self.sub);
        gil.detach(move || lanes.replace_fresh(sub, slot, &commands));
        None
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
