//! One subinterpreter of a lane: the thread that creates it, serves its jobs through the one
//! lane runtime and ends it, its two control threads (interrupts; queries), and what it does
//! around each job ([`SubKind`]). The registry of every lane's interpreters is `lanes`.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::ffi::{AsyncException, Gil, InterpreterHandle, OwnInterpreter};
use super::lane::LaneRuntime;
use super::lanes::{refuse, Lanes, END_TIMEOUT};
use super::runtime::{self, ControlCommand, LaneCommand, LaneKind};
use crate::lanes::{ErrorContent, Event, Job, Lane, RequestId};
use crate::native::LaneState;
use crate::sync::LockExt;

/// One subinterpreter of a lane, and the handles to its threads.
pub(super) struct SubLane {
    pub(super) lane: Lane,
    pub(super) inbox: Sender<LaneCommand>,
    pub(super) state: Arc<LaneState>,
    pub(super) link: Mutex<Link>,
}

/// What the executor needs to reach a running interpreter; changed by the lane thread with the
/// interpreter's GIL held, so a control thread (holding that GIL) sees a stable value.
#[derive(Default)]
pub(super) struct Link {
    pub(super) phase: Phase,
    pub(super) control: Option<Sender<ControlCommand>>,
    /// The thread that answers queries: a completion (seconds, the first time jedi loads)
    /// never holds up an interrupt.
    pub(super) queries: Option<Sender<ControlCommand>>,
    /// The job sent to the lane and not started yet (the kernel sends one at a time).
    pub(super) sent: Option<RequestId>,
    /// That job was interrupted before it started: it is answered `KeyboardInterrupt` instead
    /// of running (an interrupt while a new lane's interpreter starts is not lost).
    pub(super) interrupted: Option<RequestId>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    #[default]
    Starting,
    Idle,
    Running(RequestId),
    Ending,
}

impl SubLane {
    pub(super) fn link(&self) -> MutexGuard<'_, Link> {
        self.link.lock_unpoisoned()
    }

    /// Asks the control thread to interrupt the running job, if there is one.
    pub(super) fn interrupt(&self) {
        let mut link = self.link();
        if let (Phase::Running(request), Some(control)) = (link.phase, &link.control) {
            let _ = control.send(ControlCommand::Interrupt(request));
        } else {
            link.interrupted = link.sent;
        }
    }

    pub(super) fn set_phase(&self, _gil: Gil<'_>, phase: Phase) {
        self.link().phase = phase;
    }

    /// Raises `KeyboardInterrupt` in the job for `request` if it still runs: wakes its wait, or
    /// raises asynchronously in the lane thread. With `gil` (this interpreter's, held by a
    /// control thread) the lane thread runs no Python: its phase and its waits cannot change.
    pub(super) fn interrupt_running(&self, gil: Gil<'_>, request: RequestId) -> bool {
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
pub(super) fn lane_thread(lanes: &Arc<Lanes>, sub: &Arc<SubLane>, commands: Receiver<LaneCommand>) {
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
    let runtime = match LaneRuntime::start(gil, Arc::clone(&sub.state), false) {
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

