//! The `_parakernel` extension module (multi-phase init, per-interpreter GIL): stream writers,
//! display publishing and `input()` for the cells of a lane. Keeps no Python objects in
//! process-wide state: the process-wide registry holds only Rust data ([`LaneState`]), and each
//! module object's state points at its lane's entry.
//!
//! Ownership: the `python` module creates a lane's [`LaneState`] and [`register`]s it under the
//! ID of the lane's interpreter before that interpreter imports `_parakernel`. The module's exec
//! slot takes an `Arc` clone into its per-module state; the module's `m_free` drops it.

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

use crate::kernel::executor::{Event, RequestId, StreamName};

/// The name every interpreter imports the module under.
pub const MODULE_NAME: &CStr = c"_parakernel";

/// What a lane's `input()` is doing.
#[derive(Debug)]
enum InputSlot {
    Idle,
    /// `input()` has sent its `input_request` and waits for the reply.
    Waiting,
    Replied(String),
    Interrupted,
}

/// The Rust side of one lane, shared by the lane's thread, the executor (which delivers input
/// replies and interrupts) and every `_parakernel` call made by the lane's Python threads.
#[derive(Debug)]
pub struct LaneState {
    outlet: Arc<Outlet>,
    /// The request the lane runs or ran last, plus one; 0 before the first request.
    request: AtomicU64,
    allow_stdin: AtomicBool,
    input: Mutex<InputSlot>,
    input_changed: Condvar,
}

impl Drop for LaneState {
    fn drop(&mut self) {
        self.outlet.close();
    }
}

impl LaneState {
    /// A lane's state; starts the thread that sends buffered stream text on a short timer.
    pub fn new(events: UnboundedSender<Event>) -> Self {
        let outlet = Arc::new(Outlet {
            events,
            outbox: Mutex::new(Outbox::default()),
            wake: Condvar::new(),
        });
        let flusher = Arc::clone(&outlet);
        spawn_without_sigint("parakernel-streams", move || flusher.run_timer());
        LaneState {
            outlet,
            request: AtomicU64::new(0),
            allow_stdin: AtomicBool::new(false),
            input: Mutex::new(InputSlot::Idle),
            input_changed: Condvar::new(),
        }
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

    /// Hands the client's `input_reply` to a waiting `input()`. Returns false (and drops the
    /// value) when no `input()` is waiting.
    pub fn reply_input(&self, value: String) -> bool {
        let mut slot = self.input.lock().unwrap_or_else(PoisonError::into_inner);
        if !matches!(*slot, InputSlot::Waiting) {
            return false;
        }
        *slot = InputSlot::Replied(value);
        self.input_changed.notify_all();
        true
    }

    /// Wakes a waiting `input()`, which then raises `KeyboardInterrupt`. Returns whether one was
    /// waiting.
    pub fn interrupt_input(&self) -> bool {
        let mut slot = self.input.lock().unwrap_or_else(PoisonError::into_inner);
        if !matches!(*slot, InputSlot::Waiting) {
            return false;
        }
        *slot = InputSlot::Interrupted;
        self.input_changed.notify_all();
        true
    }

    /// Blocks the calling thread until the reply or an interrupt arrives. `None` means
    /// interrupted. The caller has sent the `input_request` after [`Self::begin_input`].
    fn wait_input(&self) -> Option<String> {
        let mut slot = self.input.lock().unwrap_or_else(PoisonError::into_inner);
        while matches!(*slot, InputSlot::Waiting) {
            slot = self
                .input_changed
                .wait(slot)
                .unwrap_or_else(PoisonError::into_inner);
        }
        match std::mem::replace(&mut *slot, InputSlot::Idle) {
            InputSlot::Replied(value) => Some(value),
            _ => None,
        }
    }

    /// Marks `input()` as waiting before its request goes out, so a fast reply is not dropped.
    /// Returns false when another thread of the lane is already waiting for input.
    fn begin_input(&self) -> bool {
        let mut slot = self.input.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*slot, InputSlot::Waiting) {
            return false;
        }
        *slot = InputSlot::Waiting;
        true
    }
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
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .expect("spawning a thread");
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

static METHODS: FfiTable<[ffi::PyMethodDef; 7]> = FfiTable(std::cell::UnsafeCell::new([
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
    m_doc: c"parakernel's per-lane bridge to the kernel: output, display and input.".as_ptr(),
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
        let Some(lane) = lane_of(module) else {
            return ptr::null_mut();
        };
        let Some(string) = text_of(text, "write() argument") else {
            return ptr::null_mut();
        };
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
        let Some(lane) = lane_of(module) else {
            return ptr::null_mut();
        };
        let Some(args) = fastcall_args(args, nargs, 4, "publish") else {
            return ptr::null_mut();
        };
        let Some(msg_type) = text_of(args[0], "msg_type").map(Cow::into_owned) else {
            return ptr::null_mut();
        };
        let Some(content) = text_of(args[1], "content") else {
            return ptr::null_mut();
        };
        let Some(metadata) = text_of(args[2], "metadata") else {
            return ptr::null_mut();
        };
        let Some(content) = parse_json(&content, "content") else {
            return ptr::null_mut();
        };
        let metadata = match parse_json(&metadata, "metadata") {
            Some(Value::Object(map)) => map,
            Some(Value::Null) => Map::new(),
            Some(_) => {
                raise(ffi::PyExc_ValueError, "metadata must be a JSON object");
                return ptr::null_mut();
            }
            None => return ptr::null_mut(),
        };
        let Some(buffers) = buffers_of(args[3]) else {
            return ptr::null_mut();
        };
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
    // arguments are alive for the call. The GIL is released around the wait only, and no Python
    // object is touched while it is released.
    unsafe {
        let Some(lane) = lane_of(module) else {
            return ptr::null_mut();
        };
        let Some(args) = fastcall_args(args, nargs, 2, "input") else {
            return ptr::null_mut();
        };
        let Some(prompt) = text_of(args[0], "prompt").map(Cow::into_owned) else {
            return ptr::null_mut();
        };
        let password = match ffi::PyObject_IsTrue(args[1]) {
            -1 => return ptr::null_mut(),
            truth => truth == 1,
        };
        let Some(request) = lane.request() else {
            raise(ffi::PyExc_RuntimeError, "input() needs a running request");
            return ptr::null_mut();
        };
        if !lane.begin_input() {
            raise(
                ffi::PyExc_RuntimeError,
                "another thread of this lane is already waiting for input",
            );
            return ptr::null_mut();
        }
        lane.send(Event::InputRequest {
            request,
            prompt,
            password,
        });
        let thread_state = ffi::PyEval_SaveThread();
        let reply = lane.wait_input();
        ffi::PyEval_RestoreThread(thread_state);
        if let Some(value) = reply {
            #[allow(clippy::cast_possible_wrap)] // a String's length fits isize
            let size = value.len() as ffi::Py_ssize_t;
            return ffi::PyUnicode_FromStringAndSize(value.as_ptr().cast(), size);
        }
        // On the main interpreter's main thread the interrupt also tripped SIGINT: let its
        // handler raise, so the signal is not left pending for later.
        if ffi::PyErr_CheckSignals() == 0 {
            ffi::PyErr_SetNone(ffi::PyExc_KeyboardInterrupt);
        }
        ptr::null_mut()
    }
}

unsafe extern "C" fn allow_stdin(
    module: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the lane interpreter's GIL held; `module` is `self`.
    unsafe {
        let Some(lane) = lane_of(module) else {
            return ptr::null_mut();
        };
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
        let Some(lane) = lane_of(module) else {
            return ptr::null_mut();
        };
        lane.flush();
        ffi::Py_NewRef(ffi::Py_None())
    }
}
