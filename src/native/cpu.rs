//! CPU time per lane: what the lane threads of each lane (by name, across restarts) spent
//! running jobs, for `%lanes`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::sync::LockExt;

/// CPU time the lane threads of one lane (by name, across restarts) spent running jobs.
#[derive(Debug, Default)]
pub struct CpuMeter {
    inner: Mutex<CpuSpent>,
}

#[derive(Debug, Default)]
struct CpuSpent {
    done: Duration,
    /// While a job runs: the lane thread's CPU clock and its reading when the job started. More
    /// than one after `%lane restart`, while the old interpreter's job ends beside the new one's.
    running: Vec<(libc::clockid_t, Duration)>,
}

/// The calling thread's CPU clock.
fn own_cpu_clock() -> Option<libc::clockid_t> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self names the calling thread, alive for the call; `clock` is writable.
    (unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &raw mut clock) } == 0).then_some(clock)
}

fn read_clock(clock: libc::clockid_t) -> Option<Duration> {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `time` is a valid timespec to write to; an invalid clock is reported, not UB.
    if unsafe { libc::clock_gettime(clock, &raw mut time) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(time.tv_sec).unwrap_or(0),
        u32::try_from(time.tv_nsec).unwrap_or(0),
    ))
}

impl CpuMeter {
    fn lock(&self) -> MutexGuard<'_, CpuSpent> {
        self.inner.lock_unpoisoned()
    }

    pub(super) fn begin(&self) {
        if let Some(clock) = own_cpu_clock() {
            if let Some(now) = read_clock(clock) {
                self.lock().running.push((clock, now));
            }
        }
    }

    pub(super) fn end(&self) {
        let Some(clock) = own_cpu_clock() else { return };
        let mut spent = self.lock();
        if let Some(index) = spent.running.iter().position(|(running, _)| *running == clock) {
            let (_, started) = spent.running.swap_remove(index);
            if let Some(now) = read_clock(clock) {
                spent.done += now.saturating_sub(started);
            }
        }
    }

    /// The CPU time so far, including the running job's. The lane thread cannot exit while a
    /// job runs (it calls `end` first, under the same lock), so its clock is valid here.
    pub fn total(&self) -> Duration {
        let spent = self.lock();
        let running: Duration = spent
            .running
            .iter()
            .filter_map(|(clock, started)| Some(read_clock(*clock)?.saturating_sub(*started)))
            .sum();
        spent.done + running
    }
}

/// CPU meters by lane name. Rust data only.
static METERS: Mutex<BTreeMap<String, Arc<CpuMeter>>> = Mutex::new(BTreeMap::new());

/// The meter of the lane called `name` (created on first use, kept across restarts).
pub fn cpu_meter(name: &str) -> Arc<CpuMeter> {
    let mut meters = METERS.lock_unpoisoned();
    Arc::clone(meters.entry(name.to_owned()).or_default())
}

/// CPU seconds per lane name.
pub fn cpu_times() -> BTreeMap<String, f64> {
    METERS
        .lock_unpoisoned()
        .iter()
        .map(|(name, meter)| (name.clone(), meter.total().as_secs_f64()))
        .collect()
}
