//! The fatal-message hooks (`parakernel::fatal`) in a child process: this test binary started
//! again with `PARAKERNEL_FATAL_TEST_CHILD` naming how the child dies, its stderr read by the
//! parent. No kernel message makes a thread of the real kernel panic, so the panic hook is proven
//! here, with the very `install` the binary calls first thing.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

const CHILD: &str = "PARAKERNEL_FATAL_TEST_CHILD";

/// In a child: installs the hooks, then dies as asked. In the parent: does nothing.
#[test]
fn child() {
    let Ok(how) = std::env::var(CHILD) else { return };
    parakernel::fatal::install();
    let body: fn() = match how.as_str() {
        "panic" => || panic!("deliberate panic number {}", 42),
        "stack overflow" => || {
            std::hint::black_box(recurse(0));
        },
        other => panic!("unknown child {other:?}"),
    };
    let thread = std::thread::Builder::new().name("doomed-thread".into()).spawn(body).unwrap();
    let _ = thread.join();
    // Reached only if the hooks let the process live on.
    std::process::exit(0);
}

#[allow(unconditional_recursion)] // on purpose: it ends in a stack overflow
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    recurse(depth + 1) + frame[0]
}

fn run_child(how: &str) -> (Output, String) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD, how)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run the test binary as a child");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stderr)
}

#[test]
fn a_panic_on_another_thread_is_reported_and_ends_the_process() {
    let (output, stderr) = run_child("panic");
    assert_eq!(output.status.signal(), Some(libc::SIGABRT), "{}\n{stderr}", output.status);
    let report = stderr.find("parakernel: thread 'doomed-thread' (").expect(&stderr);
    let rest = &stderr[report..];
    assert!(rest.contains(") panicked at tests/fatal.rs:"), "{stderr}");
    assert!(rest.contains("\ndeliberate panic number 42\n"), "{stderr}");
    assert!(rest.contains("parakernel: fatal signal SIGABRT in thread 'doomed-thread' ("), "{stderr}");
}

#[test]
fn a_stack_overflow_is_still_reported_by_rust_and_by_the_kernel() {
    let (output, stderr) = run_child("stack overflow");
    assert_eq!(output.status.signal(), Some(libc::SIGABRT), "{}\n{stderr}", output.status);
    let ours = stderr.find("parakernel: fatal signal SIGSEGV (fault address 0x").expect(&stderr);
    // Rust's own handler ran after ours, and aborted.
    let rusts = stderr.find("has overflowed its stack").expect(&stderr);
    let abort = stderr.find("parakernel: fatal signal SIGABRT in thread 'doomed-thread'").expect(&stderr);
    assert!(ours < rusts && rusts < abort, "{stderr}");
}
