//! `parakernel run NOTEBOOK...` (issue 9): whole notebooks on lanes, headless, in one process.
//!
//! The runner is a client of the kernel core in the same process: the [`Kernel`] serves a
//! socketless [`Transport`] (no ZeroMQ), with one lane per client session, and the runner
//! speaks to it as JupyterLab's Run All does, one session per notebook. So each notebook's
//! cells run in order on a lane of its own (an own-GIL subinterpreter), its tagged cells on
//! their lanes, `%wait` meeting them; up to `--jobs` notebooks at once. Nothing of execution,
//! streams or lanes is implemented twice.

mod ctrl_c;
mod layout;
mod notebook;
pub mod params;
mod prepare;
mod progress;
mod summary;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::kernel::{Kernel, KernelInfo};
use crate::lanes::{Event, Executor, Lane, LaneCall};
use tokio::sync::mpsc::UnboundedSender;
use crate::transport::{Channel, Incoming, Peer, Transport};
use crate::wire::{Message, Session, Signer, Verifier};
pub use notebook::{Notebook, NotebookError, Status};
use progress::Progress;
pub use prepare::prepare;
use prepare::read_capped;
pub use summary::{exit_code, summary, Outcome};
/// Puts the runner's Ctrl-C and SIGTERM handlers in front of Python's (`PythonOptions::on_main_ready`).
pub use ctrl_c::install as install_ctrl_c;
use summary::{describe, outcome_of};

/// `parakernel run`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The notebooks to run, each on a lane of its own.
    #[arg(required_unless_present = "main", value_name = "NOTEBOOK")]
    pub notebooks: Vec<PathBuf>,
    /// How many notebooks run at once (default: the number of cores).
    #[arg(short = 'j', long)]
    pub jobs: Option<usize>,
    /// Write each notebook run as DIR/NAME.ipynb (default: NAME.out.ipynb beside the input).
    #[arg(long, value_name = "DIR", conflicts_with = "inplace")]
    pub output_dir: Option<PathBuf>,
    /// Write the outputs into the notebooks themselves.
    #[arg(long)]
    pub inplace: bool,
    /// Run every cell even when one raises (the notebook still counts as run).
    #[arg(long)]
    pub allow_errors: bool,
    /// Interrupt a cell that runs longer than this many seconds; the notebook fails. A cell
    /// that an interrupt does not end within 5 s more has its lanes stopped.
    #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
    pub timeout: Option<f64>,
    /// Run this notebook on the main lane (for numpy, pandas and other modules lanes refuse;
    /// such notebooks run one at a time). Also notebook metadata `"parakernel": {"lane": "main"}`.
    #[arg(long = "main", value_name = "NOTEBOOK")]
    pub main: Vec<PathBuf>,
    /// The Python environment to run (its `python`). Default: the active virtual environment,
    /// else the interpreter parakernel was built against.
    #[arg(long, value_name = "PYTHON")]
    pub python: Option<PathBuf>,
    /// A parameter, as papermill takes it: injected in a cell tagged `injected-parameters`
    /// after the cell tagged `parameters` (VALUE typed: int, float, True/False, None, else text).
    #[arg(short = 'p', long = "parameter", num_args = 2, value_names = ["NAME", "VALUE"], action = clap::ArgAction::Append)]
    pub parameters: Vec<String>,
    /// Parameters from a YAML or JSON file (a mapping of names to values).
    #[arg(short = 'f', long = "parameters-file", value_name = "FILE")]
    pub parameters_file: Option<PathBuf>,
    /// A sweep: one isolated run of each notebook per combination of the values (repeat for
    /// more names), in parallel, each written to its own file.
    #[arg(long, value_name = "NAME=V1,V2", conflicts_with = "inplace")]
    pub grid: Vec<String>,
}

/// `--timeout`: a number of seconds above 0.
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => Ok(seconds),
        _ => Err(format!("{text:?} is not a number of seconds above 0 (e.g. --timeout 600)")),
    }
}

/// Sends a request from `session` (a notebook's, or the runner's own) on `channel`; returns
/// its msg_id.
async fn send(peer: &Peer, signer: &Signer, session: &str, channel: Channel, msg_type: &str, content: serde_json::Value, metadata: serde_json::Map<String, serde_json::Value>) -> String {
    let session = Session { id: session.to_owned(), signer: signer.clone() };
    let mut message = session.message(msg_type, content, None, vec![bytes::Bytes::from_static(b"runner")]);
    message.metadata = metadata;
    let queue = if channel == Channel::Control { &peer.control } else { &peer.shell };
    let _ = queue.send(Incoming { channel, frames: message.encode(signer) }).await;
    message.header.msg_id
}

/// A silent cell of the runner's own on the main lane (not counted, no output kept). An empty
/// one says the main lane is up, without making its shell (made on demand under a run).
async fn send_main_cell(peer: &Peer, signer: &Signer, code: &str) -> String {
    let content = json!({"code": code, "silent": true, "store_history": false, "allow_stdin": false});
    let mut metadata = serde_json::Map::new();
    metadata.insert("tags".into(), json!(["lane:main"]));
    send(peer, signer, RUNNER_SESSION, Channel::Shell, "execute_request", content, metadata).await
}

/// The id of the lane calls the runner makes itself: no lane waits for their answer, which
/// the main lane drops (lanes number their calls from `NEXT_CALL_ID`, counting up from 1).
const RUNNER_CALL: u64 = u64::MAX;

/// Stops a finished notebook's lanes, as `%lane stop NAME` in a main-lane cell would, but as a
/// lane call of the runner's own (no cell, no shell): the kernel names a session's lane after
/// the session, and stopping it stops the lanes its cells named (a main-lane notebook has only
/// those; without any, the call is refused, and nothing is stopped).
fn stop_lanes_of(lane_calls: &UnboundedSender<Event>, notebook: &Notebook) {
    let call = LaneCall::Stop { lane: notebook.session.clone() };
    let _ = lane_calls.send(Event::Call { lane: Lane::Main, id: RUNNER_CALL, request: None, call });
}

/// The request an `execute_reply` answers.
fn replied_to(message: &Message) -> Option<&str> {
    (message.msg_type() == "execute_reply").then(|| message.parent_header.as_ref().map(|parent| parent.msg_id.as_str())).flatten()
}

/// The runner's own session (its warm-up cell, the shutdown).
const RUNNER_SESSION: &str = "parakernel-run";

/// How long a cell over `--timeout` has, once interrupted, before its notebook's lanes are
/// stopped (a cell that catches `KeyboardInterrupt`, or waits in C code).
const TIMEOUT_GRACE: Duration = Duration::from_secs(5);

/// Runs `notebooks` against a kernel served on `transport` (whose far end is `peer`); `key` is
/// the kernel's signing key, and `lane_calls` the queue of its lanes' calls. Returns each
/// notebook's outcome, in the order given.
pub async fn drive(mut peer: Peer, key: &[u8], lane_calls: UnboundedSender<Event>, mut notebooks: Vec<Notebook>, args: &RunArgs) -> Vec<Outcome> {
    let mut progress = Progress::new(notebooks.len());
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from)).max(1);
    let mut verifier = Verifier::new(Signer::new(key));
    let signer = Signer::new(key);
    let mut waiting: VecDeque<usize> = (0..notebooks.len()).collect();
    let mut running: Vec<usize> = Vec::new();
    // msg_id of a cell's request -> (notebook, code cell).
    let mut requests: HashMap<String, (usize, usize)> = HashMap::new();
    let mut started: HashMap<usize, Instant> = HashMap::new();
    // (notebook, cell) -> when its --timeout passes, from its execute_input.
    let mut deadlines: HashMap<(usize, usize), Instant> = HashMap::new();
    // notebook -> when its lanes are stopped: a timed-out cell the interrupt did not end.
    let mut last_resort: HashMap<usize, Instant> = HashMap::new();
    let mut outcomes: Vec<Option<Outcome>> = (0..notebooks.len()).map(|_| None).collect();
    let timeout = args.timeout.filter(|seconds| seconds.is_finite() && *seconds > 0.0);

    // The main lane runs a silent cell first: then Python's SIGINT handler is in place, and
    // Ctrl-C's goes in front of it. A Ctrl-C that came before reached Python's handler: the
    // lane could not start, or the cell says KeyboardInterrupt; then nothing runs.
    let warm = send_main_cell(&peer, &signer, "").await;
    while let Some(outgoing) = peer.outgoing.recv().await {
        let Ok(message) = Message::decode(outgoing.frames, &mut verifier) else { continue };
        if replied_to(&message) == Some(warm.as_str()) {
            if message.content["status"] == "error" && message.content.to_string().contains("KeyboardInterrupt") {
                progress.note("Ctrl-C before the first cell: nothing ran");
                for notebook in &mut notebooks {
                    notebook.status = Status::NotRun;
                }
                waiting.clear();
                progress.done();
                send(&peer, &signer, RUNNER_SESSION, Channel::Control, "shutdown_request", json!({"restart": false}), serde_json::Map::new()).await;
                return notebooks.iter().map(|notebook| outcome_of(notebook, None)).collect();
            }
            break;
        }
    }
    // In place already (the main lane installs it once Python's is: `on_main_ready`); a
    // Ctrl-C since then counts.
    ctrl_c::install();
    let mut presses = 0;
    let mut interrupted = false;
    let mut ticks = tokio::time::interval(Duration::from_millis(100));

    loop {
        // Ctrl-C: every running notebook's cell is interrupted (its lane: its session's), no
        // other starts; a second Ctrl-C (or a SIGTERM) stops waiting and writes what ran.
        if ctrl_c::presses() != presses || ctrl_c::terminated() {
            presses = ctrl_c::presses();
            if interrupted || ctrl_c::terminated() {
                progress.note(if ctrl_c::terminated() { "SIGTERM: writing what ran and stopping" } else { "Ctrl-C again: writing what ran and stopping" });
                for &n in &running {
                    notebooks[n].status = Status::Interrupted;
                    if let Err(error) = notebooks[n].write() {
                        progress.note(&error.to_string());
                    }
                    outcomes[n] = Some(outcome_of(&notebooks[n], started.get(&n)));
                }
                for n in waiting.drain(..) {
                    notebooks[n].status = Status::NotRun;
                    outcomes[n] = Some(outcome_of(&notebooks[n], None));
                }
                running.clear();
                break;
            }
            interrupted = true;
            progress.note("Ctrl-C: interrupting the running cells (press again to stop waiting)");
            for &n in &running {
                notebooks[n].status = Status::Interrupted;
                send(&peer, &signer, &notebooks[n].session, Channel::Control, "interrupt_request", json!({}), serde_json::Map::new()).await;
                // An interrupt reaches the cells running now. A notebook none of whose cells has
                // started yet (its lane still starting) has its lanes stopped instead: its cells
                // are aborted rather than run after the interrupt.
                if !notebooks[n].on_main && !notebooks[n].started() {
                    stop_lanes_of(&lane_calls, &notebooks[n]);
                }
            }
            for n in waiting.drain(..) {
                notebooks[n].status = Status::NotRun;
                outcomes[n] = Some(outcome_of(&notebooks[n], None));
            }
        }
        // Notebooks done (every cell answered; one without code cells at once): written, and
        // their lanes stopped now, not at the end of the run.
        for n in running.iter().copied().filter(|&n| notebooks[n].finished()).collect::<Vec<_>>() {
            running.retain(|&r| r != n);
            requests.retain(|_, (owner, _)| *owner != n);
            deadlines.retain(|(owner, _), _| *owner != n);
            last_resort.remove(&n);
            let seconds = started.get(&n).map_or(0.0, |at| at.elapsed().as_secs_f64());
            if let Err(error) = notebooks[n].write() {
                notebooks[n].status = Status::Failed(error.to_string());
            }
            stop_lanes_of(&lane_calls, &notebooks[n]);
            if notebooks[n].on_main {
                // The next main-lane notebook starts with an empty namespace, as in a kernel of
                // its own (the modules imported stay imported).
                send_main_cell(&peer, &signer, "%reset -f\n%reset -f in").await;
            }
            let outcome = outcome_of(&notebooks[n], started.get(&n));
            progress.finished(n, &format!("[{}] {} in {seconds:.1} s -> {}", outcome.name, describe(&outcome.status), outcome.output.display()));
            outcomes[n] = Some(outcome);
        }
        // Start notebooks while there is room; main-lane notebooks one at a time.
        while running.len() < jobs {
            let main_busy = running.iter().any(|&n| notebooks[n].on_main);
            let Some(position) = waiting.iter().position(|&n| !(notebooks[n].on_main && main_busy)) else { break };
            let n = waiting.remove(position).expect("a position in the queue");
            progress.started(n, &notebooks[n].name(), notebooks[n].code_cell_count());
            for cell in 0..notebooks[n].code_cell_count() {
                let (content, metadata) = notebooks[n].request(cell, args.allow_errors);
                let id = send(&peer, &signer, &notebooks[n].session, Channel::Shell, "execute_request", content, metadata).await;
                requests.insert(id, (n, cell));
            }
            started.insert(n, Instant::now());
            running.push(n);
        }
        if running.is_empty() {
            break;
        }
        let next_deadline = deadlines.values().chain(last_resort.values()).min().copied();
        let received = tokio::select! {
            outgoing = peer.outgoing.recv() => outgoing,
            _ = ticks.tick() => continue,
            () = sleep_until(next_deadline), if next_deadline.is_some() => {
                let now = Instant::now();
                let expired: Vec<(usize, usize)> = deadlines.iter().filter(|(_, at)| **at <= now).map(|(key, _)| *key).collect();
                for (n, cell) in expired {
                    deadlines.remove(&(n, cell));
                    let seconds = timeout.unwrap_or_default();
                    notebooks[n].timed_out(cell, seconds);
                    progress.note(&format!("[{}] cell {} ran longer than {seconds} s: interrupted", notebooks[n].name(), cell + 1));
                    // The notebook's own session: the kernel interrupts the lanes running its cells.
                    send(&peer, &signer, &notebooks[n].session, Channel::Control, "interrupt_request", json!({}), serde_json::Map::new()).await;
                    last_resort.entry(n).or_insert(now + TIMEOUT_GRACE);
                }
                let stubborn: Vec<usize> = last_resort.iter().filter(|(_, at)| **at <= now).map(|(n, _)| *n).collect();
                for n in stubborn {
                    last_resort.remove(&n);
                    if notebooks[n].on_main {
                        progress.note(&format!("[{}] the interrupted cell goes on: the main lane cannot be stopped; waiting for it", notebooks[n].name()));
                    } else {
                        // Its running cell is set aside and answered, the cells behind it aborted.
                        progress.note(&format!("[{}] the interrupted cell did not end within {} s: stopping its lanes", notebooks[n].name(), TIMEOUT_GRACE.as_secs()));
                        stop_lanes_of(&lane_calls, &notebooks[n]);
                    }
                }
                continue;
            }
        };
        let Some(outgoing) = received else { break };
        let Ok(message) = Message::decode(outgoing.frames, &mut verifier) else { continue };
        let Some(&(n, cell)) = message.parent_header.as_ref().and_then(|parent| requests.get(&parent.msg_id)) else { continue };
        if message.msg_type() == "execute_input" {
            if let Some(seconds) = timeout {
                deadlines.insert((n, cell), Instant::now() + Duration::from_secs_f64(seconds));
            }
            let source = notebooks[n].source(cell);
            let first = source.lines().find(|line| !line.trim().is_empty()).unwrap_or("").chars().take(60).collect::<String>();
            progress.cell(n, &notebooks[n].name(), cell, notebooks[n].code_cell_count(), &first);
        }
        if message.msg_type() == "execute_reply" {
            deadlines.remove(&(n, cell));
        }
        notebooks[n].take(cell, &message, args.allow_errors);
    }
    progress.done();
    send(&peer, &signer, RUNNER_SESSION, Channel::Control, "shutdown_request", json!({"restart": false}), serde_json::Map::new()).await;
    outcomes.into_iter().flatten().collect()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Serves the kernel on a socketless transport with one lane per session and drives it with
/// `notebooks`; the kernel's executor comes from the caller (the Python lanes).
pub async fn serve_and_drive<E: Executor>(
    executor: E,
    events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    lane_calls: UnboundedSender<Event>,
    info: KernelInfo,
    notebooks: Vec<Notebook>,
    args: &RunArgs,
) -> Vec<Outcome> {
    let key = uuid::Uuid::new_v4().to_string().into_bytes();
    let (transport, peer) = Transport::unbound();
    let outgoing = transport.outgoing.clone();
    let kernel = Kernel::new(Session::new(Signer::new(&key)), executor, outgoing, info).with_lane_per_session(true);
    let ((), outcomes) = tokio::join!(kernel.serve(transport, events), drive(peer, &key, lane_calls, notebooks, args));
    outcomes
}
