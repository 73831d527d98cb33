//! Fatal messages reach the log: the original stderr kept before anything redirects fd 2, a
//! panic hook that reports a panic on any thread and aborts, and handlers for fatal signals that
//! copy what the dying process last wrote to the captured fd 2 there. Knows nothing of Python;
//! nothing in a signal handler here allocates, locks or panics.
//!
//! While the main lane runs, fd 2 is a pipe read by a thread that sends the text to the cell
//! (`python::capture`). Whatever is printed to fd 2 just before the process dies (Rust's
//! `memory allocation of N bytes failed`, CPython's `Fatal Python error: …`, a panic message)
//! would die in that pipe with the reader. So the capture publishes the pipe's read end and hands
//! every chunk it reads from fd 2 to [`captured_stderr_read`], and a fatal signal copies both to
//! the original stderr, which is the Jupyter server's log.

use std::fmt::Write as _;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The kernel's stderr as the process got it (a duplicate made by [`install`]); fd 2 until then.
static ORIGINAL_STDERR: AtomicI32 = AtomicI32::new(2);

/// The read end of the pipe that is fd 2 while it is captured, or -1.
static CAPTURED_STDERR: AtomicI32 = AtomicI32::new(-1);

/// The last bytes the capture took out of fd 2's pipe since the cell they belong to was last
/// handed over (a ring; `TAIL_START..TAIL_END` count bytes ever written). They may never have
/// left the process: the reader thread races the dying thread for the pipe.
const TAIL_SIZE: usize = 16 * 1024;
static TAIL: [AtomicU8; TAIL_SIZE] = [const { AtomicU8::new(0) }; TAIL_SIZE];
static TAIL_START: AtomicUsize = AtomicUsize::new(0);
static TAIL_END: AtomicUsize = AtomicUsize::new(0);

/// At most this much is copied from the pipe (a child process may keep writing to it).
const PIPE_COPY_LIMIT: usize = 256 * 1024;

/// Set by the first fatal signal: the captured output is copied once.
static COPIED: AtomicBool = AtomicBool::new(false);

/// The signals that end the process, and what they were doing before [`install`] (Rust's runtime
/// handles SIGSEGV and SIGBUS to report a stack overflow).
const FATAL_SIGNALS: [(libc::c_int, &str); 5] = [
    (libc::SIGABRT, "SIGABRT"),
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGFPE, "SIGFPE"),
];
static PREVIOUS: OnceLock<[libc::sigaction; FATAL_SIGNALS.len()]> = OnceLock::new();

/// Keeps the original stderr and installs the panic hook and the fatal-signal handlers. Call
/// first thing in `main`, before Python starts or any thread exists.
pub fn install() {
    // SAFETY: fcntl on fd 2; a failure is reported by a negative result, and then fd 2 is used.
    let copy = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
    if copy >= 0 {
        ORIGINAL_STDERR.store(copy, Ordering::Release);
    }
    std::panic::set_hook(Box::new(on_panic));
    install_signal_handlers();
}

/// A writer to the original stderr (the kernel's log goes through it: one copy of the
/// descriptor for the log and for fatal messages).
/// The descriptor of the original stderr (to ask whether it is a terminal, and its width).
pub fn original_stderr_fd() -> RawFd {
    ORIGINAL_STDERR.load(Ordering::SeqCst)
}

pub fn original_stderr() -> OriginalStderr {
    OriginalStderr
}

#[derive(Debug, Clone, Copy)]
pub struct OriginalStderr;

impl io::Write for OriginalStderr {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // SAFETY: writes from a valid slice of the given length to a descriptor this module
        // keeps open for the life of the process.
        let count = unsafe { libc::write(ORIGINAL_STDERR.load(Ordering::Acquire), bytes.as_ptr().cast(), bytes.len()) };
        usize::try_from(count).map_err(|_| io::Error::last_os_error())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Publishes the read end of the pipe that is now fd 2 (`None`: fd 2 is no longer captured, and
/// the descriptor is about to be closed).
pub(crate) fn publish_captured_stderr(read_end: Option<RawFd>) {
    CAPTURED_STDERR.store(read_end.unwrap_or(-1), Ordering::Release);
}

/// Remembers bytes the capture just read from fd 2's pipe. Callers are serialized (the
/// capture's readers are behind one mutex); call right after the read, before anything that
/// could fail or allocate.
pub(crate) fn captured_stderr_read(bytes: &[u8]) {
    let end = TAIL_END.load(Ordering::Relaxed);
    let kept = &bytes[bytes.len().saturating_sub(TAIL_SIZE)..];
    let skipped = bytes.len() - kept.len();
    for (index, byte) in kept.iter().enumerate() {
        TAIL[(end + skipped + index) % TAIL_SIZE].store(*byte, Ordering::Relaxed);
    }
    TAIL_END.store(end + bytes.len(), Ordering::Release);
}

/// The output read so far belongs to a cell that has been answered: a later fatal signal need
/// not repeat it.
pub(crate) fn captured_stderr_handed_over() {
    TAIL_START.store(TAIL_END.load(Ordering::Acquire), Ordering::Release);
}

// ---- panics ----

/// A panic on any thread ends the kernel. A thread that died by panic would leave a half-alive
/// kernel: a socket task gone (tokio would catch it and say nothing), a lane that never answers.
/// Aborting rather than `_exit`: the process ends as a crash (SIGABRT, and a core dump where the
/// system keeps them, which is what a bug needs), and the SIGABRT handler below copies what the
/// cell last wrote to fd 2, as for any other abort. Nothing unwinds, so no destructor or `atexit`
/// handler runs in a process whose state is broken. The code base catches no panic on purpose:
/// `src/` has no `catch_unwind`, tokio's catching of task panics is exactly what must not happen
/// here, a panic in an `extern "C"` callback aborts anyway, and the one `catch_unwind` (the
/// `python_executor` test driver) runs in a binary that never installs this hook.
fn on_panic(info: &std::panic::PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>");
    let location = info.location().map(|location| (location.file(), location.line(), location.column()));
    let mut report = panic_report(thread.name(), thread_id(), message, location);
    let backtrace = std::backtrace::Backtrace::capture();
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        let _ = writeln!(report, "{backtrace}");
    }
    write_all(ORIGINAL_STDERR.load(Ordering::Acquire), report.as_bytes());
    std::process::abort();
}

/// The lines a panic is logged with (Rust's own wording, so it reads as it does elsewhere).
fn panic_report(thread: Option<&str>, thread_id: i64, message: &str, location: Option<(&str, u32, u32)>) -> String {
    let thread = thread.unwrap_or("<unnamed>");
    let at = location.map_or_else(String::new, |(file, line, column)| format!(" at {file}:{line}:{column}"));
    format!("parakernel: thread '{thread}' ({thread_id}) panicked{at}:\n{message}\nparakernel: a panic ends the kernel\n")
}

fn thread_id() -> i64 {
    // SAFETY: gettid only returns the calling thread's id.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

// ---- fatal signals ----

fn install_signal_handlers() {
    // SAFETY: sigaction with a null new action only reads the current one into a zeroed struct.
    let previous = FATAL_SIGNALS.map(|(signal, _)| unsafe {
        let mut previous: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &raw mut previous);
        previous
    });
    if PREVIOUS.set(previous).is_err() {
        return;
    }
    for (signal, _) in FATAL_SIGNALS {
        // SAFETY: a zeroed sigaction with an empty mask is valid; the handler has the
        // SA_SIGINFO signature; SA_ONSTACK lets it run on the alternate stack Rust's runtime gives
        // its threads, so a stack overflow still reaches it (and, through it, Rust's report).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fatal_signal as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&raw mut action.sa_mask);
            libc::sigaction(signal, &raw const action, std::ptr::null_mut());
        }
    }
}

/// Copies what the captured fd 2 last received to the original stderr, writes one line, then
/// lets the signal do what it did before: a fault (SIGSEGV from a bad pointer, ...) returns to
/// the faulting instruction with the previous handler back in place (Rust's stack-overflow
/// report, or the default action); a signal that was sent (`abort()`, `kill`) is raised again with
/// the default action. Async-signal-safe: read, write, prctl, sigaction and raise only.
extern "C" fn on_fatal_signal(signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: the errno location of the calling thread is always valid.
    let errno = unsafe { *libc::__errno_location() };
    let out = ORIGINAL_STDERR.load(Ordering::Acquire);
    let copied = if COPIED.swap(true, Ordering::AcqRel) { 0 } else { copy_captured_stderr(out) };

    let mut line = Line::new();
    line.push(b"parakernel: fatal signal ");
    let index = FATAL_SIGNALS.iter().position(|(number, _)| *number == signal);
    match index {
        Some(index) => line.push(FATAL_SIGNALS[index].1.as_bytes()),
        None => line.push_number(u64::try_from(signal).unwrap_or(0)),
    }
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, address) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    let fault = code > 0 && signal != libc::SIGABRT;
    if fault {
        line.push(b" (fault address 0x");
        line.push_hex(address as u64);
        line.push(b")");
    }
    line.push(b" in thread '");
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into `name`.
    if unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) } == 0 {
        let length = name.iter().position(|byte| *byte == 0).unwrap_or(name.len());
        line.push(&name[..length]);
    }
    line.push(b"' (");
    line.push_number(u64::try_from(thread_id()).unwrap_or(0));
    line.push(b"); the kernel process ends");
    if copied > 0 {
        line.push(b" (above: the last ");
        line.push_number(copied as u64);
        line.push(b" bytes its fd 2 received)");
    }
    line.push(b"\n");
    write_all(out, line.bytes());

    let previous = index.and_then(|index| PREVIOUS.get().map(|previous| previous[index]));
    // SAFETY: sigaction and raise are async-signal-safe; `previous` is an action the kernel gave
    // us for this very signal, and a zeroed action is SIG_DFL.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        if let Some(previous) = previous.filter(|previous| fault && previous.sa_sigaction != libc::SIG_IGN) {
            action = previous;
        }
        libc::sigaction(signal, &raw const action, std::ptr::null_mut());
        if !fault {
            // Blocked while this handler runs: delivered, with the default action, on return.
            libc::raise(signal);
        }
        *libc::__errno_location() = errno;
    }
}

/// Copies the remembered tail and whatever is still unread in the captured fd 2's pipe to `out`;
/// returns how many bytes. The reader thread may still be running: bytes it reads meanwhile land
/// in the tail, which is looked at again after each read of the pipe.
fn copy_captured_stderr(out: RawFd) -> usize {
    let mut chunk = [0u8; 512];
    let mut copied = 0;
    let mut last = b'\n';
    let mut from_pipe = 0;
    let mut written_until = TAIL_START.load(Ordering::Acquire);
    loop {
        let end = TAIL_END.load(Ordering::Acquire);
        let mut position = written_until.max(end.saturating_sub(TAIL_SIZE));
        while position < end {
            let count = (end - position).min(chunk.len());
            for (offset, byte) in chunk.iter_mut().take(count).enumerate() {
                *byte = TAIL[(position + offset) % TAIL_SIZE].load(Ordering::Relaxed);
            }
            write_all(out, &chunk[..count]);
            last = chunk[count - 1];
            copied += count;
            position += count;
        }
        written_until = end;
        let pipe = CAPTURED_STDERR.load(Ordering::Acquire);
        if pipe < 0 || from_pipe >= PIPE_COPY_LIMIT {
            break;
        }
        // SAFETY: reads into a local buffer of its length; the pipe is non-blocking, so this
        // returns at once when it is empty.
        let count = unsafe { libc::read(pipe, chunk.as_mut_ptr().cast(), chunk.len()) };
        match usize::try_from(count) {
            Ok(count) if count > 0 => {
                write_all(out, &chunk[..count]);
                last = chunk[count - 1];
                copied += count;
                from_pipe += count;
            }
            _ if TAIL_END.load(Ordering::Acquire) == written_until => break,
            _ => {}
        }
    }
    if copied > 0 && last != b'\n' {
        write_all(out, b"\n");
    }
    copied
}

/// `write` until everything is out or the descriptor refuses; async-signal-safe.
fn write_all(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes from a valid slice of the given length.
        let count = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        match usize::try_from(count) {
            Ok(count) if count > 0 => bytes = &bytes[count.min(bytes.len())..],
            // SAFETY: the errno location of the calling thread is always valid.
            _ if count < 0 && unsafe { *libc::__errno_location() } == libc::EINTR => {}
            _ => return,
        }
    }
}

/// A line built on the stack (a signal handler may not allocate); what does not fit is cut.
struct Line {
    bytes: [u8; 256],
    length: usize,
}

impl Line {
    fn new() -> Self {
        Line { bytes: [0; 256], length: 0 }
    }

    fn push(&mut self, text: &[u8]) {
        for byte in text {
            if let Some(slot) = self.bytes.get_mut(self.length) {
                *slot = *byte;
                self.length += 1;
            }
        }
    }

    fn push_number(&mut self, mut number: u64) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (number % 10) as u8;
            number /= 10;
            if number == 0 {
                break;
            }
        }
        self.push(&digits[start..]);
    }

    fn push_hex(&mut self, number: u64) {
        let mut digits = [0u8; 16];
        let mut start = digits.len();
        let mut rest = number;
        loop {
            start -= 1;
            digits[start] = b"0123456789abcdef"[(rest % 16) as usize];
            rest /= 16;
            if rest == 0 {
                break;
            }
        }
        self.push(&digits[start..]);
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.length]
    }
}

#[cfg(test)]
mod tests {
    use super::{panic_report, Line};

    #[test]
    fn a_panic_report_names_thread_location_and_message() {
        let report = panic_report(Some("parakernel-kernel"), 42, "boom", Some(("src/kernel/mod.rs", 10, 5)));
        assert_eq!(
            report,
            "parakernel: thread 'parakernel-kernel' (42) panicked at src/kernel/mod.rs:10:5:\nboom\n\
             parakernel: a panic ends the kernel\n"
        );
        assert!(panic_report(None, 1, "x", None).starts_with("parakernel: thread '<unnamed>' (1) panicked:\n"));
    }

    #[test]
    fn a_signal_line_is_cut_not_overrun() {
        let mut line = Line::new();
        line.push(b"x");
        line.push_number(0);
        line.push_number(u64::MAX);
        line.push_hex(0);
        line.push_hex(0xdead_beef);
        assert_eq!(line.bytes(), b"x0184467440737095516150deadbeef");
        line.push(&[b'y'; 300]);
        assert_eq!(line.bytes().len(), 256);
    }
}
