//! The Rust side of one lane: the request its output belongs to, whether it may ask for input,
//! its job's CPU time, and its waits (`input()`, `sleep`, lane calls), which the kernel ends with
//! input and call replies, interrupts, or the interpreter's end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use pyo3_ffi as ffi;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use crate::sync::{CondvarExt, LockExt};
use super::cpu::{cpu_meter, CpuMeter};
use super::outlet::Outlet;
use super::threads::spawn_without_sigint;
use crate::lanes::{Event, Lane, RequestId, StreamName};

/// What a lane's `input()` is doing.
#[derive(Debug, Default)]
pub(super) enum InputSlot {
    #[default]
    Idle,
    /// `input()` has sent its `input_request` and waits for the reply.
    Waiting,
    Replied(String),
}

/// One thread blocked in a `_parakernel` wait.
#[derive(Debug)]
struct Waiter {
    /// Whether it is the lane's own thread (the one that runs cells).
    lane_thread: bool,
    interrupted: bool,
}

/// Everything the lane's waits wait for, under one lock with one condition variable.
#[derive(Debug, Default)]
pub(super) struct Waits {
    pub(super) input: InputSlot,
    /// Lane calls in flight by id, with the kernel's reply once it came.
    pub(super) calls: BTreeMap<u64, Option<Result<Value, String>>>,
    waiters: BTreeMap<u64, Waiter>,
    next_waiter: u64,
    /// The interpreter is ending: every wait, now or later, raises `SystemExit`.
    closing: bool,
}

/// How a wait ended.
pub(super) enum WaitEnd<T> {
    Ready(T),
    TimedOut,
    Interrupted,
    /// The interpreter is ending.
    Closed,
    /// A signal handler raised before the wait began (the exception is set).
    Raised,
}

/// The Rust side of one lane (one interpreter), shared by the lane's thread, the executor (which
/// delivers input and call replies and interrupts) and every `_parakernel` call made by the
/// lane's Python threads.
#[derive(Debug)]
pub struct LaneState {
    lane: Lane,
    outlet: Arc<Outlet>,
    /// The request the lane runs or ran last, plus one; 0 before the first request.
    request: AtomicU64,
    pub(super) allow_stdin: AtomicBool,
    /// `PyThread_get_thread_ident` of the thread that runs the lane's cells; 0 until bound.
    lane_thread: AtomicU64,
    waits: Mutex<Waits>,
    waits_changed: Condvar,
    cpu: Arc<CpuMeter>,
    /// A job is running (between `begin_job` and `end_job`).
    busy: AtomicBool,
}

/// The calling thread's `PyThread_get_thread_ident`, the id `PyThreadState_SetAsyncExc` takes.
fn current_thread_ident() -> u64 {
    // SAFETY: PyThread_get_thread_ident only names the calling thread; it needs no GIL.
    let ident = unsafe { ffi::PyThread_get_thread_ident() };
    #[allow(clippy::useless_conversion)] // a c_ulong, u32 on some targets
    u64::from(ident)
}

impl Drop for LaneState {
    fn drop(&mut self) {
        self.outlet.close();
    }
}

impl LaneState {
    /// The state of one interpreter of `lane`; starts the thread that sends buffered stream
    /// text on a short timer.
    pub fn new(lane: Lane, events: UnboundedSender<Event>) -> Self {
        let outlet = Arc::new(Outlet::new(events));
        let flusher = Arc::clone(&outlet);
        spawn_without_sigint("parakernel-streams", move || flusher.run_timer());
        LaneState {
            cpu: cpu_meter(&lane.name()),
            lane,
            outlet,
            request: AtomicU64::new(0),
            allow_stdin: AtomicBool::new(false),
            lane_thread: AtomicU64::new(0),
            waits: Mutex::new(Waits::default()),
            waits_changed: Condvar::new(),
            busy: AtomicBool::new(false),
        }
    }

    pub fn lane(&self) -> &Lane {
        &self.lane
    }

    /// Records the calling thread as the one that runs the lane's cells (interrupts and the
    /// interruptible `sleep` are for that thread only, as signals are for the main thread).
    pub fn bind_lane_thread(&self) {
        self.lane_thread.store(current_thread_ident(), Ordering::Release);
    }

    /// The lane thread's `PyThread_get_thread_ident` (what `PyThreadState_SetAsyncExc` takes),
    /// or `None` before [`Self::bind_lane_thread`].
    pub fn lane_thread(&self) -> Option<u64> {
        match self.lane_thread.load(Ordering::Acquire) {
            0 => None,
            ident => Some(ident),
        }
    }

    fn on_lane_thread(&self) -> bool {
        self.lane_thread() == Some(current_thread_ident())
    }

    /// Parents the lane's output (also that of threads a cell started) to `request` from now on.
    pub fn set_request(&self, request: RequestId) {
        self.request
            .store(request.wrapping_add(1), Ordering::Release);
    }

    pub fn request(&self) -> Option<RequestId> {
        match self.request.load(Ordering::Acquire) {
            0 => None,
            stored => Some(stored - 1),
        }
    }

    pub fn set_allow_stdin(&self, allow: bool) {
        self.allow_stdin.store(allow, Ordering::Release);
    }

    /// Starts counting the calling thread's CPU time for the lane (call on the lane thread when
    /// a job starts).
    pub fn begin_job(&self) {
        self.busy.store(true, Ordering::Release);
        self.cpu.begin();
    }

    /// Stops counting, on the lane thread, when the job is done.
    pub fn end_job(&self) {
        self.cpu.end();
        self.busy.store(false, Ordering::Release);
    }

    /// Whether the lane is running a job now.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Sends an event to the kernel, after the stream text written before it.
    pub fn send(&self, event: Event) {
        self.outlet.send(event);
    }

    /// Sends the buffered stream text now.
    pub fn flush(&self) {
        self.outlet.send_pending();
    }

    /// Buffers text written to a stream of the lane's current request.
    pub fn write_stream(&self, name: StreamName, text: &str) {
        self.outlet.write(self.request(), name, text);
    }

    pub(super) fn lock_waits(&self) -> MutexGuard<'_, Waits> {
        self.waits.lock_unpoisoned()
    }

    /// Hands the client's `input_reply` to a waiting `input()`. Returns false (and drops the
    /// value) when no `input()` is waiting.
    pub fn reply_input(&self, value: String) -> bool {
        let mut waits = self.lock_waits();
        if !matches!(waits.input, InputSlot::Waiting) {
            return false;
        }
        waits.input = InputSlot::Replied(value);
        self.waits_changed.notify_all();
        true
    }

    /// Hands the kernel's answer to the lane call `id`. Returns false (and drops it) when no
    /// thread of this interpreter waits for that call (it was interrupted, or it is another
    /// interpreter's).
    pub fn reply_call(&self, id: u64, reply: Result<Value, String>) -> bool {
        let mut waits = self.lock_waits();
        match waits.calls.get_mut(&id) {
            Some(slot @ None) => {
                *slot = Some(reply);
                self.waits_changed.notify_all();
                true
            }
            _ => false,
        }
    }

    /// Whether a thread of this interpreter waits for the answer to lane call `id`.
    pub fn awaits_call(&self, id: u64) -> bool {
        self.lock_waits().calls.contains_key(&id)
    }

    /// Interrupts a wait of the lane thread, if it is in one. Returns false when it is not: the
    /// caller then raises `KeyboardInterrupt` in it asynchronously (a subinterpreter lane), or
    /// has sent SIGINT first (the main lane). For a subinterpreter lane, call with its GIL held:
    /// the lane thread enters and leaves waits only while holding it, so the answer stays true
    /// until the GIL is released.
    pub fn interrupt_lane_thread(&self) -> bool {
        let mut waits = self.lock_waits();
        let mut woken = false;
        for waiter in waits.waiters.values_mut().filter(|waiter| waiter.lane_thread) {
            waiter.interrupted = true;
            woken = true;
        }
        if woken {
            self.waits_changed.notify_all();
        }
        woken
    }

    /// Makes the lane's waits look again at what they wait for (a channel changed). Taking the
    /// lock orders this after a waiter's look: none misses it.
    pub(super) fn wake_waits(&self) {
        drop(self.lock_waits());
        self.waits_changed.notify_all();
    }

    /// Makes every wait of the interpreter's threads, now and later, raise `SystemExit`, so
    /// that they end before the interpreter does.
    pub fn close_waits(&self) {
        self.lock_waits().closing = true;
        self.waits_changed.notify_all();
    }

    /// Blocks the calling thread, with the GIL released, until `ready` gives a value, the
    /// deadline passes, or an interrupt wakes it. An interrupt that arrives while the GIL is
    /// being taken back still counts (the interrupter saw this wait and raised nothing else).
    /// `start` (sending the request the wait is for) runs once the wait is registered and no
    /// interrupt is pending: an interrupted `input()` asks the client nothing.
    ///
    /// # Safety
    /// The calling thread holds the GIL of this lane's interpreter (it is released and taken
    /// back here); `ready` touches no Python object.
    pub(super) unsafe fn wait<T: Send>(
        &self,
        deadline: Option<Instant>,
        start: impl FnOnce(),
        mut ready: impl FnMut(&mut Waits) -> Option<T> + Send,
    ) -> WaitEnd<T> {
        let lane_thread = self.on_lane_thread();
        let id = {
            let mut waits = self.lock_waits();
            let id = waits.next_waiter;
            waits.next_waiter += 1;
            waits.waiters.insert(id, Waiter { lane_thread, interrupted: false });
            id
        };
        // The main lane is interrupted by SIGINT first, then by waking waits: a SIGINT that came
        // before this wait was registered raises now. (A system call returns with the thread's
        // pending signals handled, so one sent before now has tripped Python's flag.)
        // SAFETY: GIL held (caller); `set` is a valid sigset_t. PyErr_CheckSignals runs the
        // handlers on the main interpreter's main thread and does nothing elsewhere.
        let raised = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&raw mut set);
            ffi::PyErr_CheckSignals() != 0
        };
        if raised {
            self.lock_waits().waiters.remove(&id);
            return WaitEnd::Raised;
        }
        start();
        // SAFETY: the GIL is held (caller); it is released until RestoreThread, and nothing below
        // touches a Python object.
        let thread_state = unsafe { ffi::PyEval_SaveThread() };
        let end = {
            let mut waits = self.lock_waits();
            loop {
                if waits.closing {
                    break WaitEnd::Closed;
                }
                if waits.waiters.get(&id).is_some_and(|waiter| waiter.interrupted) {
                    break WaitEnd::Interrupted;
                }
                if let Some(value) = ready(&mut waits) {
                    break WaitEnd::Ready(value);
                }
                match deadline {
                    None => {
                        waits = self
                            .waits_changed
                            .wait_unpoisoned(waits);
                    }
                    Some(deadline) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break WaitEnd::TimedOut;
                        }
                        waits = self
                            .waits_changed
                            .wait_timeout_unpoisoned(waits, deadline - now);
                    }
                }
            }
        };
        // SAFETY: `thread_state` is this thread's, detached above.
        unsafe { ffi::PyEval_RestoreThread(thread_state) };
        let interrupted = self
            .lock_waits()
            .waiters
            .remove(&id)
            .is_some_and(|waiter| waiter.interrupted);
        match end {
            WaitEnd::Closed | WaitEnd::Raised => end,
            _ if interrupted => WaitEnd::Interrupted,
            end => end,
        }
    }
}
