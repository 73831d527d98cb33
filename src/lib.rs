//! parakernel: a Jupyter kernel that runs Python cells on lanes (the main interpreter or
//! own-GIL subinterpreters), each on its own thread.
//!
//! # Layout
//!
//! - [`wire`]: connection file, message envelope and typed request content, multipart framing,
//!   HMAC-SHA256 signing and verification, and the typed content of what the kernel sends
//!   (`wire::content`: execute replies, error replies, outputs). Bytes in, typed messages out;
//!   no I/O.
//! - [`transport`]: the five ZeroMQ sockets (libzmq behind a ZMTP gate) on tokio. Moves
//!   multipart frames; never looks inside them.
//! - [`lanes`]: the lane contract every kind of lane speaks: `Lane`, `Job`, `Query`,
//!   `LaneCall`, the typed `Event`s a lane sends, and the [`lanes::Executor`] trait the kernel
//!   drives lanes through.
//! - [`kernel`]: the meaning of each request: one dispatch table, busy/idle in one place, the
//!   execution counter, per-lane queues, `stop_on_error`, stream coalescing, history, comms and
//!   their lanes, queries and their deadline, interrupt and shutdown. Knows lanes only through
//!   the contract.
//! - [`python`]: embeds CPython and implements the contract: one lane runtime (serve loop, job
//!   runner, control threads) for every kind of lane, a backend per kind (the main lane on the
//!   process's main thread, subinterpreter lanes on their own threads). All FFI outside
//!   `native` lives here. `python/shell/` is the Python package every lane's shell runs
//!   (`_parakernel_shell`), shipped inside the binary.
//! - [`native`]: the `_parakernel` extension module every interpreter imports (multi-phase
//!   init, per-interpreter GIL): its definition, its functions (stream writers, display
//!   publishing, `input()`, lane calls), each lane's state and waits, output coalescing, CPU
//!   time per lane, and the registry of lanes by interpreter.
//! - [`channels`]: the process-wide channels between lanes, their messages as owned Rust values,
//!   and the shared buffers (knows nothing of Python; the native module converts and exports).
//! - [`run`]: `parakernel run`: whole notebooks on lanes, a client of the kernel core in the
//!   same process (no sockets), one session (and lane) per notebook.
//! - [`children`]: the processes cells started, ended with the kernel (SIGTERM, then SIGKILL).
//! - [`install`]: writes the kernelspec.
//! - [`sync`]: locks and condition variables without a poison check at every use.
//! - [`fatal`]: the original stderr, and the panic hook and fatal-signal handlers that get a
//!   dying kernel's last words (its own, Rust's, CPython's) into the log through it.
//!
//! Arrows point one way (checked against the `use` lines):
//!
//! ```text
//! kernel -> transport, wire, lanes
//! lanes  -> wire
//! python -> lanes, native, children, fatal
//! native -> lanes, channels
//! run    -> kernel, transport, wire, lanes
//! ```
//! `main.rs` joins them: it binds the transport, starts `python` and hands its executor to the
//! `kernel`.

pub mod channels;
pub mod children;
pub mod fatal;
pub mod install;
pub mod kernel;
pub mod lanes;
pub mod native;
pub mod python;
pub mod run;
pub mod sync;
pub mod transport;
pub mod wire;
