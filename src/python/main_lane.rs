//! The main lane: the main interpreter on the process's main thread, where Python handles
//! signals, so an interrupt is SIGINT as under ipykernel. What is particular to it is here: the
//! main thread and SIGINT ([`MainControl`]), the fd capture, initializing and finalizing Python,
//! and waiting for the other lanes at shutdown. Serving jobs and queries is the one lane runtime
//! (`runtime`).

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use crate::sync::LockExt;
use super::answers::Answers;
use super::backend::LaneBackend;
use super::capture::FdCapture;
use super::ffi::{Gil, InterpreterHandle};
use super::lane::LaneRuntime;
use super::lanes::{self, Lanes};
use super::runtime::{self, ControlCommand, LaneCommand, LaneKind};
use super::{embed, PythonError, PythonOptions, LANES_END_TIMEOUT, STOP_TIMEOUT};
use crate::lanes::{ErrorContent, Event, Job, Lane, Query, RequestId};
use crate::native::{self, LaneState};

/// Whether the main thread runs a job, and which thread that is: an interrupt sends SIGINT to
/// that thread only while a job runs.
#[derive(Default)]
pub(crate) struct MainControl {
    inner: Mutex<MainSignal>,
}

#[derive(Default)]
struct MainSignal {
    thread: Option<libc::pthread_t>,
    running: bool,
}

impl MainControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, MainSignal> {
        self.inner.lock_unpoisoned()
    }

    /// Marks a job as running, after clearing a SIGINT left over from the previous one (an
    /// interrupt that raced with its end), so it cannot hit this job.
    /// `gil` is the main thread's (see `MainLane::run`), where Python handles signals.
    fn begin(&self, gil: Gil<'_>) {
        let mut signal = self.lock();
        gil.clear_interrupt();
        signal.running = true;
    }

    fn end(&self) {
        self.lock().running = false;
    }

    /// From shutdown on, SIGINT is ignored: `jupyter_client` sends one (in `signal` interrupt mode)
    /// right before `shutdown_request`, and it must not raise in the shutdown's own Python code.
    fn ignore_interrupts(&self, gil: Gil<'_>) {
        let _signal = self.lock();
        // SAFETY: installing SIG_IGN for SIGINT is always valid; Python's handler is bypassed
        // from here on (finalization puts the original disposition back).
        unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
        gil.clear_interrupt();
    }

    /// Sends SIGINT to the main thread if it runs a job. Returns whether it did.
    fn interrupt(&self) -> bool {
        let signal = self.lock();
        match (signal.running, signal.thread) {
            (true, Some(thread)) => {
                // SAFETY: `thread` is the process's main thread, alive while the process is; the
                // lock keeps `running` true, so the signal lands in a running job.
                unsafe { libc::pthread_kill(thread, libc::SIGINT) == 0 }
            }
            _ => false,
        }
    }
}

/// The executor's side of the main lane.
pub(crate) struct MainBackend {
    pub(super) commands: Sender<LaneCommand>,
    pub(super) queries: Sender<ControlCommand>,
    pub(super) state: Arc<LaneState>,
    pub(super) control: Arc<MainControl>,
    pub(super) events: UnboundedSender<Event>,
    pub(super) answers: Arc<Answers>,
}

impl MainBackend {
    /// Interrupts the running job and tells the main lane to end once it is done.
    pub(super) fn shut_down(&self) {
        self.interrupt(None);
        let _ = self.commands.send(LaneCommand::End);
    }
}

impl LaneBackend for MainBackend {
    fn run(&self, _lane: &Lane, job: Job) {
        if let Err(mpsc::SendError(LaneCommand::Run(job))) = self.commands.send(LaneCommand::Run(job)) {
            lanes::refuse(&self.events, &job, "RuntimeError", "the main lane has stopped; restart the kernel");
        }
    }

    fn query(&self, _lane: &Lane, request: RequestId, query: Query) -> Result<(), Query> {
        if self.queries.send(ControlCommand::Query(request, query)).is_err() {
            self.answers.unanswerable(request);
        }
        Ok(())
    }

    fn input_reply(&self, _lane: &Lane, value: String) -> bool {
        self.state.reply_input(value)
    }

    fn interrupt(&self, _lane: Option<&Lane>) {
        // Signal first: a woken input() then finds SIGINT tripped and raises once.
        // Only the main thread's wait is woken, as SIGINT reaches only the main thread under
        // ipykernel: a thread a cell started, blocked in input(), is not interrupted.
        let signalled = self.control.interrupt();
        let woken = self.state.interrupt_lane_thread();
        tracing::debug!(signalled, woken, "interrupt of the main lane");
    }

    fn call_reply(&self, _lane: &Lane, id: u64, reply: Result<Value, String>) -> bool {
        self.state.reply_call(id, reply)
    }

    fn end_lane(&self, _lane: &Lane, _restart: bool) {
        tracing::warn!("the main lane cannot be ended or restarted on its own (restart the kernel)");
    }
}

/// The main lane, to be run on the process's main thread.
pub struct MainLane {
    pub(super) options: PythonOptions,
    /// Taken by the loop that serves them.
    pub(super) command_inbox: Option<Receiver<LaneCommand>>,
    pub(super) query_inbox: Option<Receiver<ControlCommand>>,
    pub(super) queries: Sender<ControlCommand>,
    pub(super) state: Arc<LaneState>,
    pub(super) control: Arc<MainControl>,
    pub(super) answers: Arc<Answers>,
    pub(super) lanes: Arc<Lanes>,
}

impl std::fmt::Debug for MainLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MainLane")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl MainLane {
    /// Initializes Python, loads the shell, serves jobs until [`Executor::shutdown`] (or until
    /// the executor is dropped), then finalizes Python and returns. Must run on the process's
    /// main thread.
    ///
    /// When Python or the shell cannot start, every job and query is answered with an error that
    /// says why (so a notebook shows it), until shutdown; then that error is returned.
    pub fn run(mut self) -> Result<(), PythonError> {
        // SAFETY: getpid and gettid only read the calling process's and thread's ids.
        let on_main_thread =
            unsafe { i64::from(libc::getpid()) == libc::syscall(libc::SYS_gettid) };
        if !on_main_thread {
            return Err(PythonError::NotMainThread);
        }
        // SAFETY: pthread_self only names the calling thread.
        self.control.lock().thread = Some(unsafe { libc::pthread_self() });
        let started = std::time::Instant::now();
        if let Err(error) = embed::initialize(self.options.python.as_deref()) {
            return Err(self.refuse_jobs(error));
        }
        // SAFETY: Py_InitializeFromConfig returned with this thread's (the main) thread state
        // attached; it stays attached for the rest of `run` except inside `Gil::detach`.
        let gil = unsafe { Gil::assume() };
        let state = Arc::clone(&self.state);
        // Kept until Python is finalized, so that output of atexit handlers reaches the kernel.
        let capture = FdCapture::start(Arc::clone(&state))
            .inspect_err(|error| {
                tracing::warn!("output to fds 1 and 2 will not reach cells: {error}");
            })
            .ok();
        let (result, finalize) = match self.serve(gil, started, capture.as_ref()) {
            Ok(finalize) => (Ok(()), finalize),
            Err(error) => (Err(gil.detach(|| self.refuse_jobs(error))), true),
        };
        if finalize {
            let finalizing = std::time::Instant::now();
            if !embed::finalize(gil) {
                tracing::warn!("Py_FinalizeEx reported an error");
            }
            tracing::debug!(elapsed = ?finalizing.elapsed(), "Python finalized");
            // Finalization put SIGINT back to its default action (end the process); the kernel
            // may still be sending its last messages.
            // SAFETY: installing SIG_IGN for SIGINT is always valid.
            unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
        } else {
            tracing::warn!(
                "threads started by cells are still running: exiting without finalizing Python"
            );
        }
        // Output written while Python finalized (atexit handlers, __del__).
        drop(capture);
        state.flush();
        result
    }

    /// Serves jobs until shutdown. Returns whether Python can be finalized without waiting for
    /// a thread that may never end.
    fn serve(
        &mut self,
        gil: Gil<'_>,
        started: std::time::Instant,
        capture: Option<&FdCapture>,
    ) -> Result<bool, PythonError> {
        embed::after_initialize(gil, self.options.python.as_deref())?;
        self.state.bind_lane_thread();
        let runtime = LaneRuntime::start(gil, Arc::clone(&self.state), self.options.on_demand)?;
        if let Some(ready) = self.options.on_main_ready {
            ready();
        }
        // Lanes may create their interpreters from now on (`_datetime` is imported in main).
        // Not before the main lane's shell is up: if it fails, Python is finalized at once and
        // no subinterpreter may exist then.
        self.lanes.open(InterpreterHandle::main(gil));
        tracing::info!(elapsed = ?started.elapsed(), "main lane ready");
        let query_inbox = self
            .query_inbox
            .take()
            .expect("the query inbox is taken once");
        // Interrupts reach the main lane as SIGINT, never through this thread.
        let query_thread = runtime::spawn_control_thread(
            "parakernel-query",
            InterpreterHandle::main(gil),
            Arc::clone(&self.answers),
            query_inbox,
            |_, _| false,
        );
        let commands = self
            .command_inbox
            .take()
            .expect("the command inbox is taken once");
        let kind = MainKind { control: &self.control, capture };
        runtime::serve(gil, &runtime, &self.state, &kind, commands);

        self.control.ignore_interrupts(gil);
        // Lanes end on their own threads while the main lane stops its own threads.
        let lanes_deadline = std::time::Instant::now() + LANES_END_TIMEOUT;
        self.lanes.shut_down();
        self.lanes.close("Python is shutting down".into());
        let query_stopped = runtime::stop_control_threads(gil, vec![(self.queries.clone(), query_thread)], STOP_TIMEOUT);
        if !query_stopped {
            tracing::warn!("the query thread did not stop in time");
        }
        let threads_done = runtime.stop(STOP_TIMEOUT.as_secs_f64());
        drop(runtime);
        // Ending a lane takes the main GIL for a moment (its thread state of main is deleted).
        let lanes = &self.lanes;
        let lanes_ended = gil.detach(|| lanes.wait_ended(lanes_deadline));
        tracing::debug!(query_stopped, threads_done, lanes_ended, "main lane stopped");
        Ok(query_stopped && threads_done && lanes_ended)
    }

    /// The main lane could not start: answer everything with `error` until shutdown.
    fn refuse_jobs(&mut self, error: PythonError) -> PythonError {
        let mut message = error.to_string();
        let mut cause = std::error::Error::source(&error);
        while let Some(inner) = cause {
            message = format!("{message}: {inner}");
            cause = inner.source();
        }
        tracing::error!("the main lane cannot run cells: {message}");
        self.lanes
            .close(format!("Python could not start, so no lane can run: {message}"));
        let mut traceback = vec![message.clone()];
        if let PythonError::Setup { exception, .. } = &error {
            traceback.extend(exception.traceback.iter().cloned());
        }
        let error_content = ErrorContent { ename: "ParakernelError".into(), evalue: message, traceback };
        if let Some(inbox) = self.query_inbox.take() {
            let (answers, reply) = (Arc::clone(&self.answers), error_content.reply());
            native::spawn_without_sigint("parakernel-query", move || {
                while let Ok(command) = inbox.recv() {
                    match command {
                        ControlCommand::Query(request, _) => answers.answer(request, reply.clone()),
                        ControlCommand::Interrupt(_) => {}
                        ControlCommand::Stop(_) => return,
                    }
                }
            });
        }
        if let Some(inbox) = self.command_inbox.take() {
            while let Ok(LaneCommand::Run(job)) = inbox.recv() {
                if let Job::Execute(execute) = &job {
                    self.state.set_request(execute.request);
                }
                for event in Event::refusal(&job, error_content.clone()) {
                    self.state.send(event);
                }
            }
        }
        let _ = self.queries.send(ControlCommand::Stop(mpsc::channel().0));
        error
    }
}

/// What the main lane does around each job: output still in the fd pipes belongs to the job
/// that wrote it (synced before and after), and SIGINT is armed for the job's duration only.
struct MainKind<'a> {
    control: &'a MainControl,
    capture: Option<&'a FdCapture>,
}

impl MainKind<'_> {
    fn sync(&self, gil: Gil<'_>) {
        if let Some(capture) = self.capture {
            gil.detach(|| capture.sync());
        }
    }
}

impl LaneKind for MainKind<'_> {
    fn begin(&self, gil: Gil<'_>, _job: &Job) -> Option<Vec<Event>> {
        // Text still in the pipes belongs to the request that ran last.
        self.sync(gil);
        self.control.begin(gil);
        None
    }

    fn end(&self, gil: Gil<'_>) {
        self.control.end();
        self.sync(gil);
    }
}
