//! `%%lane NAME --in a,b --out c` (issue 8): values copied between the home lane's namespace
//! (the main lane's; with one lane per session, the session's own lane) and a lane's, by the
//! channel value rules. The lane's thread takes the home interpreter's GIL for the copy (a
//! thread state of its own there, made and deleted around it), turns the home lane's objects
//! into owned [`Value`]s, lets that GIL go and rebuilds them in its own interpreter; and the
//! other way for `--out`. No object of one interpreter is ever touched with the other's GIL.

use std::ptr;

use pyo3_ffi as ffi;

use super::arguments::{or_null, raise, text_of};
use super::values::{to_object, to_value};
use crate::channels::Value;

/// An error met in the main interpreter, carried back to the lane as (exception type, text).
struct Failure {
    kind: Kind,
    message: String,
}

#[derive(Clone, Copy)]
enum Kind {
    Name,
    Import,
    Type,
}

impl Failure {
    /// Raises it in the calling (lane) interpreter.
    ///
    /// # Safety
    /// The lane interpreter's GIL is held.
    unsafe fn raise(&self) {
        // SAFETY: GIL held (caller); the exception types are the interpreter's own.
        unsafe {
            let kind = match self.kind {
                Kind::Name => ffi::PyExc_NameError,
                Kind::Import => ffi::PyExc_ImportError,
                Kind::Type => ffi::PyExc_TypeError,
            };
            raise(kind, &self.message);
        }
    }
}

/// The text of the exception set in the current interpreter (cleared), as `Type: message`, and
/// whether it is an ImportError.
///
/// # Safety
/// The current interpreter's GIL is held and an exception is set.
unsafe fn take_exception() -> (String, bool) {
    // SAFETY: GIL held (caller); every object made here is released here.
    unsafe {
        let exception = ffi::PyErr_GetRaisedException();
        if exception.is_null() {
            return ("unknown error".to_owned(), false);
        }
        let import = ffi::PyErr_GivenExceptionMatches(exception, ffi::PyExc_ImportError) != 0;
        let name = std::ffi::CStr::from_ptr((*ffi::Py_TYPE(exception)).tp_name).to_string_lossy().into_owned();
        let text = ffi::PyObject_Str(exception);
        let message = if text.is_null() {
            ffi::PyErr_Clear();
            String::new()
        } else {
            let message = text_of(text, "message").map(|text| text.into_owned()).unwrap_or_default();
            ffi::PyErr_Clear();
            ffi::Py_DecRef(text);
            message
        };
        ffi::Py_DecRef(exception);
        (format!("{name}: {message}"), import)
    }
}

/// The home interpreter: the main one (`None`), or the registered lane named `home`; `None`
/// with an exception set when there is no such lane, or it is the calling lane itself.
///
/// # Safety
/// GIL held.
unsafe fn home_interpreter(home: Option<&str>) -> Option<*mut ffi::PyInterpreterState> {
    // SAFETY: GIL held (caller).
    unsafe {
        let interpreter = match home {
            None => ffi::PyInterpreterState_Main(),
            Some(name) => match super::registry::interpreter_of_lane(name) {
                Some(address) => address as *mut ffi::PyInterpreterState,
                None => {
                    raise(ffi::PyExc_RuntimeError, &format!("--in/--out: the lane {name:?} these values come from or go to is not running"));
                    return None;
                }
            },
        };
        if interpreter == ffi::PyInterpreterState_Get() {
            raise(ffi::PyExc_RuntimeError, "--in and --out copy values between this lane and another; the cell runs in the lane they would come from");
            return None;
        }
        Some(interpreter)
    }
}

/// Runs `work` with the GIL of `home` (another interpreter), from a lane's thread that holds its
/// own lane's GIL; returns with the lane's GIL held again.
///
/// # Safety
/// The calling thread holds the GIL of an interpreter other than `home`, `home` is alive (the
/// main interpreter, or a registered lane's: a lane is unregistered before its interpreter
/// ends), and `work` touches only objects of `home`.
unsafe fn in_home<R>(home: *mut ffi::PyInterpreterState, work: impl FnOnce() -> R) -> R {
    // SAFETY: the lane's thread state is saved (its GIL released) before the home interpreter's
    // GIL is taken through a thread state made for this thread there, which is cleared and
    // deleted (releasing that GIL) before the lane's is taken back: the thread holds one GIL at
    // a time, and objects are touched only under their own interpreter's GIL.
    unsafe {
        let lane = ffi::PyEval_SaveThread();
        let main = ffi::PyThreadState_New(home);
        ffi::PyEval_RestoreThread(main);
        let result = work();
        ffi::PyThreadState_Clear(main);
        ffi::PyThreadState_DeleteCurrent();
        ffi::PyEval_RestoreThread(lane);
        result
    }
}

/// The namespace of the lane whose GIL is held (`__main__`'s dict, which IPython makes its user
/// namespace), as a new reference, or `None` with an exception set.
///
/// # Safety
/// That interpreter's GIL is held.
unsafe fn main_namespace() -> Option<*mut ffi::PyObject> {
    // SAFETY: GIL held (caller).
    unsafe {
        let module = ffi::PyImport_ImportModule(c"__main__".as_ptr());
        if module.is_null() {
            return None;
        }
        let namespace = ffi::PyModule_GetDict(module);
        let namespace = if namespace.is_null() { None } else { Some(ffi::Py_NewRef(namespace)) };
        ffi::Py_DecRef(module);
        namespace
    }
}

/// The `home` argument: `None` (the main lane) or a lane's name.
///
/// # Safety
/// GIL held; `home` alive.
unsafe fn home_of(home: *mut ffi::PyObject) -> Result<Option<String>, ()> {
    // SAFETY: GIL held (caller).
    unsafe {
        if home == ffi::Py_None() {
            return Ok(None);
        }
        text_of(home, "home").map(|name| Some(name.into_owned())).ok_or(())
    }
}

/// The names in a list of `str`, or `None` with an exception set.
///
/// # Safety
/// GIL held; `list` alive.
unsafe fn names_of(list: *mut ffi::PyObject) -> Option<Vec<String>> {
    // SAFETY: GIL held (caller); items are borrowed while the list lives.
    unsafe {
        if ffi::PyList_Check(list) == 0 {
            raise(ffi::PyExc_TypeError, "names must be a list of str");
            return None;
        }
        let mut names = Vec::new();
        for index in 0..ffi::PyList_Size(list) {
            names.push(text_of(ffi::PyList_GetItem(list, index), "name")?.into_owned());
        }
        Some(names)
    }
}

/// `home_values(home, names)`: a dict of the home lane's (`None`: the main lane's) values of
/// `names`, copied into this lane.
pub(super) unsafe extern "C" fn home_values(
    _module: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the lane's GIL held; the arguments are alive for the call.
    // The home interpreter's objects are touched only inside `in_home`.
    unsafe {
        let args = or_null!(super::arguments::fastcall_args(args, nargs, 2, "home_values"));
        let Ok(home_name) = home_of(args[0]) else { return ptr::null_mut() };
        let names = or_null!(names_of(args[1]));
        let home = or_null!(home_interpreter(home_name.as_deref()));
        let where_from = home_name.as_deref().map_or_else(|| "the main lane".to_owned(), |name| format!("lane {name:?}"));
        let from = home_name.clone().unwrap_or_else(|| "main".to_owned());
        let copied = in_home(home, || -> Result<Vec<(String, Value)>, Failure> {
            let Some(namespace) = main_namespace() else {
                let (message, _) = take_exception();
                return Err(Failure { kind: Kind::Type, message });
            };
            let mut values = Vec::with_capacity(names.len());
            for name in &names {
                let key = std::ffi::CString::new(name.as_str()).unwrap_or_default();
                let object = ffi::PyDict_GetItemString(namespace, key.as_ptr());
                if object.is_null() {
                    ffi::Py_DecRef(namespace);
                    let message = format!("name '{name}' is not defined in {where_from} (--in {name}): run the cell that sets it there first");
                    return Err(Failure { kind: Kind::Name, message });
                }
                let Some(value) = to_value(object, &from) else {
                    ffi::Py_DecRef(namespace);
                    let (error, _) = take_exception();
                    return Err(Failure { kind: Kind::Type, message: format!("--in {name}: the value in {where_from} cannot be copied to this lane ({error})") });
                };
                values.push((name.clone(), value));
            }
            ffi::Py_DecRef(namespace);
            Ok(values)
        });
        let values = match copied {
            Ok(values) => values,
            Err(failure) => {
                failure.raise();
                return ptr::null_mut();
            }
        };
        let dict = ffi::PyDict_New();
        if dict.is_null() {
            return ptr::null_mut();
        }
        for (name, value) in &values {
            let object = to_object(value);
            if object.is_null() {
                ffi::Py_DecRef(dict);
                return ptr::null_mut();
            }
            let key = std::ffi::CString::new(name.as_str()).unwrap_or_default();
            let stored = ffi::PyDict_SetItemString(dict, key.as_ptr(), object);
            ffi::Py_DecRef(object);
            if stored != 0 {
                ffi::Py_DecRef(dict);
                return ptr::null_mut();
            }
        }
        dict
    }
}

/// `set_home_values(home, names, values)`: copies this lane's `values` (a list, one per name)
/// into the home lane's (`None`: the main lane's) namespace, all or none.
pub(super) unsafe extern "C" fn set_home_values(
    module: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with the lane's GIL held; the arguments are alive for the call.
    // The home interpreter's objects are touched only inside `in_home`.
    unsafe {
        let lane = or_null!(super::module::lane_of(module)).lane().name();
        let args = or_null!(super::arguments::fastcall_args(args, nargs, 3, "set_home_values"));
        let Ok(home_name) = home_of(args[0]) else { return ptr::null_mut() };
        let home = or_null!(home_interpreter(home_name.as_deref()));
        let where_to = home_name.as_deref().map_or_else(|| "the main lane".to_owned(), |name| format!("lane {name:?}"));
        let args = &args[1..];
        let names = or_null!(names_of(args[0]));
        if ffi::PyList_Check(args[1]) == 0 || usize::try_from(ffi::PyList_Size(args[1])).ok() != Some(names.len()) {
            raise(ffi::PyExc_TypeError, "values must be a list, one value per name");
            return ptr::null_mut();
        }
        let mut values = Vec::with_capacity(names.len());
        for (index, name) in names.iter().enumerate() {
            let Some(value) = to_value(ffi::PyList_GetItem(args[1], isize::try_from(index).unwrap_or(0)), &lane) else {
                let (error, _) = take_exception();
                raise(ffi::PyExc_TypeError, &format!("--out {name}: the value cannot be copied to {where_to} ({error})"));
                return ptr::null_mut();
            };
            values.push(value);
        }
        let stored = in_home(home, || -> Result<(), Failure> {
            let mut objects = Vec::with_capacity(values.len());
            let release = |objects: &[*mut ffi::PyObject]| objects.iter().for_each(|object| ffi::Py_DecRef(*object));
            for (name, value) in names.iter().zip(&values) {
                let object = to_object(value);
                if object.is_null() {
                    release(&objects);
                    let (error, import) = take_exception();
                    let kind = if import { Kind::Import } else { Kind::Type };
                    return Err(Failure { kind, message: format!("--out {name}: {where_to} cannot rebuild the value ({error})") });
                }
                objects.push(object);
            }
            let Some(namespace) = main_namespace() else {
                release(&objects);
                let (message, _) = take_exception();
                return Err(Failure { kind: Kind::Type, message });
            };
            for (name, object) in names.iter().zip(&objects) {
                let key = std::ffi::CString::new(name.as_str()).unwrap_or_default();
                if ffi::PyDict_SetItemString(namespace, key.as_ptr(), *object) != 0 {
                    ffi::PyErr_Clear();
                }
            }
            release(&objects);
            ffi::Py_DecRef(namespace);
            Ok(())
        });
        if let Err(failure) = stored {
            failure.raise();
            return ptr::null_mut();
        }
        ffi::Py_NewRef(ffi::Py_None())
    }
}
