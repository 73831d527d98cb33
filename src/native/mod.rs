//! The `_parakernel` extension module (multi-phase init, per-interpreter GIL): stream writers,
//! display publishing, `input()`, an interruptible `sleep`, lane calls (parakernel's magics ask
//! the kernel through them) and per-lane CPU time, for the cells of a lane. Keeps no Python
//! objects in process-wide state: the process-wide registries hold only Rust data
//! ([`LaneState`], [`CpuMeter`]), and each module object's state points at its lane's entry.
//!
//! Ownership: the `python` module creates a lane's [`LaneState`] and [`register`]s it under the
//! ID of the lane's interpreter before that interpreter imports `_parakernel`. The module's exec
//! slot takes an `Arc` clone into its per-module state; the module's `m_free` drops it.
//!
//! Waits (`input()`, `sleep`, lane calls) release the GIL and block on the lane's condition
//! variable; an interrupt wakes the lane thread's wait ([`LaneState::interrupt_lane_thread`]:
//! after SIGINT for the main lane; for a subinterpreter lane, whose thread signals never reach,
//! instead of an asynchronous exception) and it raises `KeyboardInterrupt`.
//!
//! # Parts
//!
//! - `module`: the module definition, method table and per-module state.
//! - `functions`: the module's functions (`channels`: those of channels and shared buffers;
//!   `transfer`: `--in`/`--out` copies between the main lane and a lane); `arguments`: reading their arguments, raising errors.
//! - `lane_state`: [`LaneState`], one lane's Rust side: its request, its waits and their replies.
//! - `outlet`: the ordered, coalescing way out of a lane to the kernel.
//! - `cpu`: [`CpuMeter`], CPU time per lane.
//! - `registry`: lane states by interpreter ID.
//! - `threads`: spawning threads with SIGINT blocked.

mod arguments;
mod channels;
mod cpu;
mod functions;
mod lane_state;
mod module;
mod outlet;
mod registry;
mod threads;
mod transfer;
mod values;

pub use cpu::{cpu_meter, cpu_times, CpuMeter};
pub use lane_state::LaneState;
pub use module::{init_module, MODULE_NAME};
pub use registry::{register, unregister};
pub use threads::{spawn_python_thread, spawn_without_sigint, PYTHON_STACK};
