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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use pyo3_ffi as ffi;
use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedSender;

use crate::kernel::executor::{Event, Lane, LaneCall, RequestId, StreamName};

/// The name every interpreter imports the module under.
pub const MODULE_NAME: &CStr = c"_parakernel";

/// Lane call ids are unique in the process, so a reply meant for an interpreter that was
/// replaced can never be taken for one of its successor's calls.
static NEXT_CALL_ID: AtomicU64 = AtomicU64::new(1);

/// What a lane's `input()` is doing.
#[derive(Debug, Default)]
enum InputSlot {
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
struct Waits {
    input: InputSlot,
    /// Lane calls in flight by id, with the kernel's reply once it came.
    calls: BTreeMap<u64, Option<Result<Value, String>>>,
    waiters: BTreeMap<u64, Waiter>,
    next_waiter: u64,
    /// The interpreter is ending: every wait, now or later, raises `SystemExit`.
    closing: bool,
}

/// How a wait ended.
enum WaitEnd<T> {
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
    allow_stdin: AtomicBool,
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
    #[allow(clippy::useless_conversion)] // a c_ulong, u32 on some targets
    u64::from(unsafe { ffi::PyThread_get_thread_ident() })
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
        let outlet = Arc::new(Outlet {
            events,
            outbox: Mutex::new(Outbox::default()),
            wake: Condvar::new(),
        });
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

    fn lock_waits(&self) -> MutexGuard<'_, Waits> {
        self.waits.lock().unwrap_or_else(PoisonError::into_inner)
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
    unsafe fn wait<T: Send>(
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
                            .wait(waits)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                    Some(deadline) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break WaitEnd::TimedOut;
                        }
                        waits = self
                            .waits_changed
                            .wait_timeout(waits, deadline - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
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

// --- CPU time per lane ---------------------------------------------------------------------------

/// CPU time the lane threads of one lane (by name, across restarts) spent running jobs.
#[derive(Debug, Default)]
pub struct CpuMeter {
    inner: Mutex<CpuSpent>,
}

#[derive(Debug, Default)]
struct CpuSpent {
    done: Duration,
    /// While a job runs: the lane thread's CPU clock and its reading when the job started. More
    /// than one after `%lane restart`, while the old interpreter's job ends beside the new one's.
    running: Vec<(libc::clockid_t, Duration)>,
}

/// The calling thread's CPU clock.
fn own_cpu_clock() -> Option<libc::clockid_t> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self names the calling thread, alive for the call; `clock` is writable.
    (unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &raw mut clock) } == 0).then_some(clock)
}

fn read_clock(clock: libc::clockid_t) -> Option<Duration> {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `time` is a valid timespec to write to; an invalid clock is reported, not UB.
    if unsafe { libc::clock_gettime(clock, &raw mut time) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(time.tv_sec).unwrap_or(0),
        u32::try_from(time.tv_nsec).unwrap_or(0),
    ))
}

impl CpuMeter {
    fn lock(&self) -> MutexGuard<'_, CpuSpent> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin(&self) {
        if let Some(clock) = own_cpu_clock() {
            if let Some(now) = read_clock(clock) {
                self.lock().running.push((clock, now));
            }
        }
    }

    fn end(&self) {
        let Some(clock) = own_cpu_clock() else { return };
        let mut spent = self.lock();
        if let Some(index) = spent.running.iter().position(|(running, _)| *running == clock) {
            let (_, started) = spent.running.swap_remove(index);
            if let Some(now) = read_clock(clock) {
                spent.done += now.saturating_sub(started);
            }
        }
    }

    /// The CPU time so far, including the running job's. The lane thread cannot exit while a
    /// job runs (it calls `end` first, under the same lock), so its clock is valid here.
    pub fn total(&self) -> Duration {
        let spent = self.lock();
        let running: Duration = spent
            .running
            .iter()
            .filter_map(|(clock, started)| Some(read_clock(*clock)?.saturating_sub(*started)))
            .sum();
        spent.done + running
    }
}

/// CPU meters by lane name. Rust data only.
static METERS: Mutex<BTreeMap<String, Arc<CpuMeter>>> = Mutex::new(BTreeMap::new());

/// The meter of the lane called `name` (created on first use, kept across restarts).
pub fn cpu_meter(name: &str) -> Arc<CpuMeter> {
    let mut meters = METERS.lock().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(meters.entry(name.to_owned()).or_default())
}

/// CPU seconds per lane name.
pub fn cpu_times() -> BTreeMap<String, f64> {
    METERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(name, meter)| (name.clone(), meter.total().as_secs_f64()))
        .collect()
}

/// Stream text waits here at most this long for more text.
const STREAM_FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// Stream text above this size is sent at once.
const STREAM_FLUSH_SIZE: usize = 64 * 1024;

/// Everything a lane sends to the kernel goes through here, so that the order is kept: stream
/// text is buffered (a `print` is a few `write` calls; one event each would cost more than the
/// print) and sent before any other event, on size, on `flush()`, or on a short timer.
#[derive(Debug)]
struct Outlet {
    events: UnboundedSender<Event>,
    outbox: Mutex<Outbox>,
    /// Wakes the timer thread when text starts waiting, or when the lane is gone.
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Outbox {
    pending: Option<PendingText>,
    closed: bool,
}

#[derive(Debug)]
struct PendingText {
    request: Option<RequestId>,
    name: StreamName,
    text: String,
    since: Instant,
}

impl Outlet {
    fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends the pending text; the caller holds the outbox lock, which orders all sends.
    fn send_locked(&self, outbox: &mut Outbox) {
        if let Some(pending) = outbox.pending.take() {
            // A kernel that is gone no longer cares.
            let _ = self.events.send(Event::Stream {
                request: pending.request,
                name: pending.name,
                text: pending.text,
            });
        }
    }

    fn write(&self, request: Option<RequestId>, name: StreamName, text: &str) {
        let mut outbox = self.lock();
        match &mut outbox.pending {
            Some(pending) if pending.request == request && pending.name == name => {
                pending.text.push_str(text);
            }
            _ => {
                let was_idle = outbox.pending.is_none();
                self.send_locked(&mut outbox);
                outbox.pending = Some(PendingText {
                    request,
                    name,
                    text: text.to_owned(),
                    since: Instant::now(),
                });
                if was_idle {
                    self.wake.notify_one();
                }
            }
        }
        if outbox
            .pending
            .as_ref()
            .is_some_and(|pending| pending.text.len() >= STREAM_FLUSH_SIZE)
        {
            self.send_locked(&mut outbox);
        }
    }

    fn send(&self, event: Event) {
        let mut outbox = self.lock();
        self.send_locked(&mut outbox);
        let _ = self.events.send(event);
    }

    fn send_pending(&self) {
        let mut outbox = self.lock();
        self.send_locked(&mut outbox);
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// The timer thread: sends text that has waited `STREAM_FLUSH_INTERVAL`.
    fn run_timer(&self) {
        let mut outbox = self.lock();
        loop {
            if outbox.closed {
                self.send_locked(&mut outbox);
                return;
            }
            match outbox
                .pending
                .as_ref()
                .map(|pending| pending.since + STREAM_FLUSH_INTERVAL)
            {
                None => {
                    outbox = self
                        .wake
                        .wait(outbox)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                Some(due) => {
                    let now = Instant::now();
                    if now >= due {
                        self.send_locked(&mut outbox);
                    } else {
                        outbox = self
                            .wake
                            .wait_timeout(outbox, due - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                }
            }
        }
    }
}

/// Spawns a thread with SIGINT blocked, so that the signal always reaches the main thread
/// (Python runs signal handlers there only, and only there is `time.sleep` woken by one).
pub fn spawn_without_sigint(
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    spawn_python_thread(name, None, body)
}

/// Stack for threads that run Python code: `CPython`'s C recursion limit (e.g. `repr` of a deeply
/// nested list, Jedi) assumes the usual 8 MiB of a main thread; Rust's default is 2 MiB.
pub const PYTHON_STACK: usize = 16 * 1024 * 1024;

/// As [`spawn_without_sigint`], with a stack of `stack_size` bytes when given.
pub fn spawn_python_thread(
    name: &str,
    stack_size: Option<usize>,
    body: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    // SAFETY: sigset operations on local sets; pthread_sigmask changes only the calling thread's
    // mask, which the new thread inherits, and is restored right after the spawn.
    let previous = unsafe {
        let mut block: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut block);
        libc::sigaddset(&raw mut block, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const block, &raw mut previous);
        previous
    };
    let mut builder = std::thread::Builder::new().name(name.into());
    if let Some(size) = stack_size {
        builder = builder.stack_size(size);
    }
    let thread = builder.spawn(body).expect("spawning a thread");
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &raw const previous, std::ptr::null_mut()) };
    thread
}

/// Lanes by interpreter ID. Rust data only: never a Python object.
static LANES: Mutex<BTreeMap<i64, Arc<LaneState>>> = Mutex::new(BTreeMap::new());

/// Makes `state` the lane state of the interpreter with ID `interpreter_id`; its next import of
/// `_parakernel` binds to it.
pub fn register(interpreter_id: i64, state: Arc<LaneState>) {
    LANES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(interpreter_id, state);
}

/// Forgets the interpreter's lane state (module objects that still exist keep their clone).
pub fn unregister(interpreter_id: i64) {
    LANES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&interpreter_id);
}

fn lookup(interpreter_id: i64) -> Option<Arc<LaneState>> {
    LANES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&interpreter_id)
        .cloned()
}

// --- the module definition -----------------------------------------------------------------------

/// Per-module state: one strong reference to the lane's state, from `Arc::into_raw`.
#[repr(C)]
struct ModuleState {
    lane: *const LaneState,
}

/// Static FFI tables that the interpreter reads (and, for the module definition, initializes once
/// in `PyModuleDef_Init`) under the import lock; nothing in Rust touches
/// them after their construction.
struct FfiTable<T>(std::cell::UnsafeCell<T>);

// SAFETY: the tables are only handed to CPython as pointers; see `FfiTable`.
unsafe impl<T> Sync for FfiTable<T> {}

impl<T> FfiTable<T> {
    fn get(&self) -> *mut T {
        self.0.get()
    }
}

static METHODS: FfiTable<[ffi::PyMethodDef; 10]> = FfiTable(std::cell::UnsafeCell::new([
    ffi::PyMethodDef {
        ml_name: c"write_stdout".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: write_stdout },
        ml_flags: ffi::METH_O,
        ml_doc: c"write_stdout(text, /)\n--\n\nWrite text to the cell's stdout; returns its length.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"write_stderr".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: write_stderr },
        ml_flags: ffi::METH_O,
        ml_doc: c"write_stderr(text, /)\n--\n\nWrite text to the cell's stderr; returns its length.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"publish".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunctionFast: publish },
        ml_flags: ffi::METH_FASTCALL,
        ml_doc: c"publish(msg_type, content_json, metadata_json, buffers, /)\n--\n\nPublish an iopub message for the lane's current request.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"input".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunctionFast: input },
        ml_flags: ffi::METH_FASTCALL,
        ml_doc: c"input(prompt, password, /)\n--\n\nAsk the client for a line of input; raises KeyboardInterrupt when interrupted.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"sleep".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: sleep },
        ml_flags: ffi::METH_O,
        ml_doc: c"sleep(seconds, /)\n--\n\nSleep; an interrupt of the lane wakes the lane thread with KeyboardInterrupt.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"call".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunctionFast: call },
        ml_flags: ffi::METH_FASTCALL,
        ml_doc: c"call(op, args_json, /)\n--\n\nAsk the kernel (lanes, wait, interrupt, restart, stop); returns (ok, reply_json_or_message). Interruptible.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"cpu_times".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: cpu_times_json },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: c"cpu_times()\n--\n\nJSON object: CPU seconds each lane's thread spent running cells.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"allow_stdin".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: allow_stdin },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: c"allow_stdin()\n--\n\nWhether the running request's client accepts input requests.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"flush".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: flush },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: c"flush()\n--\n\nSend the lane's buffered stream text now.".as_ptr(),
    },
    ffi::PyMethodDef::zeroed(),
]));

static SLOTS: FfiTable<[ffi::PyModuleDef_Slot; 3]> = FfiTable(std::cell::UnsafeCell::new([
    ffi::PyModuleDef_Slot {
        slot: ffi::Py_mod_exec,
        value: module_exec as *mut c_void,
    },
    ffi::PyModuleDef_Slot {
        slot: ffi::Py_mod_multiple_interpreters,
        value: ffi::Py_MOD_PER_INTERPRETER_GIL_SUPPORTED,
    },
    ffi::PyModuleDef_Slot {
        slot: 0,
        value: ptr::null_mut(),
    },
]));

static MODULE: FfiTable<ffi::PyModuleDef> =
    FfiTable(std::cell::UnsafeCell::new(ffi::PyModuleDef {
    m_base: ffi::PyModuleDef_HEAD_INIT,
    m_name: MODULE_NAME.as_ptr(),
    m_doc: c"parakernel's per-lane bridge to the kernel: output, display, input, sleep and lane calls.".as_ptr(),
    #[allow(clippy::cast_possible_wrap)] // a pointer-sized struct
    m_size: std::mem::size_of::<ModuleState>() as ffi::Py_ssize_t,
    m_methods: ptr::null_mut(),
    m_slots: ptr::null_mut(),
    m_traverse: None,
    m_clear: None,
    m_free: Some(module_free),
}));

/// The init function for `PyImport_AppendInittab`: returns the module definition, and Python
/// creates one module per interpreter from it (multi-phase init).
///
/// # Safety
/// Called by the interpreter during import (pass it to `PyImport_AppendInittab`), with the
/// importing interpreter's GIL held.
pub unsafe extern "C" fn init_module() -> *mut ffi::PyObject {
    let def = MODULE.get();
    // SAFETY: CPython calls this with the importing interpreter's GIL held and the import lock
    // taken, so no other thread touches the static tables; they live for the whole process.
    unsafe {
        (*def).m_methods = METHODS.get().cast();
        (*def).m_slots = SLOTS.get().cast();
        ffi::PyModuleDef_Init(def)
    }
}

unsafe extern "C" fn module_exec(module: *mut ffi::PyObject) -> c_int {
    // SAFETY: CPython runs the exec slot with the importing interpreter's GIL held; `module` is
    // the new module, whose state CPython allocated (zeroed) with `m_size` bytes.
    unsafe {
        let id = ffi::PyInterpreterState_GetID(ffi::PyInterpreterState_Get());
        let Some(lane) = lookup(id) else {
            ffi::PyErr_SetString(
                ffi::PyExc_ImportError,
                c"_parakernel can only be imported inside a parakernel lane".as_ptr(),
            );
            return -1;
        };
        let state = ffi::PyModule_GetState(module).cast::<ModuleState>();
        if state.is_null() {
            return -1;
        }
        (*state).lane = Arc::into_raw(lane);
    }
    0
}

unsafe extern "C" fn module_free(module: *mut c_void) {
    // SAFETY: CPython frees the module with its interpreter's GIL held; the state is ours and
    // `lane`, when set, came from `Arc::into_raw` in `module_exec` and is released only here.
    unsafe {
        let state = ffi::PyModule_GetState(module.cast()).cast::<ModuleState>();
        if !state.is_null() && !(*state).lane.is_null() {
            drop(Arc::from_raw((*state).lane));
            (*state).lane = ptr::null();
        }
    }
}

// --- the functions -------------------------------------------------------------------------------

/// The value of `$option`, or a NULL return from the calling C function. Every helper that
/// returns `None` here has already set the Python exception, as CPython's convention asks.
macro_rules! or_null {
    ($option:expr) => {
        match $option {
            Some(value) => value,
            None => return ptr::null_mut(),
        }
    };
}

/// The lane state behind `module`.
///
/// # Safety
/// The caller holds the GIL of the module's interpreter and `module` is a live `_parakernel`
/// module (the `self` of one of its functions). The reference is valid while `module` is.
unsafe fn lane_of<'m>(module: *mut ffi::PyObject) -> Option<&'m LaneState> {
    // SAFETY: as the caller promises; the pointer was set by `module_exec` and is freed only by
    // `module_free`, after the module is gone.
    unsafe {
        let state = ffi::PyModule_GetState(module).cast::<ModuleState>();
        if state.is_null() || (*state).lane.is_null() {
            ffi::PyErr_SetString(
                ffi::PyExc_RuntimeError,
                c"_parakernel is not initialized".as_ptr(),
            );
            return None;
        }
        Some(&*(*state).lane)
    }
}

/// Sets a Python exception of type `kind` with `message`. Exceptions are made here, at the edge.
///
/// # Safety
/// The caller holds the current interpreter's GIL; `kind` is an exception type.
unsafe fn raise(kind: *mut ffi::PyObject, message: &str) {
    let text = std::ffi::CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // SAFETY: GIL held (caller); both pointers are valid for the call.
    unsafe { ffi::PyErr_SetString(kind, text.as_ptr()) };
}

/// The UTF-8 text of a `str` object (borrowed from it), or `None` with an exception set.
///
/// # Safety
/// The caller holds the GIL of the interpreter that owns `object`, a valid object pointer that
/// stays alive while the result is used.
unsafe fn text_of<'a>(object: *mut ffi::PyObject, what: &str) -> Option<Cow<'a, str>> {
    // SAFETY: GIL held and `object` valid and alive (caller). The UTF-8 buffer is cached in the
    // str object, so it lives as long as the object does.
    unsafe {
        if ffi::PyUnicode_Check(object) == 0 {
            let type_name = CStr::from_ptr((*ffi::Py_TYPE(object)).tp_name).to_string_lossy();
            raise(
                ffi::PyExc_TypeError,
                &format!("{what} must be str, not {type_name}"),
            );
            return None;
        }
        let mut size: ffi::Py_ssize_t = 0;
        let data = ffi::PyUnicode_AsUTF8AndSize(object, &raw mut size);
        if data.is_null() {
            // Lone surrogates cannot be UTF-8: write them replaced rather than fail the print.
            ffi::PyErr_Clear();
            let bytes =
                ffi::PyUnicode_AsEncodedString(object, c"utf-8".as_ptr(), c"replace".as_ptr());
            if bytes.is_null() {
                return None;
            }
            let mut raw: *mut std::ffi::c_char = ptr::null_mut();
            let text = if ffi::PyBytes_AsStringAndSize(bytes, &raw mut raw, &raw mut size) == 0 {
                let slice = std::slice::from_raw_parts(
                    raw.cast::<u8>(),
                    usize::try_from(size).unwrap_or(0),
                );
                Some(Cow::Owned(String::from_utf8_lossy(slice).into_owned()))
            } else {
                None
            };
            ffi::Py_DecRef(bytes);
            return text;
        }
        let slice =
            std::slice::from_raw_parts(data.cast::<u8>(), usize::try_from(size).unwrap_or(0));
        // PyUnicode_AsUTF8AndSize returns valid UTF-8.
        Some(Cow::Borrowed(std::str::from_utf8_unchecked(slice)))
    }
}

unsafe fn write_stream(
    module: *mut ffi::PyObject,
    text: *mut ffi::PyObject,
    name: StreamName,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the lane interpreter's GIL held; `module` is `self` and
    // `text` the argument, both alive for the call.
    unsafe {
        let lane = or_null!(lane_of(module));
        let string = or_null!(text_of(text, "write() argument"));
        if !string.is_empty() {
            lane.write_stream(name, &string);
        }
        ffi::PyLong_FromSsize_t(ffi::PyUnicode_GetLength(text))
    }
}

unsafe extern "C" fn write_stdout(
    module: *mut ffi::PyObject,
    text: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded as received from CPython.
    unsafe { write_stream(module, text, StreamName::Stdout) }
}

unsafe extern "C" fn write_stderr(
    module: *mut ffi::PyObject,
    text: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded as received from CPython.
    unsafe { write_stream(module, text, StreamName::Stderr) }
}

/// The positional arguments of a `METH_FASTCALL` call, checked for count.
///
/// # Safety
/// `args` points at `nargs` valid object pointers (the vectorcall convention); GIL held.
unsafe fn fastcall_args<'a>(
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    expected: usize,
    name: &str,
) -> Option<&'a [*mut ffi::PyObject]> {
    let count = usize::try_from(nargs).unwrap_or(0);
    if count != expected {
        // SAFETY: GIL held (caller).
        unsafe {
            raise(
                ffi::PyExc_TypeError,
                &format!("{name}() takes {expected} arguments ({count} given)"),
            );
        }
        return None;
    }
    // SAFETY: CPython passes `nargs` argument pointers at `args` (caller).
    Some(unsafe { std::slice::from_raw_parts(args, count) })
}

unsafe fn parse_json(text: &str, what: &str) -> Option<Value> {
    match serde_json::from_str(text) {
        Ok(value) => Some(value),
        Err(error) => {
            // SAFETY: GIL held (caller).
            unsafe {
                raise(
                    ffi::PyExc_ValueError,
                    &format!("{what} is not valid JSON: {error}"),
                );
            }
            None
        }
    }
}

/// Reads a list of `bytes` (or `None`) into owned buffers.
///
/// # Safety
/// GIL held; `list` is a valid object pointer.
unsafe fn buffers_of(list: *mut ffi::PyObject) -> Option<Vec<Vec<u8>>> {
    // SAFETY: GIL held (caller); items are borrowed from the list, which the caller keeps alive,
    // and copied before returning.
    unsafe {
        if list == ffi::Py_None() {
            return Some(Vec::new());
        }
        if ffi::PyList_Check(list) == 0 {
            raise(
                ffi::PyExc_TypeError,
                "buffers must be a list of bytes or None",
            );
            return None;
        }
        let count = ffi::PyList_Size(list);
        let mut buffers = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        for index in 0..count {
            let item = ffi::PyList_GetItem(list, index);
            if item.is_null() {
                return None;
            }
            if ffi::PyBytes_Check(item) == 0 {
                raise(
                    ffi::PyExc_TypeError,
                    "buffers must be a list of bytes or None",
                );
                return None;
            }
            let mut data: *mut std::ffi::c_char = ptr::null_mut();
            let mut size: ffi::Py_ssize_t = 0;
            if ffi::PyBytes_AsStringAndSize(item, &raw mut data, &raw mut size) != 0 {
                return None;
            }
            buffers.push(
                std::slice::from_raw_parts(data.cast::<u8>(), usize::try_from(size).unwrap_or(0))
                    .to_vec(),
            );
        }
        Some(buffers)
    }
}

unsafe extern "C" fn publish(
    module: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the lane interpreter's GIL held, `module` is `self`, the
    // arguments are alive for the call.
    unsafe {
        let lane = or_null!(lane_of(module));
        let args = or_null!(fastcall_args(args, nargs, 4, "publish"));
        let msg_type = or_null!(text_of(args[0], "msg_type").map(Cow::into_owned));
        let content = or_null!(text_of(args[1], "content"));
        let metadata = or_null!(text_of(args[2], "metadata"));
        let content = or_null!(parse_json(&content, "content"));
        let metadata = match parse_json(&metadata, "metadata") {
            Some(Value::Object(map)) => map,
            Some(Value::Null) => Map::new(),
            Some(_) => {
                raise(ffi::PyExc_ValueError, "metadata must be a JSON object");
                return ptr::null_mut();
            }
            None => return ptr::null_mut(),
        };
        let buffers = or_null!(buffers_of(args[3]));
        lane.send(Event::Publish {
            request: lane.request(),
            msg_type,
            content,
            metadata,
            buffers,
        });
        ffi::Py_NewRef(ffi::Py_None())
    }
}

unsafe extern "C" fn input(
    module: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the lane interpreter's GIL held, `module` is `self`, the
    // arguments are alive for the call. The GIL is released inside `wait` only, where no Python
    // object is touched.
    unsafe {
        let lane = or_null!(lane_of(module));
        let args = or_null!(fastcall_args(args, nargs, 2, "input"));
        let prompt = or_null!(text_of(args[0], "prompt").map(Cow::into_owned));
        let password = match ffi::PyObject_IsTrue(args[1]) {
            -1 => return ptr::null_mut(),
            truth => truth == 1,
        };
        let Some(request) = lane.request() else {
            raise(ffi::PyExc_RuntimeError, "input() needs a running request");
            return ptr::null_mut();
        };
        {
            // Marked as waiting before the request goes out, so a fast reply is not dropped.
            let mut waits = lane.lock_waits();
            if matches!(waits.input, InputSlot::Waiting) {
                drop(waits);
                raise(
                    ffi::PyExc_RuntimeError,
                    "another thread of this lane is already waiting for input",
                );
                return ptr::null_mut();
            }
            waits.input = InputSlot::Waiting;
        }
        let ask = || {
            lane.send(Event::InputRequest {
                request,
                prompt,
                password,
            });
        };
        let end = lane.wait(None, ask, |waits| match std::mem::take(&mut waits.input) {
            InputSlot::Replied(value) => Some(value),
            other => {
                waits.input = other;
                None
            }
        });
        match end {
            WaitEnd::Ready(value) => {
                #[allow(clippy::cast_possible_wrap)] // a String's length fits isize
                let size = value.len() as ffi::Py_ssize_t;
                ffi::PyUnicode_FromStringAndSize(value.as_ptr().cast(), size)
            }
            end => {
                // A reply that comes later is dropped, not kept for the next input().
                lane.lock_waits().input = InputSlot::Idle;
                raise_for(&end);
                ptr::null_mut()
            }
        }
    }
}

/// Raises what ends a wait that gave no value: `SystemExit` when the interpreter is ending,
/// else `KeyboardInterrupt`. On the main interpreter's main thread an interrupt also tripped
/// SIGINT: its handler raises then, so the signal is not left pending.
///
/// # Safety
/// The calling thread holds the current interpreter's GIL.
unsafe fn raise_for<T>(end: &WaitEnd<T>) {
    // SAFETY: GIL held (caller). PyErr_CheckSignals does nothing off the main thread.
    unsafe {
        if matches!(end, WaitEnd::Raised) {
            // Already set.
        } else if matches!(end, WaitEnd::Closed) {
            ffi::PyErr_SetNone(ffi::PyExc_SystemExit);
        } else if ffi::PyErr_CheckSignals() == 0 {
            ffi::PyErr_SetNone(ffi::PyExc_KeyboardInterrupt);
        }
    }
}

unsafe extern "C" fn sleep(
    module: *mut ffi::PyObject,
    seconds: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the lane interpreter's GIL held; `module` is `self` and
    // `seconds` the argument, both alive for the call. The GIL is released inside `wait` only.
    unsafe {
        let lane = or_null!(lane_of(module));
        let seconds = ffi::PyFloat_AsDouble(seconds);
        // -1.0 is PyFloat_AsDouble's error value (exactly).
        #[allow(clippy::float_cmp)]
        if seconds == -1.0 && !ffi::PyErr_Occurred().is_null() {
            return ptr::null_mut();
        }
        if seconds.is_nan() {
            raise(ffi::PyExc_ValueError, "Invalid value NaN (not a number)");
            return ptr::null_mut();
        }
        if seconds < 0.0 {
            raise(ffi::PyExc_ValueError, "sleep length must be non-negative");
            return ptr::null_mut();
        }
        // Far enough to mean "forever" without overflowing an Instant.
        let duration = Duration::try_from_secs_f64(seconds.min(1e9)).unwrap_or(Duration::MAX);
        let deadline = Instant::now().checked_add(duration);
        match lane.wait(deadline, || {}, |_| None::<()>) {
            WaitEnd::Ready(()) | WaitEnd::TimedOut => ffi::Py_NewRef(ffi::Py_None()),
            end => {
                raise_for(&end);
                ptr::null_mut()
            }
        }
    }
}

/// The kernel-side request named by `op` with JSON arguments `args`.
fn parse_call(op: &str, args: &Value) -> Result<LaneCall, String> {
    let lane = || {
        args.get("lane")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("{op} needs a lane name"))
    };
    match op {
        "lanes" => Ok(LaneCall::Lanes),
        "wait" => {
            let lanes = match args.get("lanes") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(names)) => names
                    .iter()
                    .map(|name| name.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or("wait takes a list of lane names")?,
                Some(_) => return Err("wait takes a list of lane names".into()),
            };
            Ok(LaneCall::Wait { lanes })
        }
        "interrupt" => Ok(LaneCall::Interrupt { lane: lane()? }),
        "restart" => Ok(LaneCall::Restart { lane: lane()? }),
        "stop" => Ok(LaneCall::Stop { lane: lane()? }),
        _ => Err(format!(
            "unknown lane call {op:?}; known: lanes, wait, interrupt, restart, stop"
        )),
    }
}

unsafe extern "C" fn call(
    module: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the lane interpreter's GIL held, `module` is `self`, the
    // arguments are alive for the call. The GIL is released inside `wait` only.
    unsafe {
        let lane = or_null!(lane_of(module));
        let args = or_null!(fastcall_args(args, nargs, 2, "call"));
        let op = or_null!(text_of(args[0], "op").map(Cow::into_owned));
        let arguments = or_null!(text_of(args[1], "args"));
        let arguments = or_null!(parse_json(&arguments, "args"));
        let request = match parse_call(&op, &arguments) {
            Ok(request) => request,
            Err(message) => {
                raise(ffi::PyExc_ValueError, &message);
                return ptr::null_mut();
            }
        };
        let id = NEXT_CALL_ID.fetch_add(1, Ordering::Relaxed);
        lane.lock_waits().calls.insert(id, None);
        let ask = || {
            lane.send(Event::Call {
                lane: lane.lane.clone(),
                id,
                request: lane.request(),
                call: request,
            });
        };
        let end = lane.wait(None, ask, |waits| match waits.calls.get(&id) {
            Some(Some(_)) => waits.calls.remove(&id).flatten(),
            _ => None,
        });
        // An answer that comes after an interrupt is dropped (`reply_call` finds no slot).
        lane.lock_waits().calls.remove(&id);
        let (ok, text) = match end {
            WaitEnd::Ready(Ok(value)) => (true, value.to_string()),
            WaitEnd::Ready(Err(message)) => (false, message),
            end => {
                raise_for(&end);
                return ptr::null_mut();
            }
        };
        #[allow(clippy::cast_possible_wrap)] // a String's length fits isize
        let text = ffi::PyUnicode_FromStringAndSize(text.as_ptr().cast(), text.len() as ffi::Py_ssize_t);
        if text.is_null() {
            return ptr::null_mut();
        }
        // "N" steals both new references.
        ffi::Py_BuildValue(
            c"(NN)".as_ptr(),
            ffi::PyBool_FromLong(std::ffi::c_long::from(ok)),
            text,
        )
    }
}

unsafe extern "C" fn cpu_times_json(
    _module: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let text = serde_json::to_string(&cpu_times()).unwrap_or_else(|_| "{}".into());
    #[allow(clippy::cast_possible_wrap)] // a String's length fits isize
    let size = text.len() as ffi::Py_ssize_t;
    // SAFETY: called by CPython with the current interpreter's GIL held; the text is UTF-8.
    unsafe { ffi::PyUnicode_FromStringAndSize(text.as_ptr().cast(), size) }
}

unsafe extern "C" fn allow_stdin(
    module: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the lane interpreter's GIL held; `module` is `self`.
    unsafe {
        let lane = or_null!(lane_of(module));
        ffi::PyBool_FromLong(std::ffi::c_long::from(
            lane.allow_stdin.load(Ordering::Acquire),
        ))
    }
}

unsafe extern "C" fn flush(
    module: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the lane interpreter's GIL held; `module` is `self`.
    unsafe {
        let lane = or_null!(lane_of(module));
        lane.flush();
        ffi::Py_NewRef(ffi::Py_None())
    }
}
