//! One lane runtime for every kind of lane: the serve loop that takes jobs off a lane's inbox
//! and runs them on the lane thread, the job runner around the shell, and the control thread
//! (interrupts and queries, each control thread with its own thread state of the lane's
//! interpreter). What differs between the main lane and a subinterpreter lane is a small
//! [`LaneKind`]: how a job is bracketed (SIGINT and fd capture for the main lane; the phase the
//! control thread reads for a subinterpreter) and what follows it (a fresh lane's restore).

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::answers::Answers;
use super::ffi::{Gil, InterpreterHandle, ThreadState};
use super::lane::{self, LaneRuntime};
use crate::lanes::{Event, Job, Query, RequestId};
use crate::native::{self, LaneState};

/// What a lane's inbox carries.
pub(crate) enum LaneCommand {
    Run(Job),
    /// Serve no more jobs: the lane ends (restart, stop, shutdown).
    End,
}

/// What a control thread does with its own thread state of the lane's interpreter.
pub(crate) enum ControlCommand {
    /// Interrupt the job for `RequestId` if it still runs.
    Interrupt(RequestId),
    Query(RequestId, Query),
    /// Delete the thread state, report, exit.
    Stop(Sender<()>),
}

/// What one kind of lane does around each job, on the lane thread with its GIL held.
pub(crate) trait LaneKind {
    /// Before the job runs. Events returned instead answer the job without running it (the
    /// last one its `Finished`).
    fn begin(&self, gil: Gil<'_>, job: &Job) -> Option<Vec<Event>>;
    /// After the job ran (its reply is built, not yet sent).
    fn end(&self, gil: Gil<'_>);
    /// Once the job is done and before its `Finished` is sent (what runs here is still the
    /// job's output). Gives the inbox back to go on serving; `None` ends the lane.
    fn after(&self, _gil: Gil<'_>, _runtime: &LaneRuntime<'_>, commands: Receiver<LaneCommand>) -> Option<Receiver<LaneCommand>> {
        Some(commands)
    }
}

/// Serves the lane's jobs until it is told to end (or its inbox closes): each job runs in
/// turn, its `Finished` sent when it is done.
pub(crate) fn serve(gil: Gil<'_>, runtime: &LaneRuntime<'_>, state: &LaneState, kind: &impl LaneKind, mut commands: Receiver<LaneCommand>) {
    loop {
        // The inbox moves into the detached closure and back: a `&Receiver` is not `Send`.
        let (command, inbox) = gil.detach(move || (commands.recv(), commands));
        let job = match command {
            Ok(LaneCommand::Run(job)) => job,
            Ok(LaneCommand::End) | Err(_) => return,
        };
        let finished = run_job(gil, runtime, state, kind, &job);
        let next = kind.after(gil, runtime, inbox);
        state.send(finished);
        match next {
            Some(inbox) => commands = inbox,
            None => return,
        }
    }
}

/// Runs one job on the lane thread; returns its `Finished`, for the caller to send (events the
/// job published are sent already).
fn run_job(gil: Gil<'_>, runtime: &LaneRuntime<'_>, state: &LaneState, kind: &impl LaneKind, job: &Job) -> Event {
    let request = job.request();
    let answered = kind.begin(gil, job);
    state.set_request(request);
    if let Some(mut events) = answered {
        let finished = events.pop().expect("a refusal ends with Finished");
        for event in events {
            state.send(event);
        }
        return finished;
    }
    let reply = runtime.run(job);
    kind.end(gil);
    Event::Finished { request, reply }
}

/// Starts a control thread of the interpreter: it creates its own thread state, then answers
/// queries and carries out interrupts (`interrupt`, called with this thread's GIL of the lane)
/// until told to stop.
pub(crate) fn spawn_control_thread(
    name: &str,
    interpreter: InterpreterHandle,
    answers: std::sync::Arc<Answers>,
    inbox: Receiver<ControlCommand>,
    interrupt: impl Fn(Gil<'_>, RequestId) -> bool + Send + 'static,
) -> JoinHandle<()> {
    let thread_name = name.to_owned();
    native::spawn_python_thread(name, Some(native::PYTHON_STACK), move || {
        // SAFETY: the lane ends (or finalizes) the interpreter only after this thread reported
        // (through `Stop`) that its thread state is deleted, or never.
        let Some(thread_state) = (unsafe { ThreadState::new(interpreter) }) else {
            tracing::error!(thread = thread_name, "could not create the control thread's thread state");
            return;
        };
        while let Ok(command) = inbox.recv() {
            match command {
                ControlCommand::Interrupt(request) => {
                    let asked = Instant::now();
                    let raised = thread_state.with(|gil| interrupt(gil, request));
                    tracing::debug!(thread = thread_name, request, raised, elapsed = ?asked.elapsed(), "interrupted");
                }
                ControlCommand::Query(request, query) => {
                    let reply = thread_state.with(|gil| lane::answer(gil, &query));
                    answers.answer(request, reply);
                }
                ControlCommand::Stop(done) => {
                    thread_state.delete();
                    let _ = done.send(());
                    return;
                }
            }
        }
        thread_state.delete();
    })
}

/// Stops control threads: each deletes its thread state (the interpreter may then end) and
/// exits. Returns false when one did not within `timeout` (the interpreter must then be left
/// alive). The caller's GIL is released while it waits.
pub(crate) fn stop_control_threads(gil: Gil<'_>, controls: Vec<(Sender<ControlCommand>, JoinHandle<()>)>, timeout: Duration) -> bool {
    // A thread that already left drops its `Stop` (and its sender) unanswered: Disconnected.
    let (stopped, stopped_inbox) = mpsc::channel();
    let mut threads = Vec::new();
    for (sender, thread) in controls {
        let _ = sender.send(ControlCommand::Stop(stopped.clone()));
        threads.push(thread);
    }
    drop(stopped);
    gil.detach(move || {
        let deadline = Instant::now() + timeout;
        for _ in 0..threads.len() {
            match stopped_inbox.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(()) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
        for thread in threads {
            let _ = thread.join();
        }
        true
    })
}
