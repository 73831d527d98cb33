//! Starting and ending the embedded Python: the version checks against the kernelspec's
//! environment, `PyConfig`-based initialization, and finalization.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pyo3_ffi as ffi;

use super::ffi::Gil;
use super::PythonError;
use crate::native;

/// The embedded Python's version, e.g. `3.13.0` (as `sys.version.split()[0]`).
pub(crate) fn version() -> &'static str {
    &versions().0
}

/// The embedded Python's `sys.version`.
pub(crate) fn full_version() -> &'static str {
    &versions().1
}

/// Computed once: `Py_GetVersion` formats into a static buffer, so it must not race with an
/// interpreter that is starting. [`super::start`] forces this before Python starts.
fn versions() -> &'static (String, String) {
    static VERSIONS: OnceLock<(String, String)> = OnceLock::new();
    VERSIONS.get_or_init(|| {
        // SAFETY: `Py_Version` is a constant of libpython, readable without initialization.
        let hex = unsafe { ffi::Py_Version };
        let part = |shift: u32| (hex >> shift) & 0xff;
        let mut short = format!("{}.{}.{}", part(24), part(16), part(8));
        let serial = hex & 0xf;
        let level = match (hex >> 4) & 0xf {
            0xa => "a",
            0xb => "b",
            0xc => "rc",
            _ => "",
        };
        if !level.is_empty() {
            short = format!("{short}{level}{serial}");
        }
        // SAFETY: returns a pointer to a static NUL-terminated buffer; called once, before any
        // interpreter exists (see above).
        let full = unsafe { CStr::from_ptr(ffi::Py_GetVersion()) }
            .to_string_lossy()
            .into_owned();
        (short, full)
    })
}

/// The virtual environment (the directory holding `pyvenv.cfg`) that `python` belongs to, if any.
pub(crate) fn environment_of(python: &Path) -> Option<PathBuf> {
    let bin = python.parent()?;
    [bin, bin.parent()?]
        .into_iter()
        .find(|dir| dir.join("pyvenv.cfg").is_file())
        .map(Path::to_path_buf)
}

/// Refuses an interpreter whose version differs from the embedded one: its standard library and
/// extension modules would not match the libpython parakernel runs.
pub(crate) fn check_version(python: &Path) -> Result<(), PythonError> {
    std::fs::metadata(python).map_err(|source| PythonError::Executable {
        path: python.to_path_buf(),
        source,
    })?;
    let found = match environment_of(python) {
        Some(environment) => version_of_environment(&environment.join("pyvenv.cfg"))?,
        None => version_of_executable(python)?,
    };
    // pyvenv.cfg records "3.13.0" (`version`) or "3.13.0.final.0" (`version_info`).
    if release(&found).is_some() && release(&found) == release(version()) {
        Ok(())
    } else {
        Err(PythonError::VersionMismatch {
            path: python.to_path_buf(),
            found,
            embedded: version().to_string(),
        })
    }
}

/// Major, minor and micro version of a version string such as `3.13.0`, `3.13.0rc1` or
/// `3.13.0.final.0`.
fn release(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|part| {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    Some((parts.next()??, parts.next()??, parts.next()??))
}

fn version_of_environment(config: &Path) -> Result<String, PythonError> {
    let text = std::fs::read_to_string(config).map_err(|source| PythonError::Executable {
        path: config.to_path_buf(),
        source,
    })?;
    let value_of = |key: &str| {
        text.lines().find_map(|line| {
            let (name, value) = line.split_once('=')?;
            (name.trim() == key).then(|| value.trim().to_string())
        })
    };
    value_of("version_info")
        .or_else(|| value_of("version"))
        .ok_or_else(|| PythonError::VersionUnknown {
            path: config.to_path_buf(),
            detail: "it has no `version` entry".into(),
        })
}

fn version_of_executable(python: &Path) -> Result<String, PythonError> {
    let output = std::process::Command::new(python)
        .args(["-I", "-c", "import sys; print(sys.version.split()[0])"])
        .output()
        .map_err(|error| PythonError::VersionUnknown {
            path: python.to_path_buf(),
            detail: error.to_string(),
        })?;
    if !output.status.success() {
        return Err(PythonError::VersionUnknown {
            path: python.to_path_buf(),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Initializes Python on the calling thread (the process's main thread), with `python` as the
/// program so that `sys.prefix` is its environment. Returns with the main thread state attached.
pub(crate) fn initialize(python: Option<&Path>) -> Result<(), PythonError> {
    // SAFETY: called once, from the main thread, before any other Python API use in the process
    // (checked with Py_IsInitialized). The config is initialized by PyConfig_InitPythonConfig and
    // cleared after use; the strings we pass are valid C strings for the duration of each call.
    unsafe {
        if ffi::Py_IsInitialized() != 0 {
            return Err(PythonError::Initialize(
                "Python is already initialized in this process".into(),
            ));
        }
        if ffi::PyImport_AppendInittab(native::MODULE_NAME.as_ptr(), Some(native::init_module)) != 0
        {
            return Err(PythonError::Initialize(
                "could not register the _parakernel module".into(),
            ));
        }
        preinitialize()?;
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let config = config.as_mut_ptr();
        // Like `python` with no arguments, but the host process's argv and C stdio are its own.
        (*config).parse_argv = 0;
        (*config).configure_c_stdio = 0;
        // SIGINT raises KeyboardInterrupt on the main thread: that is how cells are interrupted.
        (*config).install_signal_handlers = 1;
        let mut result = Ok(());
        if let Some(python) = python {
            let path = CString::new(python.as_os_str().as_bytes()).map_err(|_| {
                PythonError::Initialize(format!("{} contains a NUL byte", python.display()))
            })?;
            // The program name (not resolved through symlinks) is where CPython's getpath finds
            // the environment's pyvenv.cfg.
            result = status(ffi::PyConfig_SetBytesString(
                config,
                &raw mut (*config).program_name,
                path.as_ptr(),
            ));
        }
        if result.is_ok() {
            result = status(ffi::Py_InitializeFromConfig(config));
        }
        ffi::PyConfig_Clear(config);
        result
    }
}

/// Gives mimalloc its options for the kernel process where the environment does not set them.
/// libpython's mimalloc reads them when the library is loaded, before `main`: so this runs the
/// same program again (`exec`, same pid and arguments) with them in its environment, and
/// returns only when nothing is to be set or the `exec` failed (the kernel then runs with
/// mimalloc's defaults). Call it before any thread starts.
///
/// `MIMALLOC_PURGE_DELAY=0`: pages a thread frees are given back to the system at once, not
/// after a delay that an idle or ended lane thread never reaches. Measured (12 named lanes with
/// `import json, decimal, asyncio`, then stopped): 17 MiB per lane and 139 of 208 MiB given back
/// at the stop, against 23 MiB per lane and 68 of 271 MiB with mimalloc's default; a cell of
/// small-object work ran 2-4% slower than under pymalloc (and 7% slower than with the default).
pub fn configure_allocator_environment() {
    use std::os::unix::process::CommandExt;

    let chosen = std::env::var("PYTHONMALLOC").unwrap_or_default();
    if !(chosen.is_empty() || chosen == "mimalloc") || std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    let Ok(program) = std::env::current_exe() else {
        return;
    };
    let mut arguments = std::env::args_os();
    let zeroth = arguments.next().unwrap_or_else(|| program.clone().into_os_string());
    let error = std::process::Command::new(&program)
        .arg0(zeroth)
        .args(arguments)
        .env("MIMALLOC_PURGE_DELAY", "0")
        .exec();
    tracing::warn!("could not run the kernel again with mimalloc's options ({error}); running with its defaults");
}

/// `PyMemAllocatorName` values (pycore's `PYMEM_ALLOCATOR_*`; pyo3-ffi skips the enum).
const ALLOCATOR_MALLOC: i32 = 3;
const ALLOCATOR_MIMALLOC: i32 = 7;

/// Chooses Python's memory allocator (it must be chosen before initialization) unless the
/// environment's `PYTHONMALLOC` chose one. pymalloc, CPython's default, is the wrong one for
/// lanes: a subinterpreter's pymalloc arenas that still hold one live block when it ends are
/// never given back (CPython gh-110411), so every lane restart lost about 11 MiB (create, an
/// IPython shell, `import json, decimal, asyncio`, destroy; 1.1 MiB with mimalloc, 1.4 MiB with
/// malloc). On a cell of small-object work mimalloc (built into CPython 3.13) was 5% faster than
/// pymalloc, malloc 11% slower (README, benchmarks); before 3.13 there is no mimalloc: malloc.
///
/// # Safety
/// Called once, before `Py_InitializeFromConfig`, from the thread that initializes Python.
unsafe fn preinitialize() -> Result<(), PythonError> {
    if std::env::var_os("PYTHONMALLOC").is_some_and(|value| !value.is_empty()) {
        return Ok(());
    }
    // SAFETY: `Py_Version` is a constant of libpython, readable without initialization.
    let mimalloc = unsafe { ffi::Py_Version } >= 0x030D_0000;
    let mut first = Ok(());
    for allocator in [ALLOCATOR_MIMALLOC, ALLOCATOR_MALLOC] {
        if allocator == ALLOCATOR_MIMALLOC && !mimalloc {
            continue;
        }
        let mut config = std::mem::MaybeUninit::<ffi::PyPreConfig>::zeroed();
        // SAFETY: no interpreter exists yet (as the caller promises); the config is initialized
        // by `PyPreConfig_InitPythonConfig` before it is changed and read. A failed
        // pre-initialization (a libpython built without mimalloc: "Unknown PYTHONMALLOC
        // allocator") leaves the runtime not pre-initialized, so the next one may run.
        let result = unsafe {
            ffi::PyPreConfig_InitPythonConfig(config.as_mut_ptr());
            let config = config.as_mut_ptr();
            (*config).parse_argv = 0;
            (*config).allocator = allocator;
            status(ffi::Py_PreInitialize(config))
        };
        match result {
            Ok(()) => return Ok(()),
            Err(error) if first.is_ok() => first = Err(error),
            Err(_) => {}
        }
    }
    first
}

fn status(status: ffi::PyStatus) -> Result<(), PythonError> {
    super::ffi::status_error(&status).map_or(Ok(()), |message| Err(PythonError::Initialize(message)))
}

/// Why own-GIL subinterpreter lanes cannot run on the embedded Python, or `None` when they can.
/// Needs no running Python.
pub(crate) fn lanes_unavailable() -> Option<String> {
    // SAFETY: `Py_Version` is a constant of libpython, readable without initialization.
    let hex = unsafe { ffi::Py_Version };
    // 3.12.4 final: the first release with the fix for CPython gh-119213.
    (hex < 0x030C_04F0).then(|| {
        format!(
            "subinterpreter lanes need Python 3.13 (or 3.12.4 and newer); this kernel embeds Python \
             {}, where importing common modules (ssl, hashlib, asyncio, IPython) in an own-GIL \
             subinterpreter crashes the process (CPython gh-119213, fixed in 3.12.4). Cells run in \
             the main lane only: remove the `%%lane`/`%%parallel` line or the cell's lane tag, or \
             install Python 3.13 and rebuild parakernel against it (`make clean-venv && \
             PARAKERNEL_PYTHON=/path/to/python3.13 make setup`)",
            version()
        )
    })
}

/// What must happen in the main interpreter right after initialization, and the check that it
/// runs in the environment it was asked to.
pub(crate) fn after_initialize(gil: Gil<'_>, python: Option<&Path>) -> Result<(), PythonError> {
    // A subinterpreter importing `_datetime` before the main interpreter did crashes 3.13.0 at
    // teardown (CPython gh-136421 / gh-136423).
    gil.import(c"_datetime")
        .map_err(|exception| PythonError::Setup {
            context: "import _datetime",
            exception,
        })?;
    let Some(environment) = python.and_then(environment_of) else {
        return Ok(());
    };
    let prefix = gil
        .import(c"sys")
        .and_then(|sys| sys.getattr(c"prefix"))
        .and_then(|prefix| prefix.text())
        .map_err(|exception| PythonError::Setup {
            context: "read sys.prefix",
            exception,
        })?;
    let same = |a: &Path, b: &Path| a == b || a.canonicalize().ok() == b.canonicalize().ok();
    if same(Path::new(&prefix), &environment) {
        Ok(())
    } else {
        Err(PythonError::WrongEnvironment {
            python: python.map(Path::to_path_buf).unwrap_or_default(),
            expected: environment,
            found: PathBuf::from(prefix),
        })
    }
}

/// Finalizes Python. The caller has made sure no thread it cannot stop still runs Python.
pub(crate) fn finalize(_gil: Gil<'_>) -> bool {
    // SAFETY: called on the main thread with the main thread state attached (token), after every
    // `Owned` is dropped and every other thread state this crate made is deleted.
    unsafe { ffi::Py_FinalizeEx() == 0 }
}
