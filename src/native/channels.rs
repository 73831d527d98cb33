//! The channel and shared-buffer functions of `_parakernel` (issue 8): each turns its
//! interpreter's objects into channel values and back (`values`) and waits as every lane wait
//! does; the registries (`crate::channels`) hold only Rust data.

use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3_ffi as ffi;

use super::arguments::{fastcall_args, name_of, or_null, raise, str_object};
use super::lane_state::{LaneState, WaitEnd};
use super::functions::raise_for;
use super::module::{buffer_type_of, lane_of};

/// `channels()`: a JSON list of every channel's stats.
pub(super) unsafe extern "C" fn channels_json(
    _module: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let text = serde_json::to_string(&crate::channels::registry().stats()).unwrap_or_else(|_| "[]".into());
    // SAFETY: called by CPython with the GIL held; the text outlives the call.
    unsafe { str_object(&text) }
}

/// The deadline of a `timeout` argument: `None` waits for good; seconds otherwise (0: not at
/// all). `Err` with an exception set when it is neither.
unsafe fn deadline_of(timeout: *mut ffi::PyObject) -> Result<Option<Instant>, ()> {
    // SAFETY: GIL held, `timeout` alive (caller).
    unsafe {
        if timeout == ffi::Py_None() {
            return Ok(None);
        }
        if ffi::PyBool_Check(timeout) != 0 || (ffi::PyLong_Check(timeout) == 0 && ffi::PyFloat_Check(timeout) == 0) {
            let kind = std::ffi::CStr::from_ptr((*ffi::Py_TYPE(timeout)).tp_name).to_string_lossy();
            raise(ffi::PyExc_TypeError, &format!("timeout must be None or a number of seconds, not {kind}"));
            return Err(());
        }
        let seconds = ffi::PyFloat_AsDouble(timeout);
        #[allow(clippy::float_cmp)]
        if seconds == -1.0 && !ffi::PyErr_Occurred().is_null() {
            if ffi::PyErr_ExceptionMatches(ffi::PyExc_OverflowError) == 0 {
                return Err(());
            }
            // An int beyond any float: longer than the process will live.
            ffi::PyErr_Clear();
            return Ok(None);
        }
        if seconds.is_nan() || seconds < 0.0 {
            raise(ffi::PyExc_ValueError, "timeout must be None or a non-negative number of seconds");
            return Err(());
        }
        let duration = Duration::try_from_secs_f64(seconds.min(1e9)).unwrap_or(Duration::MAX);
        Ok(Instant::now().checked_add(duration))
    }
}

/// A `maxsize` argument: `None` (open as it is), 0 (unbounded) or more; `Err` with an exception
/// set otherwise.
unsafe fn maxsize_of(maxsize: *mut ffi::PyObject) -> Result<Option<usize>, ()> {
    const WHAT: &str = "maxsize must be None, 0 (unbounded) or a positive int";
    // SAFETY: GIL held, `maxsize` alive (caller).
    unsafe {
        if maxsize == ffi::Py_None() {
            return Ok(None);
        }
        if ffi::PyBool_Check(maxsize) != 0 || ffi::PyLong_Check(maxsize) == 0 {
            raise(ffi::PyExc_TypeError, WHAT);
            return Err(());
        }
        let maxsize = ffi::PyLong_AsSsize_t(maxsize);
        if maxsize < 0 {
            ffi::PyErr_Clear();
            raise(ffi::PyExc_ValueError, WHAT);
            return Err(());
        }
        Ok(Some(maxsize.unsigned_abs()))
    }
}

/// The channel `name` (opened asking for `maxsize`), or `None` with an exception set.
unsafe fn open_channel(name: &str, maxsize: Option<usize>) -> Option<Arc<crate::channels::Channel>> {
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
    sender: bool,
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
    // Counted as waiting (`%channels`) from the first wait on.
    let mut counted = None;
    let end = loop {
        let seen = changes.load(Ordering::SeqCst);
        if let Some(value) = attempt() {
            break WaitEnd::Ready(value);
        }
        if counted.is_none() {
            counted = Some(channel.waiting(sender));
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
    drop(counted);
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
        let name = or_null!(name_of(args[0], "name"));
        let Ok(maxsize) = maxsize_of(args[1]) else { return ptr::null_mut() };
        let Ok(deadline) = deadline_of(args[3]) else { return ptr::null_mut() };
        let channel = or_null!(open_channel(&name, maxsize));
        let mut value = Some(or_null!(super::values::to_value(args[2], &lane.lane().name())));
        let target = Arc::clone(&channel);
        let end = wait_on_channel(lane, &channel, true, deadline, move || {
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
        let name = or_null!(name_of(args[0], "name"));
        let Ok(deadline) = deadline_of(args[1]) else { return ptr::null_mut() };
        let channel = or_null!(open_channel(&name, None));
        let source = Arc::clone(&channel);
        let end = wait_on_channel(lane, &channel, false, deadline, move || {
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
        let name = or_null!(name_of(args[0], "name"));
        let Ok(maxsize) = maxsize_of(args[1]) else { return ptr::null_mut() };
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
        let name = or_null!(name_of(name, "name"));
        or_null!(open_channel(&name, None)).close();
        ffi::Py_NewRef(ffi::Py_None())
    }
}

/// `channel_stats(name)`: the channel's row of `channels()` as JSON, or `None` if there is no
/// such channel.
pub(super) unsafe extern "C" fn channel_stats(
    _module: *mut ffi::PyObject,
    name: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the calling interpreter's GIL held; `name` is alive.
    unsafe {
        let name = or_null!(name_of(name, "name"));
        let Some(channel) = crate::channels::registry().get(&name) else {
            return ffi::Py_NewRef(ffi::Py_None());
        };
        let text = serde_json::to_string(&channel.stats()).unwrap_or_else(|_| "null".into());
        str_object(&text)
    }
}

/// `channel_unlink(name)`: closes the channel, frees what it holds and forgets the name.
pub(super) unsafe extern "C" fn channel_unlink(
    _module: *mut ffi::PyObject,
    name: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the calling interpreter's GIL held; `name` is alive.
    unsafe {
        let name = or_null!(name_of(name, "name"));
        ffi::PyBool_FromLong(std::ffi::c_long::from(crate::channels::registry().unlink(&name)))
    }
}

/// An exporter of one shared block to one interpreter: the object a `shared_buffer` memoryview
/// views. It holds an `Arc` of the block, so the block lives while any view of it does.
#[repr(C)]
struct Exporter {
    base: ffi::PyObject,
    /// From `Arc::into_raw`; released by `exporter_dealloc`.
    block: *const crate::channels::Block,
}

unsafe extern "C" fn exporter_getbuffer(object: *mut ffi::PyObject, view: *mut ffi::Py_buffer, flags: std::ffi::c_int) -> std::ffi::c_int {
    // SAFETY: CPython calls this with the exporter's interpreter's GIL held; `object` is an
    // `Exporter` whose block lives as long as it does, and the view keeps `object` alive.
    unsafe {
        let block = &*(*object.cast::<Exporter>()).block;
        let size = ffi::Py_ssize_t::try_from(block.size()).unwrap_or(ffi::Py_ssize_t::MAX);
        ffi::PyBuffer_FillInfo(view, object, block.start().cast(), size, 0, flags)
    }
}

unsafe extern "C" fn exporter_dealloc(object: *mut ffi::PyObject) {
    // SAFETY: CPython deallocates with the exporter's interpreter's GIL held, once no view
    // refers to it; `block` came from `Arc::into_raw`. A heap type's instance owns a reference
    // to its type, dropped last.
    unsafe {
        let exporter = object.cast::<Exporter>();
        let block = std::mem::replace(&mut (*exporter).block, ptr::null());
        if !block.is_null() {
            drop(Arc::from_raw(block));
        }
        let kind = ffi::Py_TYPE(object);
        let free = ffi::PyType_GetSlot(kind, ffi::Py_tp_free);
        if !free.is_null() {
            let free: ffi::freefunc = std::mem::transmute(free);
            free(object.cast());
        }
        ffi::Py_DecRef(kind.cast());
    }
}

/// The exporter type of one interpreter, made by the module's exec slot.
///
/// # Safety
/// The caller holds the GIL of the interpreter that imports `_parakernel`.
pub(super) unsafe fn new_exporter_type() -> *mut ffi::PyObject {
    let mut slots = [
        ffi::PyType_Slot { slot: ffi::Py_bf_getbuffer, pfunc: exporter_getbuffer as *mut std::ffi::c_void },
        ffi::PyType_Slot { slot: ffi::Py_tp_dealloc, pfunc: exporter_dealloc as *mut std::ffi::c_void },
        ffi::PyType_Slot { slot: 0, pfunc: ptr::null_mut() },
    ];
    let mut spec = ffi::PyType_Spec {
        name: c"parakernel.SharedBlock".as_ptr(),
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)] // two words
        basicsize: std::mem::size_of::<Exporter>() as std::ffi::c_int,
        itemsize: 0,
        #[allow(clippy::cast_possible_truncation)] // the flags fit in 32 bits
        flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION | ffi::Py_TPFLAGS_IMMUTABLETYPE) as std::ffi::c_uint,
        slots: slots.as_mut_ptr(),
    };
    // SAFETY: GIL held (caller); CPython copies what it needs from the spec and the slots.
    unsafe { ffi::PyType_FromSpec(&raw mut spec) }
}

/// `shared_buffer(name, size)`: a writable memoryview of the shared block `name`, made with
/// `size` bytes (zeroed) if no lane holds it; `size` `None` opens an existing block only.
pub(super) unsafe extern "C" fn shared_buffer(
    module: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the calling interpreter's GIL held; the arguments are alive
    // for the call, and the exporter type is this interpreter's (the module's state).
    unsafe {
        let args = or_null!(fastcall_args(args, nargs, 2, "shared_buffer"));
        let name = or_null!(name_of(args[0], "name"));
        let size = if args[1] == ffi::Py_None() {
            None
        } else {
            // Any integer (`__index__`: numpy's too), as `multiprocessing.shared_memory` takes.
            let index = if ffi::PyBool_Check(args[1]) == 0 { ffi::PyNumber_Index(args[1]) } else { ptr::null_mut() };
            if index.is_null() {
                ffi::PyErr_Clear();
                raise(ffi::PyExc_TypeError, "size must be an int (bytes) or None");
                return ptr::null_mut();
            }
            let size = ffi::PyLong_AsSsize_t(index);
            ffi::Py_DecRef(index);
            if size < 0 {
                ffi::PyErr_Clear();
                raise(ffi::PyExc_ValueError, "size must be a positive number of bytes, at most the address space");
                return ptr::null_mut();
            }
            Some(size.unsigned_abs())
        };
        let block = match crate::channels::buffers().open(&name, size) {
            Ok(block) => block,
            Err(error) => {
                let kind = match error {
                    crate::channels::BufferError::NoMemory { .. } => ffi::PyExc_MemoryError,
                    crate::channels::BufferError::NotFound(_) => ffi::PyExc_KeyError,
                    _ => ffi::PyExc_ValueError,
                };
                raise(kind, &error.to_string());
                return ptr::null_mut();
            }
        };
        let kind = or_null!(buffer_type_of(module));
        let exporter = ffi::PyType_GenericAlloc(kind.cast(), 0);
        if exporter.is_null() {
            return ptr::null_mut();
        }
        (*exporter.cast::<Exporter>()).block = Arc::into_raw(block);
        let view = ffi::PyMemoryView_FromObject(exporter);
        // The view holds the exporter now (or, on failure, nothing does and the block goes).
        ffi::Py_DecRef(exporter);
        view
    }
}

/// `shared_buffers()`: a JSON list of every living shared block (name, size, holders).
pub(super) unsafe extern "C" fn shared_buffers_json(
    _module: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let text = serde_json::to_string(&crate::channels::buffers().stats()).unwrap_or_else(|_| "[]".into());
    // SAFETY: called by CPython with the GIL held; the text outlives the call.
    unsafe { str_object(&text) }
}
