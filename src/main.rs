//! The `parakernel` binary: `parakernel kernel -f CONNECTION_FILE` (what kernel.json starts) and
//! `parakernel install`.
//!
//! Threads: the process's main thread runs the main lane (Python's signal handling needs it);
//! the sockets and the kernel run on a tokio runtime in background threads, which block SIGINT
//! so that a SIGINT sent to the process always reaches Python on the main thread.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use parakernel::kernel::{Kernel, KernelInfo};
use parakernel::python::{self, PythonOptions};
use parakernel::transport::{self, Endpoints, SocketOptions};
use parakernel::wire::{ConnectionInfo, Session, Signer};

/// How long shutdown may take once the shutdown reply is sent, even with a lane stuck in C code.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(3);

#[derive(Parser)]
#[command(version, about = "A Jupyter kernel that runs Python cells in parallel lanes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the kernel (started by a Jupyter client through kernel.json).
    Kernel {
        /// The connection file the client wrote.
        #[arg(short = 'f', long = "connection-file")]
        connection_file: PathBuf,
        /// The Python environment to run (its `python`); default: the one built against.
        #[arg(long)]
        python: Option<PathBuf>,
        /// The largest frame a peer may send, in bytes (suffixes K, M, G); a larger declared
        /// frame drops that connection before any of it is allocated. Also
        /// `PARAKERNEL_MAX_MESSAGE_SIZE`.
        #[arg(long, env = "PARAKERNEL_MAX_MESSAGE_SIZE", value_parser = parse_size, default_value = "512M")]
        max_message_size: u64,
        /// Give every client session (each notebook attached to the kernel) a lane of its own
        /// for its cells that name no lane.
        #[arg(long)]
        lane_per_session: bool,
    },
    /// Install the kernelspec.
    Install(parakernel::install::InstallArgs),
    /// Run notebooks headless, each on a lane of its own, all in this process.
    Run(parakernel::run::RunArgs),
}

fn main() {
    parakernel::fatal::install();
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Kernel { connection_file, python, max_message_size, lane_per_session } => {
            run_kernel(&connection_file, python, max_message_size, lane_per_session)
        }
        Command::Run(args) => run_notebooks(&args),
        Command::Install(args) => parakernel::install::install(&args).map(|directory| {
            println!("Installed kernelspec {} in {}", args.kernel_name(), directory.display());
        }).map_err(anyhow::Error::from),
    };
    if let Err(error) = result {
        // Once, to the original stderr (the Jupyter server's log): fd 2 may carry cell output.
        let _ = writeln!(parakernel::fatal::original_stderr(), "parakernel: {error:#}");
        std::process::exit(1);
    }
}

/// How often the kernel checks that the process that started it is still there.
const PARENT_POLL: Duration = Duration::from_secs(1);

/// As ipykernel does when the client that started it says so (`JPY_PARENT_PID`, set by
/// jupyter_client to its own pid): exit once this process's parent is no longer that process,
/// so that a Jupyter server that crashed leaves no kernel behind.
fn watch_parent() {
    let Some(parent) = std::env::var("JPY_PARENT_PID").ok().and_then(|pid| pid.trim().parse::<i32>().ok()) else {
        return;
    };
    // PID 1 never goes away, only gets reassigned: nothing to watch.
    if parent <= 1 {
        return;
    }
    let spawned = std::thread::Builder::new().name("parakernel-parent".into()).spawn(move || loop {
        if nix::unistd::getppid().as_raw() != parent {
            tracing::warn!(parent, "the process that started the kernel has exited; exiting");
            parakernel::children::kill_descendants();
            std::process::exit(1);
        }
        std::thread::sleep(PARENT_POLL);
    });
    if let Err(error) = spawned {
        tracing::warn!("cannot watch the parent process: {error}");
    }
}

/// Logs go to the original stderr (the duplicate of fd 2 that `fatal::install` took, so that
/// redirecting fd 2 into cell output later never sends the kernel's own log into a notebook, and
/// fatal messages land in the same place). The level comes from `PARAKERNEL_LOG` (e.g. `debug`,
/// `parakernel=trace`); default `warn`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARAKERNEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour only on a terminal: a Jupyter server's log file must not fill with escape codes.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(terminal)
        .with_writer(std::sync::Mutex::new(parakernel::fatal::original_stderr()))
        .init();
}

/// A byte count such as `1048576`, `512M` or `1G` (binary multiples).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, multiple) = match text.char_indices().last() {
        Some((at, 'K' | 'k')) => (&text[..at], 1 << 10),
        Some((at, 'M' | 'm')) => (&text[..at], 1 << 20),
        Some((at, 'G' | 'g')) => (&text[..at], 1 << 30),
        _ => (text, 1),
    };
    let count: u64 = digits.trim().parse().map_err(|_| format!("{text:?} is not a size such as 1048576, 512M or 1G"))?;
    count
        .checked_mul(multiple)
        .filter(|&size| size > 0)
        .ok_or_else(|| format!("{text:?} is not a size between 1 byte and 16 EiB"))
}

fn run_kernel(connection_file: &std::path::Path, python: Option<PathBuf>, max_message_size: u64, lane_per_session: bool) -> anyhow::Result<()> {
    // Before any thread starts: it may run the program again, with mimalloc's options set.
    python::configure_allocator_environment();
    let connection = ConnectionInfo::from_file(connection_file)?;
    let curve = match (&connection.curve_publickey, &connection.curve_secretkey) {
        (Some(public), Some(secret)) => Some(transport::CurveKeys::new(public, secret)?),
        (None, None) => None,
        _ => anyhow::bail!("the connection file has only one of curve_publickey and curve_secretkey"),
    };
    let session = Session::new(Signer::new(connection.key.as_bytes()));
    let endpoints = Endpoints {
        transport: connection.transport.clone(),
        ip: connection.ip.clone(),
        shell_port: connection.shell_port,
        control_port: connection.control_port,
        stdin_port: connection.stdin_port,
        iopub_port: connection.iopub_port,
        hb_port: connection.hb_port,
    };
    // Bound before any other thread starts: socket files are made under a private umask, and a
    // taken port is reported before Python starts. libzmq starts its I/O threads here; they
    // inherit a mask that blocks SIGINT, so that SIGINT always reaches Python's main thread.
    let mut sigint = SigSet::empty();
    sigint.add(Signal::SIGINT);
    sigint.thread_block().context("cannot block SIGINT for the socket threads")?;
    let bound = transport::bind_sockets(&endpoints, &SocketOptions { max_message_size, curve });
    sigint.thread_unblock().context("cannot unblock SIGINT on the main thread")?;
    let bound = bound?;
    let info = KernelInfo { language_info: python::language_info(), banner: python::banner() };
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let (executor, main_lane) = python::start(PythonOptions { python, on_demand: false, on_main_ready: None }, events_tx)?;

    // Threads started while SIGINT is blocked inherit the mask.
    sigint.thread_block().context("cannot block SIGINT for the socket threads")?;
    // One thread for every socket task and the kernel: hand-offs between them are then task
    // switches, not thread wake-ups (measured here: a `pass` round trip went from 1.30 ms on a
    // two-worker runtime to 0.90 ms).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let (kernel_done, kernel_ended) = mpsc::channel::<()>();
    let (closer_out, closer_in) = mpsc::channel::<transport::Closer>();
    std::thread::Builder::new()
        .name("parakernel-kernel".into())
        .spawn(move || {
            let served = runtime.block_on(async move {
                let transport = bound.start()?;
                let _ = closer_out.send(transport.closer());
                let outgoing = transport.outgoing.clone();
                Kernel::new(session, executor, outgoing, info).with_lane_per_session(lane_per_session).serve(transport, events).await;
                Ok::<(), transport::TransportError>(())
            });
            // Dropping the runtime ends the socket tasks (their sockets close); closing the
            // context then waits, at most the linger time, until libzmq has written the last
            // replies.
            drop(runtime);
            if let Ok(closer) = closer_in.try_recv() {
                closer.close();
            }
            if let Err(error) = served {
                // fd 2 may already carry cell output: the log keeps the original stderr.
                tracing::error!("{error:#}");
                std::process::exit(1);
            }
            let _ = kernel_done.send(());
            // The shutdown reply is out; a lane stuck in C code must not keep us alive.
            std::thread::sleep(SHUTDOWN_BOUND);
            tracing::warn!("a lane did not stop within {SHUTDOWN_BOUND:?} of shutdown; exiting");
            parakernel::children::kill_descendants();
            std::process::exit(0);
        })
        .context("cannot start the kernel thread")?;
    watch_parent();
    sigint.thread_unblock().context("cannot unblock SIGINT on the main thread")?;

    main_lane.run()?;
    // The main lane ends after the executor's shutdown; wait (bounded) for the kernel to send
    // its last messages.
    let _ = kernel_ended.recv_timeout(SHUTDOWN_BOUND);
    parakernel::children::kill_descendants();
    std::process::exit(0);
}

/// `parakernel run`: the kernel core serves the notebooks' sessions in this process; the main
/// thread runs the main lane, as under `parakernel kernel`. Exits 0 when every notebook ran, 1
/// when one failed or timed out, 130 after Ctrl-C.
fn run_notebooks(args: &parakernel::run::RunArgs) -> anyhow::Result<()> {
    python::configure_allocator_environment();
    let notebooks = parakernel::run::prepare(args)?;
    let python = Some(parakernel::install::environment_python(args.python.as_deref()));
    let info = KernelInfo { language_info: python::language_info(), banner: python::banner() };
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let lane_calls = events_tx.clone();
    let (executor, main_lane) = python::start(PythonOptions { python, on_demand: true, on_main_ready: Some(parakernel::run::install_ctrl_c) }, events_tx)?;
    let mut sigint = SigSet::empty();
    sigint.add(Signal::SIGINT);
    sigint.thread_block().context("cannot block SIGINT for the runner's thread")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the tokio runtime")?;
    let (done, outcomes) = mpsc::channel();
    let owned = args.clone();
    std::thread::Builder::new()
        .name("parakernel-runner".into())
        .spawn(move || {
            let ran = std::sync::Arc::new(runtime.block_on(parakernel::run::serve_and_drive(executor, events, lane_calls, info, notebooks, &owned)));
            let _ = done.send(std::sync::Arc::clone(&ran));
            // Every notebook is written; a lane stuck in C code must not keep the run alive.
            std::thread::sleep(SHUTDOWN_BOUND);
            tracing::warn!("a lane did not stop within {SHUTDOWN_BOUND:?} of the run's end; exiting");
            finish_run(&ran);
        })
        .context("cannot start the runner's thread")?;
    sigint.thread_unblock().context("cannot unblock SIGINT on the main thread")?;
    if let Err(error) = main_lane.run() {
        // Python could not start (a Ctrl-C during its start among the causes): the runner was
        // answered with the error, and its summary and exit code say what became of the run.
        tracing::error!("{:#}", anyhow::Error::new(error));
    }
    let outcomes = outcomes.recv().context("the runner did not finish")?;
    finish_run(&outcomes);
}

/// Prints the run's summary and exits with its code, once (from the main thread, or from the
/// runner's if the main lane does not end in time).
fn finish_run(outcomes: &[parakernel::run::Outcome]) -> ! {
    static FINISHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = FINISHING.lock();
    println!("{}", parakernel::run::summary(outcomes));
    parakernel::children::kill_descendants();
    std::process::exit(parakernel::run::exit_code(outcomes));
}
