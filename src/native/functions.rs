//! The functions of `_parakernel`: stream writers, display publishing, `input()`, the
//! interruptible `sleep`, lane calls, CPU times, `allow_stdin` and `flush`. Each finds its lane
//! through the module it is called on.

use std::borrow::Cow;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pyo3_ffi as ffi;
use serde_json::{Map, Value};

use super::arguments::{buffers_of, fastcall_args, or_null, parse_json, raise, str_object, text_of};
use super::cpu::cpu_times;
use super::lane_state::{InputSlot, WaitEnd};
use super::module::lane_of;
use crate::lanes::{Event, LaneCall, Output, StreamName};

/// Lane call ids are unique in the process, so a reply meant for an interpreter that was
/// replaced can never be taken for one of its successor's calls.
static NEXT_CALL_ID: AtomicU64 = AtomicU64::new(1);


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
pub(super) unsafe fn raise_for<T>(end: &WaitEnd<T>) {
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
        let text = str_object(&text);
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
    // SAFETY: called by CPython with the current interpreter's GIL held.
    unsafe { str_object(&text) }
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
