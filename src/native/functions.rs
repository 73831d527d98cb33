//! The functions of `_parakernel`: stream writers, display publishing, `input()`, the
//! interruptible `sleep`, lane calls, CPU times, `allow_stdin` and `flush`. Each finds its lane
//! through the module it is called on.

use std::borrow::Cow;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3_ffi as ffi;
use serde_json::{Map, Value};

use super::arguments::{buffers_of, fastcall_args, parse_json, raise, text_of};
use super::cpu::cpu_times;
use super::lane_state::{InputSlot, LaneState, WaitEnd};
use super::module::lane_of;
use crate::lanes::{Event, LaneCall, Output, StreamName};

/// Lane call ids are unique in the process, so a reply meant for an interpreter that was
/// replaced can never be taken for one of its successor's calls.
static NEXT_CALL_ID: AtomicU64 = AtomicU64::new(1);

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

pub(super) unsafe extern "C" fn write_stdout(
    module: *mut ffi::PyObject,
    text: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded as received from CPython.
    unsafe { write_stream(module, text, StreamName::Stdout) }
}

pub(super) unsafe extern "C" fn write_stderr(
    module: *mut ffi::PyObject,
    text: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded as received from CPython.
    unsafe { write_stream(module, text, StreamName::Stderr) }
}

pub(super) unsafe extern "C" fn publish(
    module: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the lane interpreter's GIL held, `module` is `self`, the
    // arguments are alive for the call.
    unsafe {
        let lane = or_null!(lane_of(module));
        let args = or_null!(fastcall_args(args, nargs, 4, "publish"));
        let msg_type = or_null!(text_of(args[0], "msg_type"));
        let content = or_null!(text_of(args[1], "content"));
        let metadata = or_null!(text_of(args[2], "metadata"));
        let output = match Output::parse(&msg_type, content.as_bytes()) {
            Ok(output) => output,
            Err(error) => {
                raise(ffi::PyExc_ValueError, &error);
                return ptr::null_mut();
            }
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
        let buffers = or_null!(buffers_of(args[3]));
        lane.send(Event::Output { request: lane.request(), output, metadata, buffers });
        ffi::Py_NewRef(ffi::Py_None())
    }
}

pub(super) unsafe extern "C" fn input(
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

pub(super) unsafe extern "C" fn sleep(
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
/// The lane call `op` with `args` (a JSON object): the names are [`LaneCall`]'s own.
fn parse_call(op: &str, args: &Value) -> Result<LaneCall, String> {
    let mut call = match args {
        Value::Object(fields) => fields.clone(),
        Value::Null => serde_json::Map::new(),
        _ => return Err("a lane call's arguments are a JSON object".into()),
    };
    call.insert("op".into(), Value::from(op));
    serde_json::from_value(Value::Object(call)).map_err(|error| format!("lane call {op:?}: {error}"))
}

pub(super) unsafe extern "C" fn call(
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
                lane: lane.lane().clone(),
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

pub(super) unsafe extern "C" fn cpu_times_json(
    _module: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let text = serde_json::to_string(&cpu_times()).unwrap_or_else(|_| "{}".into());
    #[allow(clippy::cast_possible_wrap)] // a String's length fits isize
    let size = text.len() as ffi::Py_ssize_t;
    // SAFETY: called by CPython with the current interpreter's GIL held; the text is UTF-8.
    unsafe { ffi::PyUnicode_FromStringAndSize(text.as_ptr().cast(), size) }
}

pub(super) unsafe extern "C" fn allow_stdin(
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

pub(super) unsafe extern "C" fn flush(
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

/// `channels()`: a JSON list of every channel's stats.
pub(super) unsafe extern "C" fn channels_json(
    _module: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let text = serde_json::to_string(&crate::channels::registry().stats()).unwrap_or_else(|_| "[]".into());
    // SAFETY: called by CPython with the GIL held; the text outlives the call.
    unsafe { ffi::PyUnicode_FromStringAndSize(text.as_ptr().cast(), isize::try_from(text.len()).unwrap_or(0)) }
}

/// The deadline of a `timeout` argument: `None` waits for good; seconds otherwise (0: not at
/// all). `Err` with an exception set when it is neither.
unsafe fn deadline_of(timeout: *mut ffi::PyObject) -> Result<Option<Instant>, ()> {
    // SAFETY: GIL held, `timeout` alive (caller).
    unsafe {
        if timeout == ffi::Py_None() {
            return Ok(None);
        }
        let seconds = ffi::PyFloat_AsDouble(timeout);
        #[allow(clippy::float_cmp)]
        if seconds == -1.0 && !ffi::PyErr_Occurred().is_null() {
            return Err(());
        }
        if seconds.is_nan() || seconds < 0.0 {
            raise(ffi::PyExc_ValueError, "timeout must be None or a non-negative number of seconds");
            return Err(());
        }
        let duration = Duration::try_from_secs_f64(seconds.min(1e9)).unwrap_or(Duration::MAX);
        Ok(Instant::now().checked_add(duration))
    }
}

/// A `maxsize` argument: 0 (unbounded) or more, or `None` with an exception set.
unsafe fn maxsize_of(maxsize: *mut ffi::PyObject) -> Option<usize> {
    // SAFETY: GIL held, `maxsize` alive (caller).
    unsafe {
        let maxsize = ffi::PyLong_AsSsize_t(maxsize);
        if maxsize < 0 {
            if ffi::PyErr_Occurred().is_null() {
                raise(ffi::PyExc_ValueError, "maxsize must be 0 (unbounded) or more");
            }
            return None;
        }
        Some(maxsize.unsigned_abs())
    }
}

/// The channel `name` (opened with `maxsize`), or `None` with an exception set.
unsafe fn open_channel(name: &str, maxsize: usize) -> Option<Arc<crate::channels::Channel>> {
    match crate::channels::registry().channel(name, maxsize) {
        Ok(channel) => Some(channel),
        Err(error) => {
            // SAFETY: GIL held (caller).
            unsafe { raise(ffi::PyExc_ValueError, &error.to_string()) };
            None
        }
    }
}

/// Waits, as every `_parakernel` wait does (GIL released; an interrupt of the lane, or the lane's
/// end, ends it), until `attempt` succeeds on `channel`. `attempt` runs with no lock of the lane
/// held (a send calls the wakers of every waiting lane, this one's too), and again after every
/// change of the channel: a counter the channel's waker bumps tells the wait that one happened,
/// also between an attempt and the wait.
unsafe fn wait_on_channel<T: Send>(
    lane: &LaneState,
    channel: &Arc<crate::channels::Channel>,
    deadline: Option<Instant>,
    mut attempt: impl FnMut() -> Option<T>,
) -> WaitEnd<T> {
    // SAFETY: `lane` is the module state's lane, which holds a strong reference made by
    // `Arc::into_raw` (see `module`): one more is taken for the waker, which a sender may still
    // call just after the wait ends.
    let state = unsafe {
        Arc::increment_strong_count(std::ptr::from_ref(lane));
        Arc::from_raw(std::ptr::from_ref(lane))
    };
    let changes = Arc::new(AtomicU64::new(0));
    let waker: crate::channels::Waker = {
        let changes = Arc::clone(&changes);
        Arc::new(move || {
            changes.fetch_add(1, Ordering::SeqCst);
            state.wake_waits();
        })
    };
    let subscription = channel.subscribe(waker);
    let end = loop {
        let seen = changes.load(Ordering::SeqCst);
        if let Some(value) = attempt() {
            break WaitEnd::Ready(value);
        }
        let moved_on = |_: &mut super::lane_state::Waits| (changes.load(Ordering::SeqCst) != seen).then_some(());
        // SAFETY: GIL held (caller); `moved_on` touches no Python object.
        match unsafe { lane.wait(deadline, || {}, moved_on) } {
            WaitEnd::Ready(()) => {}
            WaitEnd::TimedOut => break WaitEnd::TimedOut,
            WaitEnd::Interrupted => break WaitEnd::Interrupted,
            WaitEnd::Closed => break WaitEnd::Closed,
            WaitEnd::Raised => break WaitEnd::Raised,
        }
    };
    channel.unsubscribe(subscription);
    end
}

/// `channel_send(name, maxsize, value, timeout)`: sends, waiting while the channel is bounded and
/// full (timeout 0: not at all); returns `"sent"`, `"full"` (the timeout passed) or `"closed"`.
/// An interrupt of the lane raises `KeyboardInterrupt` and sends nothing. The value becomes owned
/// Rust data here, in the sending interpreter.
pub(super) unsafe extern "C" fn channel_send(
    module: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the lane interpreter's GIL held, `module` is `self`, the
    // arguments are alive for the call. The GIL is released inside the wait only.
    unsafe {
        let lane = or_null!(lane_of(module));
        let args = or_null!(fastcall_args(args, nargs, 4, "channel_send"));
        let name = or_null!(text_of(args[0], "name"));
        let maxsize = or_null!(maxsize_of(args[1]));
        let Ok(deadline) = deadline_of(args[3]) else { return ptr::null_mut() };
        let channel = or_null!(open_channel(&name, maxsize));
        let mut value = Some(or_null!(super::values::to_value(args[2], &lane.lane().name())));
        let target = Arc::clone(&channel);
        let end = wait_on_channel(lane, &channel, deadline, move || {
            let attempt = value.take()?;
            match target.send(attempt, Some(Instant::now()), &|| false) {
                Ok(()) => Some(c"sent"),
                Err(crate::channels::SendError::Closed(_)) => Some(c"closed"),
                Err(crate::channels::SendError::Full(back) | crate::channels::SendError::Stopped(back)) => {
                    value = Some(back);
                    None
                }
            }
        });
        match end {
            WaitEnd::Ready(status) => ffi::PyUnicode_FromString(status.as_ptr()),
            WaitEnd::TimedOut => ffi::PyUnicode_FromString(c"full".as_ptr()),
            end => {
                raise_for(&end);
                ptr::null_mut()
            }
        }
    }
}

/// `channel_recv(name, timeout)`: receives, waiting while the channel is empty (timeout 0: not
/// at all); returns `("received", value)`, `("empty", None)` (the timeout passed) or
/// `("closed", None)`. An interrupt of the lane raises `KeyboardInterrupt`. The value is rebuilt
/// here, in the receiving interpreter.
pub(super) unsafe extern "C" fn channel_recv(
    module: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the lane interpreter's GIL held, `module` is `self`, the
    // arguments are alive for the call. The GIL is released inside the wait only; the tuple
    // made at the end gets new references.
    unsafe {
        let lane = or_null!(lane_of(module));
        let args = or_null!(fastcall_args(args, nargs, 2, "channel_recv"));
        let name = or_null!(text_of(args[0], "name"));
        let Ok(deadline) = deadline_of(args[1]) else { return ptr::null_mut() };
        let channel = or_null!(open_channel(&name, 0));
        let source = Arc::clone(&channel);
        let end = wait_on_channel(lane, &channel, deadline, move || {
            match source.recv(Some(Instant::now()), &|| false) {
                Ok(value) => Some(Some(value)),
                Err(crate::channels::RecvError::Closed) => Some(None),
                Err(_) => None,
            }
        });
        let (status, object) = match end {
            WaitEnd::Ready(Some(value)) => {
                let object = super::values::to_object(&value);
                if object.is_null() {
                    return ptr::null_mut();
                }
                (c"received", object)
            }
            WaitEnd::Ready(None) => (c"closed", ffi::Py_NewRef(ffi::Py_None())),
            WaitEnd::TimedOut => (c"empty", ffi::Py_NewRef(ffi::Py_None())),
            end => {
                raise_for(&end);
                return ptr::null_mut();
            }
        };
        let status = ffi::PyUnicode_FromString(status.as_ptr());
        if status.is_null() {
            ffi::Py_DecRef(object);
            return ptr::null_mut();
        }
        let pair = ffi::PyTuple_Pack(2, status, object);
        ffi::Py_DecRef(status);
        ffi::Py_DecRef(object);
        pair
    }
}

/// `channel_open(name, maxsize)`: gets or creates the channel; a maxsize mismatch or a bad name
/// is a `ValueError`.
pub(super) unsafe extern "C" fn channel_open(
    _module: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the lane interpreter's GIL held; the arguments are alive
    // for the call.
    unsafe {
        let args = or_null!(fastcall_args(args, nargs, 2, "channel_open"));
        let name = or_null!(text_of(args[0], "name"));
        let maxsize = or_null!(maxsize_of(args[1]));
        or_null!(open_channel(&name, maxsize));
        ffi::Py_NewRef(ffi::Py_None())
    }
}

/// `channel_close(name)`: senders fail from now on; receivers drain what is queued.
pub(super) unsafe extern "C" fn channel_close(
    _module: *mut ffi::PyObject,
    name: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the lane interpreter's GIL held; `name` is alive for the
    // call.
    unsafe {
        let name = or_null!(text_of(name, "name"));
        or_null!(open_channel(&name, 0)).close();
        ffi::Py_NewRef(ffi::Py_None())
    }
}
