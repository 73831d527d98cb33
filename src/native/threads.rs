//! Spawning the kernel's threads that touch Python: SIGINT blocked (it must reach the main
//! thread) and, for threads that run Python code, a main thread's stack.

/// Spawns a thread with SIGINT blocked, so that the signal always reaches the main thread
/// (Python runs signal handlers there only, and only there is `time.sleep` woken by one).
pub fn spawn_without_sigint(
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    spawn_python_thread(name, None, body)
}

/// Stack for threads that run Python code: `CPython`'s C recursion limit (e.g. `repr` of a deeply
/// nested list, Jedi) assumes the usual 8 MiB of a main thread; Rust's default is 2 MiB.
pub const PYTHON_STACK: usize = 16 * 1024 * 1024;

/// As [`spawn_without_sigint`], with a stack of `stack_size` bytes when given.
pub fn spawn_python_thread(
    name: &str,
    stack_size: Option<usize>,
    body: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    // SAFETY: sigset operations on local sets; pthread_sigmask changes only the calling thread's
    // mask, which the new thread inherits, and is restored right after the spawn.
    let previous = unsafe {
        let mut block: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut block);
        libc::sigaddset(&raw mut block, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const block, &raw mut previous);
        previous
    };
    let mut builder = std::thread::Builder::new().name(name.into());
    if let Some(size) = stack_size {
        builder = builder.stack_size(size);
    }
    let thread = builder.spawn(body).expect("spawning a thread");
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &raw const previous, std::ptr::null_mut()) };
    thread
}
