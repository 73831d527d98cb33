//! Python objects to channel values and back, in the interpreter that sends or receives: the
//! channel registry (`crate::channels`) holds only owned Rust data, never an object of another
//! interpreter. Exact built-in types cross as data; an object with the buffer protocol as one
//! copy of its bytes (a read-only `memoryview` on arrival); anything else is pickled.

use std::ffi::{CStr, CString};
use std::ptr;

use pyo3_ffi as ffi;

use super::arguments::{raise, str_object};
use crate::channels::{Int, Value};

/// How deeply containers may nest (a list that contains itself would never end).
const MAX_DEPTH: usize = 200;

/// A new reference, or null with an exception set.
type New = *mut ffi::PyObject;

/// `object` as a channel value, or `None` with a Python exception set. `lane` names the sending
/// lane in the receiver's errors about pickled values.
///
/// # Safety
/// The calling thread holds the GIL of the interpreter that owns `object`, a valid pointer.
pub(super) unsafe fn to_value(object: *mut ffi::PyObject, lane: &str) -> Option<Value> {
    // SAFETY: as the caller promises.
    unsafe { convert(object, lane, 0) }
}

unsafe fn convert(object: *mut ffi::PyObject, lane: &str, depth: usize) -> Option<Value> {
    if depth > MAX_DEPTH {
        // SAFETY: GIL held (caller).
        unsafe { raise(ffi::PyExc_ValueError, &format!("a value nested more than {MAX_DEPTH} deep cannot be sent (does a container hold itself?)")) };
        return None;
    }
    // SAFETY: GIL held and `object` valid (caller); each branch checks the exact type before it
    // reads the object as that type, and borrowed items are used while their container lives.
    unsafe {
        if object == ffi::Py_None() {
            return Some(Value::None);
        }
        if ffi::PyBool_Check(object) != 0 {
            return Some(Value::Bool(object == ffi::Py_True()));
        }
        if ffi::PyLong_CheckExact(object) != 0 {
            let mut overflow = 0;
            let small = ffi::PyLong_AsLongLongAndOverflow(object, &raw mut overflow);
            if overflow == 0 {
                if small == -1 && !ffi::PyErr_Occurred().is_null() {
                    return None;
                }
                return Some(Value::Int(Int::Small(small)));
            }
            let hex = ffi::PyNumber_ToBase(object, 16);
            if hex.is_null() {
                return None;
            }
            let text = utf8(hex);
            ffi::Py_DecRef(hex);
            return text.map(|text| Value::Int(Int::Big(text)));
        }
        if ffi::PyFloat_CheckExact(object) != 0 {
            return Some(Value::Float(ffi::PyFloat_AsDouble(object)));
        }
        if ffi::PyComplex_CheckExact(object) != 0 {
            return Some(Value::Complex { real: ffi::PyComplex_RealAsDouble(object), imag: ffi::PyComplex_ImagAsDouble(object) });
        }
        if ffi::PyUnicode_CheckExact(object) != 0 {
            if let Some(text) = utf8(object) {
                return Some(Value::Str(text));
            }
            // Lone surrogates are no UTF-8: such a str is pickled.
            ffi::PyErr_Clear();
            return pickled(object, lane);
        }
        if ffi::PyBytes_CheckExact(object) != 0 {
            let data = ffi::PyBytes_AsString(object);
            let size = usize::try_from(ffi::PyBytes_Size(object)).unwrap_or(0);
            return Some(Value::Bytes(std::slice::from_raw_parts(data.cast::<u8>(), size).to_vec()));
        }
        if ffi::PyTuple_CheckExact(object) != 0 || ffi::PyList_CheckExact(object) != 0 {
            let tuple = ffi::PyTuple_CheckExact(object) != 0;
            let size = if tuple { ffi::PyTuple_Size(object) } else { ffi::PyList_Size(object) };
            let mut items = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            for index in 0..size {
                // A borrowed item; a list's may go if converting runs code that changes the list
                // (a pickled item's __reduce__): hold it for the conversion.
                let item = if tuple { ffi::PyTuple_GetItem(object, index) } else { ffi::PyList_GetItem(object, index) };
                if item.is_null() {
                    return None;
                }
                ffi::Py_IncRef(item);
                let value = convert(item, lane, depth + 1);
                ffi::Py_DecRef(item);
                items.push(value?);
            }
            return Some(if tuple { Value::Tuple(items) } else { Value::List(items) });
        }
        if ffi::PyDict_CheckExact(object) != 0 {
            let mut items = Vec::new();
            let mut position: ffi::Py_ssize_t = 0;
            let (mut key, mut value) = (ptr::null_mut(), ptr::null_mut());
            // Keys and values are read first (with references), so that converting them (which
            // may run a __reduce__) cannot change the dict under the iteration.
            let mut pairs = Vec::new();
            while ffi::PyDict_Next(object, &raw mut position, &raw mut key, &raw mut value) != 0 {
                ffi::Py_IncRef(key);
                ffi::Py_IncRef(value);
                pairs.push((key, value));
            }
            let mut failed = false;
            for (key, value) in &pairs {
                if !failed {
                    let pair = convert(*key, lane, depth + 1).and_then(|key| Some((key, convert(*value, lane, depth + 1)?)));
                    match pair {
                        Some(pair) => items.push(pair),
                        None => failed = true,
                    }
                }
                ffi::Py_DecRef(*key);
                ffi::Py_DecRef(*value);
            }
            return (!failed).then_some(Value::Dict(items));
        }
        if ffi::PyObject_CheckBuffer(object) != 0 {
            return buffer(object, lane, depth);
        }
        pickled(object, lane)
    }
}

/// The UTF-8 text of a `str`, or `None` with an exception set.
unsafe fn utf8(object: *mut ffi::PyObject) -> Option<String> {
    let mut size: ffi::Py_ssize_t = 0;
    // SAFETY: GIL held, `object` a str (callers); the buffer lives while the object does.
    unsafe {
        let data = ffi::PyUnicode_AsUTF8AndSize(object, &raw mut size);
        if data.is_null() {
            return None;
        }
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), usize::try_from(size).unwrap_or(0));
        Some(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// The formats a receiver's `memoryview.cast` rebuilds (native, one character, `@` optional).
const CASTABLE: &[u8] = b"bBhHiIlLqQnNfdP?c";

/// How a buffer with this format and shape crosses.
enum BufferKind {
    /// As one copy of its bytes, rebuilt as a read-only memoryview.
    Bytes,
    /// A 0-d number (a numpy scalar): as the Python number it stands for.
    Number(u8),
    /// Anything a memoryview cannot be rebuilt as (another byte order, a struct, zeros in the
    /// shape): pickled.
    Pickled,
}

fn buffer_kind(format: &str, shape: &[usize], ndim: usize) -> BufferKind {
    let code = match format.strip_prefix('@').unwrap_or(format).as_bytes() {
        [code] if CASTABLE.contains(code) => *code,
        _ => return BufferKind::Pickled,
    };
    if ndim == 0 {
        return if code == b'c' || code == b'P' { BufferKind::Bytes } else { BufferKind::Number(code) };
    }
    if ndim > 64 || shape.contains(&0) {
        return BufferKind::Pickled;
    }
    BufferKind::Bytes
}

/// A 0-d buffer's object as the number it holds (`float`, `int` or `bool`).
unsafe fn number(object: *mut ffi::PyObject, code: u8, lane: &str, depth: usize) -> Option<Value> {
    // SAFETY: GIL held, `object` valid (caller); the new reference is released.
    unsafe {
        match code {
            b'f' | b'd' => {
                let value = ffi::PyFloat_AsDouble(object);
                #[allow(clippy::float_cmp)]
                if value == -1.0 && !ffi::PyErr_Occurred().is_null() {
                    return None;
                }
                Some(Value::Float(value))
            }
            b'?' => match ffi::PyObject_IsTrue(object) {
                -1 => None,
                truth => Some(Value::Bool(truth == 1)),
            },
            _ => {
                let index = ffi::PyNumber_Index(object);
                if index.is_null() {
                    return None;
                }
                let value = convert(index, lane, depth + 1);
                ffi::Py_DecRef(index);
                value
            }
        }
    }
}

/// One copy of a buffer's bytes (C order), with its format and shape; a 0-d number as the
/// number; a buffer no receiver could rebuild as a memoryview, pickled.
unsafe fn buffer(object: *mut ffi::PyObject, lane: &str, depth: usize) -> Option<Value> {
    // SAFETY: GIL held, `object` has the buffer protocol (caller); the view is released on
    // every path once copied.
    unsafe {
        let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::zeroed();
        if ffi::PyObject_GetBuffer(object, view.as_mut_ptr(), ffi::PyBUF_FULL_RO) != 0 {
            return None;
        }
        let view_ptr = view.as_mut_ptr();
        let format = if (*view_ptr).format.is_null() { "B".to_owned() } else { CStr::from_ptr((*view_ptr).format).to_string_lossy().into_owned() };
        let ndim = usize::try_from((*view_ptr).ndim).unwrap_or(0);
        let shape: Vec<usize> = if (*view_ptr).shape.is_null() || ndim == 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts((*view_ptr).shape, ndim).iter().map(|&n| usize::try_from(n).unwrap_or(0)).collect()
        };
        match buffer_kind(&format, &shape, ndim) {
            BufferKind::Bytes => {}
            BufferKind::Number(code) => {
                ffi::PyBuffer_Release(view_ptr);
                return number(object, code, lane, depth);
            }
            BufferKind::Pickled => {
                ffi::PyBuffer_Release(view_ptr);
                return pickled(object, lane);
            }
        }
        let length = usize::try_from((*view_ptr).len).unwrap_or(0);
        let mut bytes = vec![0_u8; length];
        let copied = ffi::PyBuffer_ToContiguous(bytes.as_mut_ptr().cast(), view_ptr, (*view_ptr).len, b'C'.cast_signed());
        ffi::PyBuffer_Release(view_ptr);
        (copied == 0).then_some(Value::Buffer { bytes, format, shape })
    }
}

/// `pickle.dumps(object)` in this interpreter, with the object's class and the lane.
unsafe fn pickled(object: *mut ffi::PyObject, lane: &str) -> Option<Value> {
    // SAFETY: GIL held, `object` valid (caller); every new reference is released.
    unsafe {
        let class = class_name(object);
        let data = call_pickle(c"dumps", object)?;
        let size = usize::try_from(ffi::PyBytes_Size(data)).unwrap_or(0);
        let bytes = std::slice::from_raw_parts(ffi::PyBytes_AsString(data).cast::<u8>(), size).to_vec();
        ffi::Py_DecRef(data);
        Some(Value::Pickled { class, lane: lane.to_owned(), bytes })
    }
}

/// `module.qualname` of `object`'s type.
unsafe fn class_name(object: *mut ffi::PyObject) -> String {
    // SAFETY: GIL held, `object` valid (caller).
    unsafe {
        let kind = ffi::Py_TYPE(object).cast::<ffi::PyObject>();
        let mut parts = Vec::new();
        for attribute in [c"__module__", c"__qualname__"] {
            let part = ffi::PyObject_GetAttrString(kind, attribute.as_ptr());
            if part.is_null() {
                ffi::PyErr_Clear();
                continue;
            }
            if ffi::PyUnicode_Check(part) != 0 {
                if let Some(text) = utf8(part) {
                    parts.push(text);
                }
            }
            ffi::Py_DecRef(part);
        }
        parts.join(".")
    }
}

/// `pickle.<function>(argument)`: a new reference, or null with an exception set.
unsafe fn call_pickle(function: &CStr, argument: *mut ffi::PyObject) -> Option<*mut ffi::PyObject> {
    // SAFETY: GIL held (caller); the module and function references are released.
    unsafe {
        let module = ffi::PyImport_ImportModule(c"pickle".as_ptr());
        if module.is_null() {
            return None;
        }
        let callable = ffi::PyObject_GetAttrString(module, function.as_ptr());
        ffi::Py_DecRef(module);
        if callable.is_null() {
            return None;
        }
        let result = ffi::PyObject_CallOneArg(callable, argument);
        ffi::Py_DecRef(callable);
        (!result.is_null()).then_some(result)
    }
}

/// `value` as a new Python object of this interpreter, or null with an exception set.
///
/// # Safety
/// The calling thread holds the GIL of the receiving interpreter.
pub(super) unsafe fn to_object(value: &Value) -> New {
    // SAFETY: GIL held (caller); every reference made here is either returned or released.
    unsafe {
        match value {
            Value::None => ffi::Py_NewRef(ffi::Py_None()),
            Value::Bool(flag) => ffi::PyBool_FromLong(std::ffi::c_long::from(*flag)),
            Value::Int(Int::Small(n)) => ffi::PyLong_FromLongLong(*n),
            Value::Int(Int::Big(hex)) => {
                let text = CString::new(hex.as_str()).unwrap_or_default();
                ffi::PyLong_FromString(text.as_ptr(), ptr::null_mut(), 0)
            }
            Value::Float(x) => ffi::PyFloat_FromDouble(*x),
            Value::Complex { real, imag } => ffi::PyComplex_FromDoubles(*real, *imag),
            Value::Str(text) => str_object(text),
            Value::Bytes(bytes) => ffi::PyBytes_FromStringAndSize(bytes.as_ptr().cast(), isize::try_from(bytes.len()).unwrap_or(0)),
            Value::Tuple(items) | Value::List(items) => {
                let tuple = matches!(value, Value::Tuple(_));
                let size = isize::try_from(items.len()).unwrap_or(0);
                let container = if tuple { ffi::PyTuple_New(size) } else { ffi::PyList_New(size) };
                if container.is_null() {
                    return ptr::null_mut();
                }
                for (index, item) in items.iter().enumerate() {
                    let object = to_object(item);
                    if object.is_null() {
                        ffi::Py_DecRef(container);
                        return ptr::null_mut();
                    }
                    let index = isize::try_from(index).unwrap_or(0);
                    // Both steal `object`.
                    if tuple {
                        ffi::PyTuple_SetItem(container, index, object);
                    } else {
                        ffi::PyList_SetItem(container, index, object);
                    }
                }
                container
            }
            Value::Dict(items) => {
                let dict = ffi::PyDict_New();
                if dict.is_null() {
                    return ptr::null_mut();
                }
                for (key, item) in items {
                    let (key, item) = (to_object(key), to_object(item));
                    let failed = key.is_null() || item.is_null() || ffi::PyDict_SetItem(dict, key, item) != 0;
                    ffi::Py_XDECREF(key);
                    ffi::Py_XDECREF(item);
                    if failed {
                        ffi::Py_DecRef(dict);
                        return ptr::null_mut();
                    }
                }
                dict
            }
            Value::Buffer { bytes, format, shape } => memoryview(bytes, format, shape),
            Value::Pickled { class, lane, bytes } => {
                let data = ffi::PyBytes_FromStringAndSize(bytes.as_ptr().cast(), isize::try_from(bytes.len()).unwrap_or(0));
                if data.is_null() {
                    return ptr::null_mut();
                }
                let object = call_pickle(c"loads", data);
                ffi::Py_DecRef(data);
                if let Some(object) = object {
                    object
                } else {
                    // Chained to pickle's own error, which says what was missing.
                    let cause = ffi::PyErr_GetRaisedException();
                    raise(
                        ffi::PyExc_ImportError,
                        &format!(
                            "a {class} sent from lane {lane:?} cannot be rebuilt in this lane: its class must be \
                             importable here (define it in a module both lanes import, or send plain data)"
                        ),
                    );
                    if !cause.is_null() {
                        let error = ffi::PyErr_GetRaisedException();
                        ffi::PyException_SetCause(error, cause);
                        ffi::PyErr_SetRaisedException(error);
                    }
                    ptr::null_mut()
                }
            }
        }
    }
}

/// A read-only `memoryview` of a copy of `bytes`, cast to `format` and `shape`.
unsafe fn memoryview(bytes: &[u8], format: &str, shape: &[usize]) -> New {
    // SAFETY: GIL held (caller); references are released on every path.
    unsafe {
        let data = ffi::PyBytes_FromStringAndSize(bytes.as_ptr().cast(), isize::try_from(bytes.len()).unwrap_or(0));
        if data.is_null() {
            return ptr::null_mut();
        }
        let view = ffi::PyMemoryView_FromObject(data);
        ffi::Py_DecRef(data);
        if view.is_null() || (format == "B" && shape.len() <= 1) {
            return view;
        }
        let format_object = str_object(format);
        let shape_list = ffi::PyList_New(0);
        for &n in shape {
            let item = ffi::PyLong_FromSize_t(n);
            ffi::PyList_Append(shape_list, item);
            ffi::Py_XDECREF(item);
        }
        let method = ffi::PyObject_GetAttrString(view, c"cast".as_ptr());
        let cast = if method.is_null() || format_object.is_null() || shape_list.is_null() {
            ptr::null_mut()
        } else {
            let args = [format_object, shape_list];
            ffi::PyObject_Vectorcall(method, args.as_ptr(), 2, ptr::null_mut())
        };
        ffi::Py_XDECREF(method);
        ffi::Py_XDECREF(format_object);
        ffi::Py_XDECREF(shape_list);
        ffi::Py_DecRef(view);
        cast
    }
}
