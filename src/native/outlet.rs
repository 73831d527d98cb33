//! The way out of a lane: every event a lane sends to the kernel, in order, with stream text
//! coalesced (sent on size, on `flush()`, before any other event, or on a short timer).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::sync::{CondvarExt, LockExt};
use crate::lanes::streams::{Flushed, StreamBuffer};
use crate::lanes::{Event, RequestId, StreamName};

/// Everything a lane sends to the kernel goes through here, so that the order is kept: stream
/// text is buffered (a `print` is a few `write` calls; one event each would cost more than the
/// print) and sent before any other event, on size, on `flush()`, or on a short timer.
#[derive(Debug)]
pub(super) struct Outlet {
    events: UnboundedSender<Event>,
    outbox: Mutex<Outbox>,
    /// Wakes the timer thread when text starts waiting, or when the lane is gone.
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Outbox {
    streams: StreamBuffer,
    closed: bool,
}

impl Outlet {
    pub(super) fn new(events: UnboundedSender<Event>) -> Self {
        Outlet {
            events,
            outbox: Mutex::new(Outbox::default()),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock_unpoisoned()
    }

    /// Sends text the buffer let go of; the caller holds the outbox lock, which orders all
    /// sends.
    fn send_stream(&self, flushed: Flushed) {
        let Flushed { request, name, text } = flushed;
        // A kernel that is gone no longer cares.
        let _ = self.events.send(Event::Stream { request, name, text });
    }

    /// Sends the pending text; the caller holds the outbox lock.
    fn send_locked(&self, outbox: &mut Outbox) {
        if let Some(flushed) = outbox.streams.take() {
            self.send_stream(flushed);
        }
    }

    pub(super) fn write(&self, request: Option<RequestId>, name: StreamName, text: &str) {
        let mut outbox = self.lock();
        let was_idle = outbox.streams.deadline().is_none();
        for flushed in outbox.streams.push(request, name, text, Instant::now()) {
            self.send_stream(flushed);
        }
        if was_idle && outbox.streams.deadline().is_some() {
            self.wake.notify_one();
        }
    }

    pub(super) fn send(&self, event: Event) {
        let mut outbox = self.lock();
        self.send_locked(&mut outbox);
        let _ = self.events.send(event);
    }

    pub(super) fn send_pending(&self) {
        let mut outbox = self.lock();
        self.send_locked(&mut outbox);
    }

    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// The timer thread: sends text that has waited its interval.
    pub(super) fn run_timer(&self) {
        let mut outbox = self.lock();
        loop {
            if outbox.closed {
                self.send_locked(&mut outbox);
                return;
            }
            match outbox.streams.deadline() {
                None => {
                    outbox = self
                        .wake
                        .wait_unpoisoned(outbox);
                }
                Some(due) => {
                    let now = Instant::now();
                    if now >= due {
                        self.send_locked(&mut outbox);
                    } else {
                        outbox = self
                            .wake
                            .wait_timeout_unpoisoned(outbox, due - now);
                    }
                }
            }
        }
    }
}
