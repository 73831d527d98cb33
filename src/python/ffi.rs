//! The few safe wrappers over Python's C API that the rest of `python` uses: a token proving
//! that the calling thread has a thread state attached ([`Gil`]), owned references that cannot
//! outlive it ([`Owned`]), thread states of other threads ([`ThreadState`]), and Python
//! exceptions turned into Rust data ([`PythonException`]).

use std::ffi::{c_char, CStr};
use std::marker::PhantomData;
use std::ptr::NonNull;

use pyo3_ffi as ffi;

/// A Python exception, copied out of the interpreter as text.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{name}: {message}")]
pub struct PythonException {
    /// The exception type's name, e.g. `ModuleNotFoundError`.
    pub name: String,
    pub message: String,
    /// The formatted traceback (`traceback.format_exception`), one entry per line group.
    pub traceback: Vec<String>,
}

/// Proof that the calling thread has a thread state of one interpreter attached, i.e. holds that
/// interpreter's GIL, for `'py`. Neither `Send` nor `Sync`, so it cannot leave the thread.
#[derive(Clone, Copy)]
pub(crate) struct Gil<'py>(PhantomData<(&'py (), *mut ())>);

impl<'py> Gil<'py> {
    /// # Safety
    /// The calling thread has a thread state attached for all of `'py`, except inside
    /// [`Gil::detach`].
    pub(crate) unsafe fn assume() -> Gil<'py> {
        Gil(PhantomData)
    }

    /// Releases the GIL while `f` runs (which can touch no Python object: `Owned` is not
    /// `Send`), then attaches the same thread state again.
    #[allow(clippy::unused_self)] // the token is the proof that detaching is allowed
    pub(crate) fn detach<T: Send>(self, f: impl FnOnce() -> T + Send) -> T {
        // SAFETY: the token proves a thread state is attached to this thread; SaveThread detaches
        // it and RestoreThread re-attaches the very same one before any Python object is used.
        let thread_state = unsafe { ffi::PyEval_SaveThread() };
        let result = f();
        // SAFETY: `thread_state` is this thread's, detached just above.
        unsafe { ffi::PyEval_RestoreThread(thread_state) };
        result
    }

    /// Takes the pending exception out of the interpreter as Rust data.
    pub(crate) fn fetch(self) -> PythonException {
        // SAFETY: GIL held (token). GetRaisedException returns a new reference or null.
        let raised = unsafe { ffi::PyErr_GetRaisedException() };
        // SAFETY: GIL held; `raised` is a new reference (or null, handled).
        match unsafe { Owned::from_raw(self, raised) } {
            Some(exception) => self.describe(&exception),
            None => PythonException {
                name: "SystemError".into(),
                message: "a C API call failed without setting an exception".into(),
                traceback: Vec::new(),
            },
        }
    }

    fn describe(self, exception: &Owned<'py>) -> PythonException {
        let name = exception
            .getattr(c"__class__")
            .and_then(|class| class.getattr(c"__name__"))
            .and_then(|name| name.text())
            .unwrap_or_else(|_| "Exception".into());
        // SAFETY: GIL held; Str returns a new reference or null.
        let message = unsafe { Owned::from_raw(self, ffi::PyObject_Str(exception.as_ptr())) }
            .and_then(|text| text.text().ok())
            .unwrap_or_default();
        let traceback = self
            .import(c"traceback")
            .and_then(|module| module.getattr(c"format_exception"))
            .and_then(|format| format.call(&[exception]))
            .and_then(|lines| lines.strings())
            .unwrap_or_default();
        // Formatting may itself have failed; that error is not the one being reported.
        // SAFETY: GIL held.
        unsafe { ffi::PyErr_Clear() };
        PythonException {
            name,
            message,
            traceback,
        }
    }

    /// `import name`.
    pub(crate) fn import(self, name: &CStr) -> Result<Owned<'py>, PythonException> {
        // SAFETY: GIL held; `name` is a valid C string; returns a new reference or null.
        self.check(unsafe { ffi::PyImport_ImportModule(name.as_ptr()) })
    }

    /// A new `str`.
    pub(crate) fn str(self, text: &str) -> Result<Owned<'py>, PythonException> {
        let size = isize::try_from(text.len()).expect("a string's length fits isize");
        // SAFETY: GIL held; the pointer and length describe valid UTF-8.
        self.check(unsafe {
            ffi::PyUnicode_FromStringAndSize(text.as_ptr().cast::<c_char>(), size)
        })
    }

    /// A new `list` of `bytes`, one per buffer.
    pub(crate) fn bytes_list(self, buffers: &[Vec<u8>]) -> Result<Owned<'py>, PythonException> {
        // SAFETY: GIL held; returns a new reference or null.
        let list = self.check(unsafe { ffi::PyList_New(0) })?;
        for buffer in buffers {
            let size = isize::try_from(buffer.len()).expect("a buffer's length fits isize");
            // SAFETY: GIL held; the pointer and length describe `buffer`, which is copied.
            let item = self.check(unsafe {
                ffi::PyBytes_FromStringAndSize(buffer.as_ptr().cast::<c_char>(), size)
            })?;
            // SAFETY: GIL held; both are valid objects; PyList_Append takes its own reference.
            if unsafe { ffi::PyList_Append(list.as_ptr(), item.as_ptr()) } != 0 {
                return Err(self.fetch());
            }
        }
        Ok(list)
    }

    /// A new `float`.
    pub(crate) fn float(self, value: f64) -> Result<Owned<'py>, PythonException> {
        // SAFETY: GIL held.
        self.check(unsafe { ffi::PyFloat_FromDouble(value) })
    }

    /// Compiles `source` and executes it as the module `name`, registered in `sys.modules`.
    pub(crate) fn exec_module(
        self,
        name: &CStr,
        filename: &CStr,
        source: &str,
    ) -> Result<Owned<'py>, PythonException> {
        let source = std::ffi::CString::new(source).map_err(|_| PythonException {
            name: "ValueError".into(),
            message: format!(
                "the source of {} contains a NUL byte",
                name.to_string_lossy()
            ),
            traceback: Vec::new(),
        })?;
        // SAFETY: GIL held; the strings are valid C strings for the call; a new reference or null.
        let code = self.check(unsafe {
            ffi::Py_CompileString(source.as_ptr(), filename.as_ptr(), ffi::Py_file_input)
        })?;
        // SAFETY: GIL held; `code` is a live code object; a new reference or null.
        self.check(unsafe { ffi::PyImport_ExecCodeModule(name.as_ptr(), code.as_ptr()) })
    }

    /// Takes a SIGINT that was sent to this thread out of Python's signal flags, so it raises
    /// nowhere. Only the main thread of the main interpreter handles signals: call it there.
    #[allow(clippy::unused_self)] // the token is the proof that the GIL is held
    pub(crate) fn clear_interrupt(self) {
        // SAFETY: a system call returns with every pending unblocked signal of this thread
        // handled, so a SIGINT sent before now has tripped Python's flag; `set` is a valid
        // sigset_t. PyOS_InterruptOccurred then clears the flag (GIL held: token).
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&raw mut set);
            ffi::PyOS_InterruptOccurred();
        }
    }

    /// Turns a returned new reference into `Owned`, or the pending exception into an error.
    pub(crate) fn check(self, object: *mut ffi::PyObject) -> Result<Owned<'py>, PythonException> {
        // SAFETY: callers pass what a C API call returned: a new reference or null.
        unsafe { Owned::from_raw(self, object) }.ok_or_else(|| self.fetch())
    }
}

/// A strong reference to a Python object of the interpreter whose GIL `'py` stands for; dropped
/// (decref'd) while that GIL is still held.
pub(crate) struct Owned<'py> {
    object: NonNull<ffi::PyObject>,
    gil: Gil<'py>,
}

impl<'py> Owned<'py> {
    /// # Safety
    /// `object` is null or a new (owned) reference of the interpreter `gil` stands for.
    pub(crate) unsafe fn from_raw(gil: Gil<'py>, object: *mut ffi::PyObject) -> Option<Self> {
        NonNull::new(object).map(|object| Owned { object, gil })
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::PyObject {
        self.object.as_ptr()
    }

    pub(crate) fn getattr(&self, name: &CStr) -> Result<Owned<'py>, PythonException> {
        // SAFETY: GIL held (token in self); the object is alive (we own a reference).
        self.gil
            .check(unsafe { ffi::PyObject_GetAttrString(self.as_ptr(), name.as_ptr()) })
    }

    /// Calls the object with positional arguments.
    pub(crate) fn call(&self, args: &[&Owned<'py>]) -> Result<Owned<'py>, PythonException> {
        let pointers: Vec<*mut ffi::PyObject> = args.iter().map(|arg| arg.as_ptr()).collect();
        // SAFETY: GIL held; every pointer is a live object we hold a reference to for the call.
        let result = unsafe {
            ffi::PyObject_Vectorcall(
                self.as_ptr(),
                pointers.as_ptr(),
                pointers.len(),
                std::ptr::null_mut(),
            )
        };
        self.gil.check(result)
    }

    /// The text of a `str` object.
    pub(crate) fn text(&self) -> Result<String, PythonException> {
        let mut size: ffi::Py_ssize_t = 0;
        // SAFETY: GIL held; the UTF-8 buffer belongs to the object, alive while we copy it.
        unsafe {
            let data = ffi::PyUnicode_AsUTF8AndSize(self.as_ptr(), &raw mut size);
            if data.is_null() {
                return Err(self.gil.fetch());
            }
            let bytes =
                std::slice::from_raw_parts(data.cast::<u8>(), usize::try_from(size).unwrap_or(0));
            Ok(String::from_utf8_lossy(bytes).into_owned())
        }
    }

    /// The texts of an iterable of `str`.
    pub(crate) fn strings(&self) -> Result<Vec<String>, PythonException> {
        // SAFETY: GIL held; GetIter returns a new reference or null.
        let iterator = self
            .gil
            .check(unsafe { ffi::PyObject_GetIter(self.as_ptr()) })?;
        let mut strings = Vec::new();
        loop {
            // SAFETY: GIL held; `iterator` is alive; returns a new reference or null.
            let item = unsafe { ffi::PyIter_Next(iterator.as_ptr()) };
            // SAFETY: `item` is a new reference or null.
            match unsafe { Owned::from_raw(self.gil, item) } {
                Some(item) => strings.push(item.text()?),
                // SAFETY: GIL held.
                None if unsafe { !ffi::PyErr_Occurred().is_null() } => {
                    return Err(self.gil.fetch())
                }
                None => return Ok(strings),
            }
        }
    }

    pub(crate) fn is_true(&self) -> Result<bool, PythonException> {
        // SAFETY: GIL held; the object is alive.
        match unsafe { ffi::PyObject_IsTrue(self.as_ptr()) } {
            -1 => Err(self.gil.fetch()),
            truth => Ok(truth == 1),
        }
    }
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        // SAFETY: `Owned` cannot outlive `'py`, during which this thread holds the GIL of the
        // object's interpreter (see `Gil`); we own exactly one reference.
        unsafe { ffi::Py_DecRef(self.as_ptr()) };
    }
}

/// An interpreter, as a pointer that may be handed to another thread (which then creates its
/// own thread state for it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct InterpreterHandle(*mut ffi::PyInterpreterState);

// SAFETY: a PyInterpreterState may be used from any thread through a thread state of that
// thread; the handle itself is only an address.
unsafe impl Send for InterpreterHandle {}

impl InterpreterHandle {
    /// The main interpreter.
    pub(crate) fn main(_gil: Gil<'_>) -> Self {
        // SAFETY: Python is initialized (a GIL token exists).
        InterpreterHandle(unsafe { ffi::PyInterpreterState_Main() })
    }

    /// The interpreter of the attached thread state.
    pub(crate) fn current(_gil: Gil<'_>) -> Self {
        // SAFETY: a thread state is attached (token).
        InterpreterHandle(unsafe { ffi::PyInterpreterState_Get() })
    }

    pub(crate) fn id(self) -> i64 {
        // SAFETY: the interpreter is alive while a handle to it is in use (owners end threads
        // holding handles before ending the interpreter).
        unsafe { ffi::PyInterpreterState_GetID(self.0) }
    }
}

/// A thread state this thread created for an interpreter, attached only inside [`ThreadState::with`].
/// Neither `Send` nor `Sync`: a thread state belongs to the thread that made it.
pub(crate) struct ThreadState(NonNull<ffi::PyThreadState>);

impl ThreadState {
    /// # Safety
    /// The interpreter stays alive until [`ThreadState::delete`] is called.
    pub(crate) unsafe fn new(interpreter: InterpreterHandle) -> Option<Self> {
        // SAFETY: PyThreadState_New needs no GIL; the interpreter is alive (caller).
        NonNull::new(unsafe { ffi::PyThreadState_New(interpreter.0) }).map(ThreadState)
    }

    /// Attaches the thread state (waiting for the interpreter's GIL) while `f` runs.
    pub(crate) fn with<T>(&self, f: impl for<'py> FnOnce(Gil<'py>) -> T) -> T {
        // SAFETY: the thread state is this thread's and not attached (we only attach it here).
        unsafe { ffi::PyEval_RestoreThread(self.0.as_ptr()) };
        // SAFETY: attached just above, until SaveThread below; `f` cannot keep an `Owned` past
        // its return because of the higher-ranked lifetime.
        let result = f(unsafe { Gil::assume() });
        // SAFETY: attached since RestoreThread.
        unsafe { ffi::PyEval_SaveThread() };
        result
    }

    /// Clears and deletes the thread state.
    pub(crate) fn delete(self) {
        // SAFETY: attach our own thread state, clear it and delete it while current, which also
        // releases the GIL.
        unsafe {
            ffi::PyEval_RestoreThread(self.0.as_ptr());
            ffi::PyThreadState_Clear(self.0.as_ptr());
            ffi::PyThreadState_DeleteCurrent();
        }
    }
}

/// The message of a failed `PyStatus`, or `None` when it is not an error.
pub(crate) fn status_error(status: &ffi::PyStatus) -> Option<String> {
    // SAFETY: PyStatus_Exception only reads the status value.
    if unsafe { ffi::PyStatus_Exception(*status) } == 0 {
        return None;
    }
    let text = |pointer: *const c_char| {
        // SAFETY: CPython's status strings are static NUL-terminated strings (or null).
        (!pointer.is_null())
            .then(|| unsafe { CStr::from_ptr(pointer) }.to_string_lossy().into_owned())
    };
    Some(match (text(status.func), text(status.err_msg)) {
        (Some(func), Some(message)) => format!("{func}: {message}"),
        (None, Some(message)) => message,
        _ => format!("exit code {}", status.exitcode),
    })
}

/// What [`Gil::set_async_exc`] raises in another thread.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AsyncException {
    KeyboardInterrupt,
    SystemExit,
    /// Takes back an exception set earlier and not raised yet.
    Clear,
}

impl Gil<'_> {
    /// Raises `exception` in the thread of the current interpreter whose
    /// `PyThread_get_thread_ident` is `thread` at its next bytecode. Returns whether such a
    /// thread exists.
    #[allow(clippy::unused_self)] // the token is the proof that the GIL is held
    pub(crate) fn set_async_exc(self, thread: u64, exception: AsyncException) -> bool {
        // SAFETY: GIL held (token): SetAsyncExc looks the thread up among the current
        // interpreter's; the exception types are static objects shared by every interpreter.
        unsafe {
            let exception = match exception {
                AsyncException::KeyboardInterrupt => ffi::PyExc_KeyboardInterrupt,
                AsyncException::SystemExit => ffi::PyExc_SystemExit,
                AsyncException::Clear => std::ptr::null_mut(),
            };
            // CPython declares the id `unsigned long` and compares it with the thread state's.
            #[allow(clippy::cast_possible_wrap, clippy::cast_possible_truncation)]
            let thread = thread as std::ffi::c_long;
            ffi::PyThreadState_SetAsyncExc(thread, exception) > 0
        }
    }
}

/// An own-GIL subinterpreter created by, and belonging to, the calling thread, plus the thread
/// state of the main interpreter that the thread attached to create it (`CPython` wants a thread
/// state attached when `Py_NewInterpreterFromConfig` is called; it is deleted again at the end).
/// Neither `Send` nor `Sync`.
pub(crate) struct OwnInterpreter {
    main_thread_state: NonNull<ffi::PyThreadState>,
    thread_state: NonNull<ffi::PyThreadState>,
}

impl OwnInterpreter {
    /// Creates an isolated subinterpreter with its own GIL and its own obmalloc, where fork,
    /// exec and daemon threads are refused and single-phase extension modules cannot load.
    /// Returns with its thread state attached to the calling thread.
    ///
    /// # Safety
    /// `main` is the main interpreter and stays alive until [`OwnInterpreter::end`] or
    /// [`OwnInterpreter::abandon`]; the calling thread has no thread state attached.
    pub(crate) unsafe fn create(main: InterpreterHandle) -> Result<Self, String> {
        // SAFETY: as the caller promises; PyThreadState_New needs no GIL.
        let main_thread_state = NonNull::new(unsafe { ffi::PyThreadState_New(main.0) })
            .ok_or("cannot create a thread state of the main interpreter")?;
        // SAFETY: our new thread state, attached (taking the main GIL) for the creation.
        unsafe { ffi::PyEval_RestoreThread(main_thread_state.as_ptr()) };
        let config = ffi::PyInterpreterConfig {
            use_main_obmalloc: 0,
            allow_fork: 0,
            allow_exec: 0,
            allow_threads: 1,
            allow_daemon_threads: 0,
            check_multi_interp_extensions: 1,
            gil: ffi::PyInterpreterConfig_OWN_GIL,
        };
        let mut thread_state: *mut ffi::PyThreadState = std::ptr::null_mut();
        // SAFETY: a thread state of the main interpreter is attached; `config` and the out
        // pointer are valid for the call. On success the new interpreter's thread state is
        // attached (and ours of main detached); on failure ours is attached again.
        let status = unsafe { ffi::Py_NewInterpreterFromConfig(&raw mut thread_state, &raw const config) };
        let failure = status_error(&status);
        match (failure, NonNull::new(thread_state)) {
            (None, Some(thread_state)) => Ok(OwnInterpreter {
                main_thread_state,
                thread_state,
            }),
            (failure, _) => {
                // SAFETY: our main thread state is attached again after a failed creation.
                unsafe {
                    ffi::PyThreadState_Clear(main_thread_state.as_ptr());
                    ffi::PyThreadState_DeleteCurrent();
                }
                Err(failure.unwrap_or_else(|| "Py_NewInterpreterFromConfig failed".into()))
            }
        }
    }

    pub(crate) fn handle(&self) -> InterpreterHandle {
        // SAFETY: the thread state is alive while `self` is.
        InterpreterHandle(unsafe { ffi::PyThreadState_GetInterpreter(self.thread_state.as_ptr()) })
    }

    /// Ends the interpreter and deletes the main thread state.
    ///
    /// # Safety
    /// The interpreter's thread state is attached to this thread; every other thread state of
    /// the interpreter is gone (no thread of it runs, no other thread keeps one) and no
    /// [`Owned`] of it is alive.
    pub(crate) unsafe fn end(self) {
        // SAFETY: as the caller promises. Py_EndInterpreter leaves no thread state attached.
        unsafe { ffi::Py_EndInterpreter(self.thread_state.as_ptr()) };
        self.delete_main_thread_state();
    }

    /// Leaves the interpreter alive (some thread of it would not stop) but detached, and
    /// deletes the main thread state. The process must then not finalize Python.
    ///
    /// # Safety
    /// The interpreter's thread state is attached to this thread and no [`Owned`] of it is
    /// alive.
    pub(crate) unsafe fn abandon(self) {
        // SAFETY: detaches the attached thread state (caller), releasing the lane's GIL.
        unsafe { ffi::PyEval_SaveThread() };
        self.delete_main_thread_state();
    }

    fn delete_main_thread_state(self) {
        // SAFETY: no thread state is attached to this thread now; ours of the main interpreter
        // is attached (waiting for the main GIL), cleared and deleted, which releases the GIL.
        unsafe {
            ffi::PyEval_RestoreThread(self.main_thread_state.as_ptr());
            ffi::PyThreadState_Clear(self.main_thread_state.as_ptr());
            ffi::PyThreadState_DeleteCurrent();
        }
    }
}
