//! parakernel: a Jupyter kernel that runs Python cells on lanes (the main interpreter or
//! own-GIL subinterpreters), each on its own thread.
//!
//! # Layout
//!
//! - [`wire`]: connection file, message envelope and typed request content, multipart framing,
//!   HMAC-SHA256 signing and verification. Bytes in, typed messages out; no I/O.
//! - [`transport`]: the five ZeroMQ sockets on tokio (shell, control, stdin, iopub, heartbeat).
//!   Moves multipart frames; never looks inside them.
//! - [`kernel`]: the meaning of each request: one dispatch table, busy/idle in one place, the
//!   execution counter, per-lane queues, `stop_on_error`, stream coalescing, history, interrupt
//!   and shutdown. Talks to Python only through the [`kernel::executor::Executor`] trait.
//! - [`python`]: embeds CPython, runs the main lane on the process's main thread and answers
//!   the executor contract. All FFI outside `native` lives here. `python/shell/` is the Python
//!   package every lane's shell runs (`_parakernel_shell`), shipped inside the binary.
//! - [`native`]: the `_parakernel` extension module every interpreter imports (multi-phase
//!   init, per-interpreter GIL): its definition, its functions (stream writers, display
//!   publishing, `input()`, lane calls), each lane's state and waits, output coalescing, CPU
//!   time per lane, and the registry of lanes by interpreter.
//! - [`install`]: writes the kernelspec.
//! - [`children`]: the processes cells started, ended with the kernel (SIGTERM, then SIGKILL).
//! - [`fatal`]: the original stderr, and the panic hook and fatal-signal handlers that get a
//!   dying kernel's last words (its own, Rust's, CPython's) into the log through it.
//!
//! Arrows point one way: `wire <- transport <- kernel -> Executor <- python -> native`.

pub mod children;
pub mod fatal;
pub mod install;
pub mod kernel;
pub mod lanes;
pub mod native;
pub mod python;
pub mod transport;
pub mod wire;
