//! How the five libzmq sockets are made and configured before they are bound: the maximum frame
//! size, CurveZMQ server keys, handshake and linger times, and private ipc socket files.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use crate::sync::LockExt;
use super::TransportError;

/// The default largest message a peer may send: a larger declared frame drops the connection
/// before any of it is allocated. Generous enough for a notebook's biggest legal request (a
/// cell or widget message of a few hundred MB); `--max-message-size` changes it. What strangers
/// can make the kernel hold is a few times this (see the README's security section).
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 512 << 20;

/// How long a closing socket keeps trying to write what it holds (as ipykernel's 1 s).
pub(super) const LINGER_MS: i32 = 1000;

/// A connection that has not finished the ZMTP greeting and handshake within this time is
/// dropped, so half-open connections cannot pile up.
const HANDSHAKE_MS: i32 = 10_000;

/// Messages each connection may have waiting in libzmq before libzmq stops reading that
/// connection (back-pressure through TCP; nothing is dropped). With the maximum frame size this
/// bounds what one unverified peer can make the kernel hold.
const RECEIVE_HIGH_WATER_MARK: i32 = 64;

/// Connections that may wait to be accepted by a libzmq socket.
const LISTEN_BACKLOG: i32 = 1024;

/// How the sockets guard themselves; the same for all five.
#[derive(Clone)]
pub struct SocketOptions {
    /// Largest frame, in bytes, a peer may send.
    pub max_message_size: u64,
    /// CurveZMQ server keys, when the connection file carries them.
    pub curve: Option<CurveKeys>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self { max_message_size: DEFAULT_MAX_MESSAGE_SIZE, curve: None }
    }
}

impl fmt::Debug for SocketOptions {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SocketOptions")
            .field("max_message_size", &self.max_message_size)
            .field("curve", &self.curve.is_some())
            .finish()
    }
}

/// A CurveZMQ key pair in Z85 (40 characters each), as jupyter_client writes them into the
/// connection file (`curve_publickey`, `curve_secretkey`). Debug never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct CurveKeys {
    public: String,
    secret: String,
}

impl fmt::Debug for CurveKeys {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("CurveKeys").field("public", &self.public).finish_non_exhaustive()
    }
}

impl CurveKeys {
    /// Checks that both keys are Z85 keys of 32 bytes and that the public key belongs to the
    /// secret one (clients take the public key as the server's: a mismatch would refuse every
    /// client, so it is refused at start instead).
    pub fn new(public: &str, secret: &str) -> Result<Self, TransportError> {
        let decoded = |name: &str, key: &str| -> Result<Vec<u8>, TransportError> {
            if key.len() != 40 {
                return Err(TransportError::CurveKeys(format!(
                    "{name} must be 40 Z85 characters, not {}",
                    key.len()
                )));
            }
            zmq::z85_decode(key)
                .map_err(|_| TransportError::CurveKeys(format!("{name} is not Z85")))
        };
        decoded("curve_publickey", public)?;
        decoded("curve_secretkey", secret)?;
        let derived = derive_public(secret)?;
        if derived != public {
            return Err(TransportError::CurveKeys(
                "curve_publickey is not the public key of curve_secretkey".to_owned(),
            ));
        }
        Ok(Self { public: public.to_owned(), secret: secret.to_owned() })
    }
}

// libzmq's own function (zmq.h, 4.2 and later), which the `zmq` crate does not bind.
extern "C" {
    fn zmq_curve_public(
        z85_public_key: *mut std::ffi::c_char,
        z85_secret_key: *const std::ffi::c_char,
    ) -> std::ffi::c_int;
}

/// The Z85 public key of a Z85 secret key, as libzmq computes it.
fn derive_public(secret: &str) -> Result<String, TransportError> {
    let secret = std::ffi::CString::new(secret)
        .map_err(|_| TransportError::CurveKeys("curve_secretkey contains a NUL".to_owned()))?;
    // 40 characters and the terminating NUL.
    let mut public = [0u8; 41];
    // SAFETY: no Python interpreter is involved. libzmq reads a NUL-terminated 40-character Z85
    // string and writes 41 bytes (40 characters and a NUL) into a buffer of that size.
    let status = unsafe { zmq_curve_public(public.as_mut_ptr().cast(), secret.as_ptr()) };
    if status != 0 {
        return Err(if zmq::has("curve") == Some(true) {
            TransportError::CurveKeys("curve_secretkey is not a CurveZMQ secret key".to_owned())
        } else {
            TransportError::NoCurve
        });
    }
    Ok(String::from_utf8_lossy(&public[..40]).into_owned())
}

/// The five sockets, made and configured, and the context they belong to.
pub(super) struct FiveSockets {
    pub(super) context: zmq::Context,
    pub(super) shell: zmq::Socket,
    pub(super) control: zmq::Socket,
    pub(super) stdin: zmq::Socket,
    pub(super) iopub: zmq::Socket,
    pub(super) heartbeat: zmq::Socket,
}

impl FiveSockets {
    pub(super) fn new(options: &SocketOptions) -> Result<Self, TransportError> {
        if options.curve.is_some() && zmq::has("curve") != Some(true) {
            return Err(TransportError::NoCurve);
        }
        let context = zmq::Context::new();
        let make = |name: &'static str, kind: zmq::SocketType| -> Result<zmq::Socket, TransportError> {
            let setup = |what: &'static str| {
                move |source: zmq::Error| TransportError::Setup { socket: name, what, source }
            };
            let socket = context.socket(kind).map_err(setup("create"))?;
            let max = i64::try_from(options.max_message_size).unwrap_or(i64::MAX);
            socket.set_maxmsgsize(max).map_err(setup("maximum message size"))?;
            socket.set_handshake_ivl(HANDSHAKE_MS).map_err(setup("handshake time"))?;
            socket.set_rcvhwm(RECEIVE_HIGH_WATER_MARK).map_err(setup("receive high-water mark"))?;
            socket.set_linger(LINGER_MS).map_err(setup("linger"))?;
            // The gate connects once per peer: a burst of connections must wait in the
            // backlog, not be refused.
            socket.set_backlog(LISTEN_BACKLOG).map_err(setup("backlog"))?;
            if let Some(keys) = &options.curve {
                socket.set_curve_server(true).map_err(setup("CurveZMQ server"))?;
                socket.set_curve_secretkey(keys.secret.as_bytes()).map_err(setup("CurveZMQ secret key"))?;
            }
            Ok(socket)
        };
        let iopub = make("iopub", zmq::XPUB)?;
        // Every subscription reaches the kernel, also a second one to a topic already
        // subscribed: each new subscriber is owed an `iopub_welcome`.
        iopub
            .set_xpub_verbose(true)
            .map_err(|source| TransportError::Setup { socket: "iopub", what: "verbose", source })?;
        Ok(Self {
            shell: make("shell", zmq::ROUTER)?,
            control: make("control", zmq::ROUTER)?,
            stdin: make("stdin", zmq::ROUTER)?,
            iopub,
            heartbeat: make("heartbeat", zmq::REP)?,
            context,
        })
    }
}

/// While alive, files this process creates are private to its user (umask 077), so a socket
/// file never exists with wider permissions, not even for a moment. The umask is process-wide:
/// the kernel binds before it starts any other thread.
pub(super) struct PrivateFiles {
    previous: libc::mode_t,
}

impl PrivateFiles {
    pub(super) fn while_binding() -> Self {
        // SAFETY: no Python interpreter is involved; umask only swaps the process's mask.
        let previous = unsafe { libc::umask(0o077) };
        Self { previous }
    }
}

impl Drop for PrivateFiles {
    fn drop(&mut self) {
        // SAFETY: as above; puts back the mask this guard replaced.
        unsafe { libc::umask(self.previous) };
    }
}

/// A new directory only this user can enter (mode 0700), for the Unix sockets behind the gates:
/// under `$XDG_RUNTIME_DIR` when there is one, else the temporary directory.
pub(super) fn private_directory() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|base| base.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    sweep_dead_directories(&base);
    // Unix socket paths are limited to about 100 bytes: keep the name short. The pid lets a
    // later kernel remove what a killed one left.
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let directory = base.join(format!("parakernel-{}-{}", std::process::id(), &unique[..8]));
    std::fs::DirBuilder::new().mode(0o700).create(&directory)?;
    Ok(directory)
}

/// Removes the socket directories of kernels that are gone (killed with SIGKILL, say, which
/// leaves no chance to clean up): `parakernel-PID-*` of this user whose process no longer
/// exists, holding nothing but sockets.
fn sweep_dead_directories(base: &Path) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(entries) = std::fs::read_dir(base) else { return };
    // SAFETY: no Python interpreter is involved; getuid only reads the process's user id.
    let user = unsafe { libc::getuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix("parakernel-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let Ok(metadata) = std::fs::symlink_metadata(&path) else { continue };
        if !metadata.is_dir() || metadata.uid() != user {
            continue;
        }
        // SAFETY: as above; signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if !gone {
            continue;
        }
        let Ok(files) = std::fs::read_dir(&path) else { continue };
        let files: Vec<_> = files.flatten().collect();
        if files.iter().all(|file| file.file_type().is_ok_and(|kind| kind.is_socket())) {
            for file in files {
                let _ = std::fs::remove_file(file.path());
            }
            let _ = std::fs::remove_dir(&path);
        }
    }
}

/// Refuses to let libzmq replace what is at an ipc socket path (libzmq unlinks the path before
/// it binds): a file that is not a socket, or a socket another process still serves.
pub(super) fn check_ipc_path(path: &Path) -> Result<(), TransportError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(metadata) = std::fs::symlink_metadata(path) else { return Ok(()) };
    let shown = path.display().to_string();
    if !metadata.file_type().is_socket() {
        return Err(TransportError::IpcPathTaken { path: shown, why: "it exists and is not a socket" });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(TransportError::IpcPathTaken { path: shown, why: "another process serves it" });
    }
    Ok(())
}

/// Raises this process's soft limit of open descriptors to its hard limit.
pub(super) fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: no Python interpreter is involved; reads into and writes from a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

/// Makes sure an ipc socket file is readable and writable by its owner only (connecting to a
/// Unix socket needs write permission on its file).
pub(super) fn make_private(path: &Path) -> Result<(), TransportError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        TransportError::IpcPermissions { path: path.display().to_string(), source }
    })
}

/// Socket files and directories to remove when the process exits, however it exits through
/// `exit` (the kernel ends with `std::process::exit` from several threads, which runs `atexit`
/// handlers). A directory is listed before the files in it.
static SOCKET_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub(super) fn remove_at_exit(path: &Path) {
    static REGISTER: Once = Once::new();
    SOCKET_FILES.lock_unpoisoned().push(path.to_owned());
    REGISTER.call_once(|| {
        // SAFETY: no Python interpreter is involved; registers a plain C function.
        let status = unsafe { libc::atexit(remove_socket_files_at_exit) };
        if status != 0 {
            tracing::warn!("cannot register the removal of ipc socket files at exit");
        }
    });
}

extern "C" fn remove_socket_files_at_exit() {
    // `try_lock`: a thread that held the lock when `exit` was called never lets go of it.
    if let Ok(files) = SOCKET_FILES.try_lock() {
        for path in files.iter().rev() {
            remove(path);
        }
    }
}

pub(super) fn remove_now(path: &Path) {
    remove(path);
    SOCKET_FILES.lock_unpoisoned().retain(|kept| kept != path);
}

fn remove(path: &Path) {
    if std::fs::remove_file(path).is_err() {
        let _ = std::fs::remove_dir(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_of_dead_kernels_are_swept_and_nothing_else() {
        let base = tempfile::tempdir().unwrap();
        // No process has this pid (above Linux's largest).
        let dead = base.path().join("parakernel-999999999-abcdef01");
        std::fs::create_dir(&dead).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(dead.join("shell")).unwrap();
        let live = base.path().join(format!("parakernel-{}-abcdef02", std::process::id()));
        std::fs::create_dir(&live).unwrap();
        let kept = base.path().join("parakernel-999999998-abcdef03");
        std::fs::create_dir(&kept).unwrap();
        std::fs::write(kept.join("notes"), "not a socket").unwrap();
        sweep_dead_directories(base.path());
        assert!(!dead.exists(), "a dead kernel's sockets are removed");
        assert!(live.exists(), "a live kernel's directory stays");
        assert!(kept.join("notes").exists(), "a directory with other files stays");
    }

    #[test]
    fn curve_keys_must_be_a_matching_pair() {
        let pair = zmq::CurveKeyPair::new().expect("libzmq has CurveZMQ");
        let public = zmq::z85_encode(&pair.public_key).unwrap();
        let secret = zmq::z85_encode(&pair.secret_key).unwrap();
        let keys = CurveKeys::new(&public, &secret).expect("a pair libzmq made");
        assert!(!format!("{keys:?}").contains(&secret), "Debug shows the secret key");

        let other = zmq::CurveKeyPair::new().unwrap();
        let other_public = zmq::z85_encode(&other.public_key).unwrap();
        let error = CurveKeys::new(&other_public, &secret).unwrap_err();
        assert!(error.to_string().contains("not the public key"), "{error}");
        let error = CurveKeys::new(&public, "short").unwrap_err();
        assert!(error.to_string().contains("40 Z85 characters"), "{error}");
    }
}
