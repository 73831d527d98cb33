//! Ctrl-C for `parakernel run`: a SIGINT from outside the process (a terminal's Ctrl-C, `kill
//! -INT`) is noted for the runner, which interrupts every running cell, writes what ran and
//! exits 130; it is not passed on (the runner interrupts the main lane's cell too, through the
//! kernel). The kernel's own SIGINT to the main thread (how it interrupts a main-lane cell,
//! `pthread_kill`) goes on to Python's handler, installed before this one. A SIGTERM (what
//! `timeout`, CI runners and service managers send) writes what ran at once and exits 143.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// How many times an outside SIGINT came.
static PRESSED: AtomicUsize = AtomicUsize::new(0);
/// Whether a SIGTERM came.
static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_signal: libc::c_int) {
    TERMINATED.store(true, Ordering::SeqCst);
}
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The handler that was installed before this one (Python's), as the address `sigaction` gave.
static PREVIOUS: AtomicUsize = AtomicUsize::new(0);
static PREVIOUS_SIGINFO: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler; only its code is read.
    let code = unsafe { (*info).si_code };
    if code != libc::SI_TKILL {
        // The runner interrupts every running cell itself (the main lane's through the
        // kernel's own SIGINT): once, not twice.
        PRESSED.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let previous = PREVIOUS.load(Ordering::SeqCst);
    if previous == libc::SIG_DFL || previous == libc::SIG_IGN || previous == 0 {
        return;
    }
    if PREVIOUS_SIGINFO.load(Ordering::SeqCst) {
        // SAFETY: the address is the SA_SIGINFO handler `sigaction` reported, called as the
        // kernel would have called it.
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = unsafe { std::mem::transmute(previous) };
        handler(signal, info, context);
    } else {
        // SAFETY: the address is the plain handler `sigaction` reported (Python's, which is
        // async-signal-safe).
        let handler: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(previous) };
        handler(signal);
    }
}

/// Installs the handler, once, in front of whatever handles SIGINT now (call it once Python's
/// handler is in place: from the main lane, `PythonOptions::on_main_ready`).
pub fn install() {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: no interpreter's GIL is needed: only signal dispositions change. A zeroed
    // sigaction is a valid starting point; the handlers only touch atomics, and the SIGINT one
    // calls the previous handler, which is async-signal-safe (Python's).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigint as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&raw mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGINT, &raw const action, &raw mut previous) == 0 {
            PREVIOUS_SIGINFO.store(previous.sa_flags & libc::SA_SIGINFO != 0, Ordering::SeqCst);
            PREVIOUS.store(previous.sa_sigaction, Ordering::SeqCst);
        }
        let mut terminate: libc::sigaction = std::mem::zeroed();
        terminate.sa_sigaction = on_sigterm as *const () as usize;
        terminate.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&raw mut terminate.sa_mask);
        libc::sigaction(libc::SIGTERM, &raw const terminate, std::ptr::null_mut());
    }
}

/// Whether a SIGTERM came.
pub fn terminated() -> bool {
    TERMINATED.load(Ordering::SeqCst)
}

/// How many times Ctrl-C was pressed so far.
pub fn presses() -> usize {
    PRESSED.load(Ordering::SeqCst)
}
