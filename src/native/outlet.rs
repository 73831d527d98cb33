//! The way out of a lane: every event a lane sends to the kernel, in order, with stream text
//! coalesced (sent on size, on `flush()`, before any other event, or on a short timer).

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::lanes::{Event, RequestId, StreamName};

/// Stream text waits here at most this long for more text.
const STREAM_FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// Stream text above this size is sent at once.
const STREAM_FLUSH_SIZE: usize = 64 * 1024;

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
    pending: Option<PendingText>,
    closed: bool,
}

#[derive(Debug)]
struct PendingText {
    request: Option<RequestId>,
    name: StreamName,
    text: String,
    since: Instant,
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
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends the pending text; the caller holds the outbox lock, which orders all sends.
    fn send_locked(&self, outbox: &mut Outbox) {
        if let Some(pending) = outbox.pending.take() {
            // A kernel that is gone no longer cares.
            let _ = self.events.send(Event::Stream {
                request: pending.request,
                name: pending.name,
                text: pending.text,
            });
        }
    }

    pub(super) fn write(&self, request: Option<RequestId>, name: StreamName, text: &str) {
        let mut outbox = self.lock();
        match &mut outbox.pending {
            Some(pending) if pending.request == request && pending.name == name => {
                pending.text.push_str(text);
            }
            _ => {
                let was_idle = outbox.pending.is_none();
                self.send_locked(&mut outbox);
                outbox.pending = Some(PendingText {
                    request,
                    name,
                    text: text.to_owned(),
                    since: Instant::now(),
                });
                if was_idle {
                    self.wake.notify_one();
                }
            }
        }
        if outbox
            .pending
            .as_ref()
            .is_some_and(|pending| pending.text.len() >= STREAM_FLUSH_SIZE)
        {
            self.send_locked(&mut outbox);
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

    /// The timer thread: sends text that has waited `STREAM_FLUSH_INTERVAL`.
    pub(super) fn run_timer(&self) {
        let mut outbox = self.lock();
        loop {
            if outbox.closed {
                self.send_locked(&mut outbox);
                return;
            }
            match outbox
                .pending
                .as_ref()
                .map(|pending| pending.since + STREAM_FLUSH_INTERVAL)
            {
                None => {
                    outbox = self
                        .wake
                        .wait(outbox)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                Some(due) => {
                    let now = Instant::now();
                    if now >= due {
                        self.send_locked(&mut outbox);
                    } else {
                        outbox = self
                            .wake
                            .wait_timeout(outbox, due - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                }
            }
        }
    }
}
