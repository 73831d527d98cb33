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
mod backend;
mod capture;
mod embed;
mod ffi;
mod lane;
mod lanes;
mod main_lane;
mod sublane;
mod runtime;

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;

pub use embed::configure_allocator_environment;
pub use ffi::PythonException;

use crate::lanes::{Event, Executor, InterruptTarget, Job, Lane, Query, RequestId};
use crate::native::LaneState;
use answers::Answers;
use backend::LaneBackend;
use lanes::Lanes;
use main_lane::{MainBackend, MainControl};
pub use main_lane::MainLane;

/// How long shutdown waits for the threads cells started, and for the query thread, before it
/// gives up on finalizing Python (the process then exits without `Py_FinalizeEx`).
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long shutdown waits for subinterpreter lanes to end (they were interrupted and told to
/// end when shutdown began); a lane stuck in C code is left behind, and Python not finalized.
pub(crate) const LANES_END_TIMEOUT: Duration = Duration::from_millis(1500);

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
#[derive(Debug, Clone)]
pub struct PythonOptions {
    /// The environment's `python` executable from the kernelspec (`--python`); `None` runs the
    /// interpreter parakernel was built against, without a virtual environment.
    pub python: Option<PathBuf>,
    /// Whether what a cell may need starts when a cell first needs it rather than ahead: the
    /// main lane's IPython shell (about 15 MiB) and the fresh lanes (about 18 MiB each).
    /// `parakernel run` starts them on demand: a run of lane notebooks may never use them. The
    /// kernel starts them ahead (the fresh pool once the first lane is ready), so that the first
    /// cell of each kind does not wait.
    pub on_demand: bool,
    /// Called on the main thread once the main lane's Python has its signal handlers (after
    /// its shell module started): `parakernel run` puts its Ctrl-C handler in front there, so
    /// that no SIGINT falls between Python's handler and its own.
    pub on_main_ready: Option<fn()>,
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
    let answers = Answers::new(events.clone());
    let fresh_lanes = fresh_lane_count();
    let lanes = Arc::new(Lanes::new(events.clone(), Arc::clone(&answers), fresh_lanes, !options.on_demand));
    let main = MainBackend {
        commands,
        queries: queries.clone(),
        state: Arc::clone(&state),
        control: Arc::clone(&control),
        events,
        answers: Arc::clone(&answers),
    };
    let executor = PythonExecutor { main, lanes: Arc::clone(&lanes), fresh_lanes };
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

/// The executor handed to the kernel. Every method returns at once: it finds the backend of
/// the lane (the one place that tells kinds of lanes apart) and hands it the work.
pub struct PythonExecutor {
    main: MainBackend,
    lanes: Arc<Lanes>,
    fresh_lanes: usize,
}

impl std::fmt::Debug for PythonExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PythonExecutor").finish_non_exhaustive()
    }
}

impl PythonExecutor {
    /// Which backend serves `lane`. A new kind of lane (a process lane) is one more arm here.
    fn backend(&self, lane: &Lane) -> &dyn LaneBackend {
        match lane {
            Lane::Main => &self.main,
            Lane::Named(_) | Lane::Fresh(_) => &self.lanes,
        }
    }

    fn backends(&self) -> [&dyn LaneBackend; 2] {
        [&self.main, &self.lanes]
    }
}

impl Executor for PythonExecutor {
    fn run(&mut self, lane: &Lane, job: Job) {
        self.backend(lane).run(lane, job);
    }

    fn query(&mut self, lane: &Lane, request: RequestId, query: Query) {
        // A lane with no namespace to offer (a fresh lane, a lane not started yet): the main
        // lane's is what the cell's author sees.
        if let Err(query) = self.backend(lane).query(lane, request, query) {
            // The main lane takes every query (it answers empty when it cannot answer).
            let _taken = self.main.query(&Lane::Main, request, query);
        }
    }

    fn input_reply(&mut self, lane: &Lane, value: String) {
        if !self.backend(lane).input_reply(lane, value) {
            tracing::warn!(lane = lane.name(), "input_reply for a lane that is not waiting for input: dropped");
        }
    }

    fn interrupt(&mut self, target: &InterruptTarget) {
        match target {
            InterruptTarget::All => self.backends().iter().for_each(|backend| backend.interrupt(None)),
            InterruptTarget::Lane(lane) => self.backend(lane).interrupt(Some(lane)),
        }
    }

    fn call_reply(&mut self, lane: &Lane, id: u64, reply: Result<Value, String>) {
        if !self.backend(lane).call_reply(lane, id, reply) {
            tracing::debug!(lane = lane.name(), id, "no lane waits for this call (interrupted?): dropped");
        }
    }

    fn end_lane(&mut self, lane: &Lane, restart: bool) {
        self.backend(lane).end_lane(lane, restart);
    }

    fn fresh_lanes(&self) -> usize {
        self.fresh_lanes
    }

    fn cpu_seconds(&self) -> std::collections::BTreeMap<String, f64> {
        crate::native::cpu_times()
    }

    fn lanes_unavailable(&self) -> Option<String> {
        embed::lanes_unavailable()
    }

    fn shutdown(&mut self) {
        // Every lane is interrupted and told to end; the main lane last, since it waits for the
        // others before Python is finalized.
        self.lanes.shut_down();
        // A lane waiting for a process returns once it has ended; done beside the lanes'
        // ending, so the shutdown reply does not wait for it.
        let spawned = std::thread::Builder::new()
            .name("pk-end-children".into())
            .spawn(|| crate::children::end_descendants(crate::children::TERMINATE_GRACE));
        if let Err(error) = spawned {
            tracing::warn!("cannot end the processes the cells started: {error}");
        }
        self.main.shut_down();
    }
}

