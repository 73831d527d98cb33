//! Output written to file descriptors 1 and 2 (`os.system`, subprocesses, C `printf`, writes to
//! `sys.__stdout__`) goes to the cell like `sys.stdout` does, as under ipykernel 6: both
//! descriptors are pipes while the main lane runs, read by a thread that sends the text as
//! the lane's stream output. The kernel's own log does not go through them (the binary logs to a
//! copy of the original stderr made before Python starts). What is read from fd 2 is also shown to
//! [`crate::fatal`], so that a crash right after it still gets it into the log.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use crate::sync::LockExt;
use crate::fatal;
use crate::lanes::StreamName;
use crate::native::{self, LaneState};

/// The read ends of the two pipes and what is left of a UTF-8 sequence split between reads.
struct Readers {
    pipes: [(OwnedFd, StreamName, Vec<u8>); 2],
    buffer: Vec<u8>,
    state: Arc<LaneState>,
}

impl Readers {
    /// Reads whatever is in the pipes now, without blocking, and hands it to the lane. Returns
    /// which pipes are still open.
    fn drain(&mut self) -> [bool; 2] {
        let mut open = [false; 2];
        let buffer = &mut self.buffer;
        for ((fd, name, partial), open) in self.pipes.iter_mut().zip(&mut open) {
            loop {
                // SAFETY: reads into a local buffer of the given length from a descriptor we own.
                let count =
                    unsafe { libc::read(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
                match usize::try_from(count) {
                    Ok(0) => break,
                    Ok(count) => {
                        if *name == StreamName::Stderr {
                            fatal::captured_stderr_read(&buffer[..count]);
                        }
                        partial.extend_from_slice(&buffer[..count]);
                        let text = take_text(partial);
                        if !text.is_empty() {
                            self.state.write_stream(*name, &text);
                        }
                    }
                    Err(_) => {
                        let error = io::Error::last_os_error();
                        match error.kind() {
                            io::ErrorKind::WouldBlock => {
                                *open = true;
                                break;
                            }
                            io::ErrorKind::Interrupted => {}
                            _ => break,
                        }
                    }
                }
            }
        }
        open
    }
}

/// The longest valid UTF-8 prefix of `bytes` (invalid bytes replaced); an incomplete sequence at
/// the end stays in `bytes` for the next read.
fn take_text(bytes: &mut Vec<u8>) -> String {
    let keep = match std::str::from_utf8(bytes) {
        Err(error) if error.error_len().is_none() => bytes.len() - error.valid_up_to(),
        _ => 0,
    };
    let rest = bytes.split_off(bytes.len() - keep);
    let text = String::from_utf8_lossy(bytes).into_owned();
    *bytes = rest;
    text
}

/// Captures fds 1 and 2 for a lane until dropped.
pub(crate) struct FdCapture {
    readers: Arc<Mutex<Readers>>,
    /// The original fds 1 and 2, put back on drop.
    saved: [OwnedFd; 2],
}

impl FdCapture {
    pub(crate) fn start(state: Arc<LaneState>) -> io::Result<FdCapture> {
        let saved = [duplicate(1)?, duplicate(2)?];
        let stdout = redirect(1)?;
        let stderr = match redirect(2) {
            Ok(stderr) => stderr,
            Err(error) => {
                // SAFETY: puts the saved descriptor back on 1; both are valid.
                unsafe { libc::dup2(saved[0].as_raw_fd(), 1) };
                return Err(error);
            }
        };
        fatal::publish_captured_stderr(Some(stderr.as_raw_fd()));
        let readers = Arc::new(Mutex::new(Readers {
            pipes: [
                (stdout, StreamName::Stdout, Vec::new()),
                (stderr, StreamName::Stderr, Vec::new()),
            ],
            buffer: vec![0; 64 * 1024],
            state,
        }));
        let reader = Arc::clone(&readers);
        native::spawn_without_sigint("parakernel-fd-output", move || read_until_closed(&reader));
        Ok(FdCapture { readers, saved })
    }

    /// Forwards everything written to the descriptors so far (call before a job's reply, and
    /// before the next job starts, so text goes to the request that wrote it).
    pub(crate) fn sync(&self) {
        // SAFETY: flushes the C stdio buffers of this process (printf from extension modules).
        unsafe { libc::fflush(std::ptr::null_mut()) };
        let mut readers = self.readers.lock_unpoisoned();
        readers.drain();
        fatal::captured_stderr_handed_over();
    }
}

impl Drop for FdCapture {
    fn drop(&mut self) {
        self.sync();
        fatal::publish_captured_stderr(None);
        for (target, saved) in [1, 2].into_iter().zip(&self.saved) {
            // SAFETY: both descriptors are valid; this closes our pipe's write end on `target`,
            // so the reader sees the end of the pipe once no child process holds it either.
            unsafe { libc::dup2(saved.as_raw_fd(), target) };
        }
    }
}

fn read_until_closed(readers: &Mutex<Readers>) {
    let fds: Vec<RawFd> = readers
        .lock_unpoisoned()
        .pipes
        .iter()
        .map(|(fd, _, _)| fd.as_raw_fd())
        .collect();
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `polled` is a valid array of pollfd for the duration of the call; the read ends
        // stay open while this thread runs (the `Readers` it shares own them).
        let ready = unsafe { libc::poll(polled.as_mut_ptr(), 2, -1) };
        if ready < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
        let open = readers
            .lock_unpoisoned()
            .drain();
        for (polled, open) in polled.iter_mut().zip(open) {
            if !open {
                // A negative fd is ignored by poll: a closed pipe would report POLLHUP forever.
                polled.fd = -1;
            }
        }
        if open.iter().all(|open| !open) {
            return;
        }
    }
}

/// `dup(fd)`, close-on-exec so child processes do not inherit it.
fn duplicate(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor number; a failure is reported, not undefined.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Puts the write end of a new pipe on `target` and returns the (non-blocking) read end.
fn redirect(target: RawFd) -> io::Result<OwnedFd> {
    let mut ends = [0; 2];
    // SAFETY: `ends` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned here only.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    // SAFETY: fcntl and dup2 on descriptors we own; dup2 makes `target` (not close-on-exec, so
    // child processes write to the pipe too) refer to the write end, which `write` then closes.
    unsafe {
        let flags = libc::fcntl(read.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(read.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::dup2(write.as_raw_fd(), target) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    drop(write);
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::take_text;

    #[test]
    fn split_utf8_waits_for_the_rest() {
        let mut bytes = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_text(&mut bytes), "");
        bytes.extend_from_slice(&"é".as_bytes()[1..]);
        bytes.extend_from_slice(b"!");
        assert_eq!(take_text(&mut bytes), "é!");
        assert!(bytes.is_empty());
    }

    #[test]
    fn invalid_bytes_are_replaced() {
        let mut bytes = b"a\xffb".to_vec();
        assert_eq!(take_text(&mut bytes), "a\u{fffd}b");
    }
}
