//! The processes cells started: at shutdown they end with the kernel, as under ipykernel
//! (which terminates its process tree when it shuts down), instead of living on re-parented to
//! PID 1. A cell's `subprocess.run(['sleep', '100'])` in a lane that is stuck, or a server a
//! cell started and forgot, would otherwise survive every restart.
//!
//! Linux only: the process tree is read from `/proc`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long the processes get between SIGTERM and SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(1);

/// The live descendants of this process (children, their children, ...), zombies left out.
pub fn descendants() -> BTreeSet<i32> {
    descendants_of(std::process::id().cast_signed())
}

fn descendants_of(root: i32) -> BTreeSet<i32> {
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some((state, parent)) = stat(pid) {
            if state != 'Z' && state != 'X' {
                children.entry(parent).or_default().push(pid);
            }
        }
    }
    let mut found = BTreeSet::new();
    let mut next = vec![root];
    while let Some(parent) = next.pop() {
        for &child in children.get(&parent).into_iter().flatten() {
            if found.insert(child) {
                next.push(child);
            }
        }
    }
    found
}

/// A process's state letter and parent, from `/proc/PID/stat` (`pid (comm) S ppid ...`; the
/// command may contain spaces and parentheses, so it is read from the last `)`).
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = text.get(text.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

fn signal_all(pids: &BTreeSet<i32>, signal: Signal) {
    for &pid in pids {
        // A process that has ended since it was listed is no error.
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Sends SIGTERM to every descendant, waits up to `grace` for them to end, then sends SIGKILL
/// to those left (and to any they started meanwhile). Returns how many were signalled.
pub fn end_descendants(grace: Duration) -> usize {
    end_descendants_of(std::process::id().cast_signed(), grace)
}

fn end_descendants_of(root: i32, grace: Duration) -> usize {
    let first = descendants_of(root);
    if first.is_empty() {
        return 0;
    }
    tracing::info!(
        processes = first.len(),
        "ending the processes the cells started"
    );
    signal_all(&first, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let mut pause = Duration::from_millis(5);
    loop {
        let left = descendants_of(root);
        if left.is_empty() {
            return first.len();
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                processes = left.len(),
                "processes the cells started ignored SIGTERM; killing them"
            );
            signal_all(&left, Signal::SIGKILL);
            return first.len() + left.difference(&first).count();
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// SIGKILL to every descendant, at once: the last thing before the process exits.
pub fn kill_descendants() {
    signal_all(&descendants(), Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_are_ended_down_the_tree() {
        // sh starts `sleep`, which starts nothing: ending sh's descendants ends the sleep
        // (and a `sleep` that ignores SIGTERM would be killed after the grace).
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 300 & echo started; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh starts");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("piped")),
            &mut line,
        )
        .expect("sh says it started the sleep");
        let sh = child.id().cast_signed();
        let tree = descendants_of(sh);
        assert_eq!(tree.len(), 1, "sh has one child, the sleep: {tree:?}");
        assert!(descendants().contains(&sh), "this process's tree holds sh");
        assert_eq!(end_descendants_of(sh, Duration::from_secs(5)), 1);
        assert!(descendants_of(sh).is_empty());
        // With its sleep gone, sh's `wait` returns and sh exits.
        assert!(child.wait().expect("sh is waited for").success());
    }
}
