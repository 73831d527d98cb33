//! The module definition: the method table, the slots (multi-phase init, per-interpreter GIL)
//! and the per-module state, which holds one strong reference to the importing interpreter's
//! [`LaneState`].

use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::Arc;

use pyo3_ffi as ffi;

use super::channels::{channel_close, channel_stats, channel_unlink, channel_open, channel_recv, channel_send, channels_json, shared_buffer, shared_buffers_json};
use super::functions::{allow_stdin, call, cpu_times_json, flush, input, publish, sleep, write_stderr, write_stdout};
use super::registry::lookup;
use super::transfer::{home_values, set_home_values};
use super::LaneState;

/// The name every interpreter imports the module under.
pub const MODULE_NAME: &CStr = c"_parakernel";

/// Per-module state: one strong reference to the lane's state, from `Arc::into_raw`, and the
/// interpreter's shared-buffer exporter type.
#[repr(C)]
struct ModuleState {
    lane: *const LaneState,
    /// This interpreter's type of shared-buffer exporters (a strong reference).
    buffer_type: *mut ffi::PyObject,
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

static METHODS: FfiTable<[ffi::PyMethodDef; 21]> = FfiTable(std::cell::UnsafeCell::new([
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
        ml_name: c"channel_send".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunctionFast: channel_send },
        ml_flags: ffi::METH_FASTCALL,
        ml_doc: c"channel_send(name, maxsize, value, timeout, /)\n--\n\nSend, waiting while full (interruptibly): 'sent', 'full' or 'closed'.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"channel_recv".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunctionFast: channel_recv },
        ml_flags: ffi::METH_FASTCALL,
        ml_doc: c"channel_recv(name, timeout, /)\n--\n\nReceive, waiting while empty (interruptibly): ('received', value), ('empty', None) or ('closed', None).".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"channel_open".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunctionFast: channel_open },
        ml_flags: ffi::METH_FASTCALL,
        ml_doc: c"channel_open(name, maxsize, /)\n--\n\nGet or create the channel.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"channel_close".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: channel_close },
        ml_flags: ffi::METH_O,
        ml_doc: c"channel_close(name, /)\n--\n\nClose the channel: senders fail, receivers drain.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"channel_stats".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: channel_stats },
        ml_flags: ffi::METH_O,
        ml_doc: c"channel_stats(name, /)\n--\n\nThe channel's stats as JSON, or None if there is no such channel.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"channel_unlink".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: channel_unlink },
        ml_flags: ffi::METH_O,
        ml_doc: c"channel_unlink(name, /)\n--\n\nClose the channel, free what it holds and forget the name.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"channels".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: channels_json },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: c"channels()\n--\n\nJSON list: every channel's name, depth, maxsize, counters and state.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"shared_buffer".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunctionFast: shared_buffer },
        ml_flags: ffi::METH_FASTCALL,
        ml_doc: c"shared_buffer(name, size, /)\n--\n\nA writable memoryview of the shared block `name` (made with `size` bytes if it does not live).".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"shared_buffers".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: shared_buffers_json },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: c"shared_buffers()\n--\n\nJSON list: every living shared block's name, size and holders.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"home_values".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunctionFast: home_values },
        ml_flags: ffi::METH_FASTCALL,
        ml_doc: c"home_values(home, names, /)\n--\n\nA dict of the home lane's (None: the main lane's) values of `names`, copied into this lane (--in).".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"set_home_values".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunctionFast: set_home_values },
        ml_flags: ffi::METH_FASTCALL,
        ml_doc: c"set_home_values(home, names, values, /)\n--\n\nCopy this lane's values into the home lane's (None: the main lane's) namespace (--out), all or none.".as_ptr(),
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
        let interpreter = ffi::PyInterpreterState_Get();
        let id = ffi::PyInterpreterState_GetID(interpreter);
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
        let buffer_type = super::channels::new_exporter_type();
        if buffer_type.is_null() {
            return -1;
        }
        (*state).buffer_type = buffer_type;
        (*state).lane = Arc::into_raw(lane);
        super::registry::note_interpreter(id, interpreter as usize);
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
        if !state.is_null() && !(*state).buffer_type.is_null() {
            ffi::Py_DecRef((*state).buffer_type);
            (*state).buffer_type = ptr::null_mut();
        }
    }
}

/// The lane state behind `module`.
///
/// # Safety
/// The caller holds the GIL of the module's interpreter and `module` is a live `_parakernel`
/// module (the `self` of one of its functions). The reference is valid while `module` is.
pub(super) unsafe fn lane_of<'m>(module: *mut ffi::PyObject) -> Option<&'m LaneState> {
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

/// This interpreter's shared-buffer exporter type (borrowed from `module`'s state).
///
/// # Safety
/// As [`lane_of`].
pub(super) unsafe fn buffer_type_of(module: *mut ffi::PyObject) -> Option<*mut ffi::PyObject> {
    // SAFETY: as the caller promises; set by `module_exec`, released only by `module_free`.
    unsafe {
        let state = ffi::PyModule_GetState(module).cast::<ModuleState>();
        if state.is_null() || (*state).buffer_type.is_null() {
            ffi::PyErr_SetString(ffi::PyExc_RuntimeError, c"_parakernel is not initialized".as_ptr());
            return None;
        }
        Some((*state).buffer_type)
    }
}
