//! Embeds Python (`libpython`) and runs lanes; answers the [`Executor`] contract. All FFI outside `native`
//! lives here. Never blocks the tokio runtime: every executor method only hands work to a lane
//! thread.
//!
//! Threads: the main lane runs on the process's main thread ([`MainLane::run`]), so that SIGINT
//! and `signal` work in cells as under ipykernel. Queries (completion, inspection, ...) are
//! answered by a second thread with its own thread state of the main interpreter, which gets the
//! GIL between the bytecodes of a busy cell. Subinterpreter lanes (named and fresh) each have a
//! thread of their own and two control threads (see `lanes`).
//!
//! Output written to file descriptors 1 and 2 (subprocesses, C `printf`) is process-wide: it is
//! captured for the main lane and shown with the main lane's current (or last) cell, also when a
//! subinterpreter lane wrote it.

mod answers;
mod capture;
mod embed;
mod ffi;
mod lane;
mod lanes;

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;

pub use embed::configure_allocator_environment;
pub use ffi::PythonException;

use crate::kernel::executor::{Event, Executor, InterruptTarget, Job, Lane, Query, RequestId};
use crate::native::{self, LaneState};
use answers::Answers;
use capture::FdCapture;
use ffi::{Gil, InterpreterHandle, ThreadState};
use lane::LaneRuntime;
use lanes::Lanes;

/// How long shutdown waits for the threads cells started, and for the query thread, before it
/// gives up on finalizing Python (the process then exits without `Py_FinalizeEx`).
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long shutdown waits for subinterpreter lanes to end (they were interrupted and told to
/// end when shutdown began); a lane stuck in C code is left behind, and Python not finalized.
const LANES_END_TIMEOUT: Duration = Duration::from_millis(1500);

/// The size of the fresh-lane pool: `PARAKERNEL_FRESH_LANES`, else the number of cores (at
/// least 2); 0 when subinterpreter lanes are unavailable.
fn fresh_lane_count() -> usize {
    if embed::lanes_unavailable().is_some() {
        return 0;
    }
    if let Ok(text) = std::env::var("PARAKERNEL_FRESH_LANES") {
        match text.trim().parse::<usize>() {
            Ok(count) if count >= 1 => return count,
            _ => tracing::warn!(
                "PARAKERNEL_FRESH_LANES={text:?} is not a number of lanes (1 or more): ignored"
            ),
        }
    }
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get).max(2)
}

/// How to start Python.
#[derive(Debug, Clone, Default)]
pub struct PythonOptions {
    /// The environment's `python` executable from the kernelspec (`--python`); `None` runs the
    /// interpreter parakernel was built against, without a virtual environment.
    pub python: Option<PathBuf>,
}

#[derive(thiserror::Error, Debug)]
pub enum PythonError {
    #[error("cannot use the Python at {}", path.display())]
    Executable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot tell the version of the Python at {}: {detail}", path.display())]
    VersionUnknown { path: PathBuf, detail: String },
    #[error(
        "{} is Python {found}, but parakernel embeds Python {embedded}: create the environment \
         with Python {embedded}, or rebuild parakernel against this Python (`make clean-venv && \
         PARAKERNEL_PYTHON=/path/to/it make setup`)",
        path.display()
    )]
    VersionMismatch {
        path: PathBuf,
        found: String,
        embedded: String,
    },
    #[error(
        "MainLane::run must be called on the process's main thread (SIGINT is delivered there)"
    )]
    NotMainThread,
    #[error("initializing Python failed: {0}")]
    Initialize(String),
    #[error(
        "Python started from {} runs in {} instead of its environment {}",
        python.display(), found.display(), expected.display()
    )]
    WrongEnvironment {
        python: PathBuf,
        expected: PathBuf,
        found: PathBuf,
    },
    #[error("setting up the main lane failed: {context}")]
    Setup {
        context: &'static str,
        #[source]
        exception: PythonException,
    },
}

/// `language_info` for `kernel_info_reply`; needs no running Python.
pub fn language_info() -> Value {
    json!({
        "name": "python",
        "version": embed::version(),
        "mimetype": "text/x-python",
        "codemirror_mode": { "name": "ipython", "version": 3 },
        "pygments_lexer": "ipython3",
        "nbconvert_exporter": "python",
        "file_extension": ".py",
    })
}

/// The banner for `kernel_info_reply`; needs no running Python.
pub fn banner() -> String {
    format!(
        "Python {}\nType 'copyright', 'credits' or 'license' for more information\n\
         IPython -- An enhanced Interactive Python. Type '?' for help.\n\
         parakernel {} -- cells run in lanes; tag a cell `lane:NAME` or start it with %%lane NAME.\n",
        embed::full_version(),
        env!("CARGO_PKG_VERSION"),
    )
}

/// Checks `options` and prepares the main lane. The returned [`MainLane`] must be run on the
/// process's main thread; the executor may be used at once (work waits until Python is ready).
pub fn start(
    options: PythonOptions,
    events: UnboundedSender<Event>,
) -> Result<(PythonExecutor, MainLane), PythonError> {
    // Format the version strings now, before any interpreter exists (see `embed::versions`).
    let _ = (embed::version(), embed::full_version());
    if let Some(python) = &options.python {
        embed::check_version(python)?;
    }
    let (commands, command_inbox) = mpsc::channel();
    let (queries, query_inbox) = mpsc::channel();
    let state = Arc::new(LaneState::new(Lane::Main, events.clone()));
    let control = Arc::new(MainControl::default());
    let answers = Answers::start(events.clone());
    let fresh_lanes = fresh_lane_count();
    let lanes = Arc::new(Lanes::new(events.clone(), Arc::clone(&answers), fresh_lanes));
    let executor = PythonExecutor {
        commands,
        queries: queries.clone(),
        state: Arc::clone(&state),
        control: Arc::clone(&control),
        events,
        answers: Arc::clone(&answers),
        lanes: Arc::clone(&lanes),
        fresh_lanes,
    };
    let main_lane = MainLane {
        options,
        command_inbox: Some(command_inbox),
        query_inbox: Some(query_inbox),
        queries,
        state,
        control,
        answers,
        lanes,
    };
    Ok((executor, main_lane))
}

enum Command {
    Run(Job),
    Shutdown,
}

enum QueryCommand {
    Answer(RequestId, Query),
    Stop,
}

/// Whether the main thread runs a job, and which thread that is: an interrupt sends SIGINT to
/// that thread only while a job runs.
#[derive(Default)]
struct MainControl {
    inner: Mutex<MainSignal>,
}

#[derive(Default)]
struct MainSignal {
    thread: Option<libc::pthread_t>,
    running: bool,
}

impl MainControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, MainSignal> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
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

/// The executor handed to the kernel. Every method returns at once.
pub struct PythonExecutor {
    commands: Sender<Command>,
    queries: Sender<QueryCommand>,
    /// The main lane's.
    state: Arc<LaneState>,
    control: Arc<MainControl>,
    events: UnboundedSender<Event>,
    answers: Arc<Answers>,
    lanes: Arc<Lanes>,
    fresh_lanes: usize,
}

impl std::fmt::Debug for PythonExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PythonExecutor").finish_non_exhaustive()
    }
}

impl PythonExecutor {
    fn query_main(&self, request: RequestId, query: Query) {
        self.answers.expect(request, &query, self.state.is_busy());
        if let Err(mpsc::SendError(QueryCommand::Answer(request, _))) =
            self.queries.send(QueryCommand::Answer(request, query))
        {
            let reply = json!({
                "status": "error", "ename": "RuntimeError",
                "evalue": "the main lane has stopped", "traceback": [],
            });
            self.answers.answer(request, reply);
        }
    }

    fn interrupt_main(&self) {
        // Signal first: a woken input() then finds SIGINT tripped and raises once.
        // Only the main thread's wait is woken, as SIGINT reaches only the main thread under
        // ipykernel: a thread a cell started, blocked in input(), is not interrupted.
        let signalled = self.control.interrupt();
        let woken = self.state.interrupt_lane_thread();
        tracing::debug!(signalled, woken, "interrupt of the main lane");
    }
}

impl Executor for PythonExecutor {
    fn run(&mut self, lane: &Lane, job: Job) {
        match lane {
            Lane::Main => {
                if let Err(mpsc::SendError(Command::Run(job))) =
                    self.commands.send(Command::Run(job))
                {
                    let why = "the main lane has stopped; restart the kernel";
                    lanes::refuse(&self.events, &job, "RuntimeError", why);
                }
            }
            Lane::Named(_) | Lane::Fresh(_) => {
                if let Some(why) = self.lanes_unavailable() {
                    lanes::refuse(&self.events, &job, "RuntimeError", &why);
                } else {
                    self.lanes.run(lane, job);
                }
            }
        }
    }

    fn query(&mut self, lane: &Lane, request: RequestId, query: Query) {
        match lane {
            // A fresh lane's namespace is empty by design; the main lane's is what the cell's
            // author sees.
            Lane::Main | Lane::Fresh(_) => self.query_main(request, query),
            Lane::Named(_) => {
                // A lane that does not run (yet): answer from the main lane.
                if let Err(query) = self.lanes.query(lane, request, query) {
                    self.query_main(request, query);
                }
            }
        }
    }

    fn input_reply(&mut self, lane: &Lane, value: String) {
        let delivered = match lane {
            Lane::Main => self.state.reply_input(value),
            Lane::Named(_) | Lane::Fresh(_) => self.lanes.input_reply(lane, value),
        };
        if !delivered {
            tracing::warn!(
                lane = lane.name(),
                "input_reply for a lane that is not waiting for input: dropped"
            );
        }
    }

    fn interrupt(&mut self, target: &InterruptTarget) {
        match target {
            InterruptTarget::All => {
                self.interrupt_main();
                self.lanes.interrupt(None);
            }
            InterruptTarget::Lane(Lane::Main) => self.interrupt_main(),
            InterruptTarget::Lane(lane) => self.lanes.interrupt(Some(lane)),
        }
    }

    fn call_reply(&mut self, lane: &Lane, id: u64, reply: Result<Value, String>) {
        let delivered = match lane {
            Lane::Main => self.state.reply_call(id, reply),
            Lane::Named(_) | Lane::Fresh(_) => self.lanes.call_reply(lane, id, reply),
        };
        if !delivered {
            tracing::debug!(lane = lane.name(), id, "no lane waits for this call (interrupted?): dropped");
        }
    }

    fn end_lane(&mut self, lane: &Lane, restart: bool) {
        self.lanes.end_lane(lane, restart);
    }

    fn fresh_lanes(&self) -> usize {
        self.fresh_lanes
    }

    fn lanes_unavailable(&self) -> Option<String> {
        embed::lanes_unavailable()
    }

    fn shutdown(&mut self) {
        self.interrupt_main();
        self.lanes.shut_down();
        let _ = self.commands.send(Command::Shutdown);
    }
}

/// The main lane, to be run on the process's main thread.
pub struct MainLane {
    options: PythonOptions,
    /// Taken by the loop that serves them.
    command_inbox: Option<Receiver<Command>>,
    query_inbox: Option<Receiver<QueryCommand>>,
    queries: Sender<QueryCommand>,
    state: Arc<LaneState>,
    control: Arc<MainControl>,
    answers: Arc<Answers>,
    lanes: Arc<Lanes>,
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
        let runtime = LaneRuntime::start(gil, Arc::clone(&self.state))?;
        // Lanes may create their interpreters from now on (`_datetime` is imported in main).
        // Not before the main lane's shell is up: if it fails, Python is finalized at once and
        // no subinterpreter may exist then.
        self.lanes.open(InterpreterHandle::main(gil));
        tracing::info!(elapsed = ?started.elapsed(), "main lane ready");
        let query_inbox = self
            .query_inbox
            .take()
            .expect("the query inbox is taken once");
        let (query_thread, query_done) = spawn_query_thread(
            InterpreterHandle::main(gil),
            query_inbox,
            Arc::clone(&self.answers),
        );

        let mut commands = self
            .command_inbox
            .take()
            .expect("the command inbox is taken once");
        loop {
            // The inbox moves into the detached closure and back: a `&Receiver` is not `Send`.
            let (command, inbox) = gil.detach(move || (commands.recv(), commands));
            commands = inbox;
            match command {
                Ok(Command::Run(job)) => {
                    run_job(&runtime, &self.state, &self.control, capture, gil, &job);
                }
                Ok(Command::Shutdown) | Err(_) => break,
            }
        }

        self.control.ignore_interrupts(gil);
        // Lanes end on their own threads while the main lane stops its own threads.
        let lanes_deadline = std::time::Instant::now() + LANES_END_TIMEOUT;
        self.lanes.shut_down();
        self.lanes.close("Python is shutting down".into());
        let _ = self.queries.send(QueryCommand::Stop);
        let query_stopped = gil.detach(move || match query_done.recv_timeout(STOP_TIMEOUT) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) => false,
        });
        if query_stopped {
            let _ = query_thread.join();
        } else {
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
        let reply = json!({
            "status": "error", "ename": "ParakernelError", "evalue": message, "traceback": traceback,
        });
        if let Some(inbox) = self.query_inbox.take() {
            let (answers, reply) = (Arc::clone(&self.answers), reply.clone());
            native::spawn_without_sigint("parakernel-query", move || {
                while let Ok(QueryCommand::Answer(request, _)) = inbox.recv() {
                    answers.answer(request, reply.clone());
                }
            });
        }
        if let Some(inbox) = self.command_inbox.take() {
            while let Ok(Command::Run(job)) = inbox.recv() {
                let reply = match &job {
                    Job::Execute(execute) => {
                        let mut reply = reply.clone();
                        reply["execution_count"] = json!(execute.execution_count);
                        reply["user_expressions"] = json!({});
                        reply["payload"] = json!([]);
                        self.state.set_request(execute.request);
                        self.state.send(Event::Publish {
                            request: Some(execute.request),
                            msg_type: "error".into(),
                            content: json!({ "ename": reply["ename"], "evalue": reply["evalue"], "traceback": reply["traceback"] }),
                            metadata: serde_json::Map::new(),
                            buffers: Vec::new(),
                        });
                        Some(reply)
                    }
                    Job::Comm { .. } => None,
                };
                self.state.send(Event::Finished {
                    request: job.request(),
                    reply,
                });
            }
        }
        let _ = self.queries.send(QueryCommand::Stop);
        error
    }
}

fn run_job(
    runtime: &LaneRuntime<'_>,
    state: &LaneState,
    control: &MainControl,
    capture: Option<&FdCapture>,
    gil: Gil<'_>,
    job: &Job,
) {
    let request = job.request();
    // Text still in the pipes belongs to the request that ran last.
    let sync = || {
        if let Some(capture) = capture {
            gil.detach(|| capture.sync());
        }
    };
    sync();
    state.set_request(request);
    control.begin(gil);
    let reply = runtime.run(job);
    control.end();
    sync();
    state.send(Event::Finished { request, reply });
}

/// Starts the thread that answers queries with its own thread state of the main interpreter.
/// The returned receiver reports when that thread state is deleted.
fn spawn_query_thread(
    interpreter: InterpreterHandle,
    inbox: Receiver<QueryCommand>,
    answers: Arc<Answers>,
) -> (JoinHandle<()>, Receiver<()>) {
    let (done, done_inbox) = mpsc::channel();
    let stack = Some(native::PYTHON_STACK);
    let thread = native::spawn_python_thread("parakernel-query", stack, move || {
        // SAFETY: the main interpreter lives until `run` finalizes it, which happens only after
        // this thread reported (through `done`) that its thread state is deleted.
        let Some(thread_state) = (unsafe { ThreadState::new(interpreter) }) else {
            tracing::error!("could not create a thread state for queries");
            return;
        };
        while let Ok(QueryCommand::Answer(request, query)) = inbox.recv() {
            let reply = thread_state.with(|gil| lane::answer(gil, &query));
            answers.answer(request, reply);
        }
        thread_state.delete();
        let _ = done.send(());
    });
    (thread, done_inbox)
}
