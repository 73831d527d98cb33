//! The edge between Python and Rust in the module's functions: arguments read into Rust values,
//! and errors turned into Python exceptions (made here and nowhere else).

use std::borrow::Cow;
use std::ffi::CStr;
use std::ptr;

use pyo3_ffi as ffi;
use serde_json::Value;

/// Sets a Python exception of type `kind` with `message`. Exceptions are made here, at the edge.
///
/// # Safety
/// The caller holds the current interpreter's GIL; `kind` is an exception type.
pub(super) unsafe fn raise(kind: *mut ffi::PyObject, message: &str) {
    let text = std::ffi::CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // SAFETY: GIL held (caller); both pointers are valid for the call.
    unsafe { ffi::PyErr_SetString(kind, text.as_ptr()) };
}

/// `text` as a new `str` object, or null with an exception set.
///
/// # Safety
/// The caller holds the current interpreter's GIL.
pub(super) unsafe fn str_object(text: &str) -> *mut ffi::PyObject {
    // SAFETY: GIL held (caller); the bytes are valid UTF-8 for the length given.
    unsafe { ffi::PyUnicode_FromStringAndSize(text.as_ptr().cast(), ffi::Py_ssize_t::try_from(text.len()).unwrap_or(ffi::Py_ssize_t::MAX)) }
}

/// The UTF-8 text of a `str` object (borrowed from it), or `None` with an exception set.
///
/// # Safety
/// The caller holds the GIL of the interpreter that owns `object`, a valid object pointer that
/// stays alive while the result is used.
pub(super) unsafe fn text_of<'a>(object: *mut ffi::PyObject, what: &str) -> Option<Cow<'a, str>> {
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

/// A name (of a channel, a shared buffer, a value): a `str` that is valid Unicode, or `None`
/// with an exception set. Lone surrogates are refused rather than replaced, so that two names
/// never become one.
///
/// # Safety
/// As [`text_of`].
pub(super) unsafe fn name_of<'a>(object: *mut ffi::PyObject, what: &str) -> Option<Cow<'a, str>> {
    // SAFETY: GIL held and `object` alive (caller).
    unsafe {
        if ffi::PyUnicode_Check(object) != 0 {
            let mut size: ffi::Py_ssize_t = 0;
            if ffi::PyUnicode_AsUTF8AndSize(object, &raw mut size).is_null() {
                ffi::PyErr_Clear();
                raise(ffi::PyExc_ValueError, &format!("{what} must be text without lone surrogates"));
                return None;
            }
        }
        text_of(object, what)
    }
}

/// The positional arguments of a `METH_FASTCALL` call, checked for count.
///
/// # Safety
/// `args` points at `nargs` valid object pointers (the vectorcall convention); GIL held.
pub(super) unsafe fn fastcall_args<'a>(
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

pub(super) unsafe fn parse_json(text: &str, what: &str) -> Option<Value> {
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
pub(super) unsafe fn buffers_of(list: *mut ffi::PyObject) -> Option<Vec<Vec<u8>>> {
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
pub(super) use or_null;
