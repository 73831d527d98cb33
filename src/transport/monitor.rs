//! Logs what happens to a socket's connections (libzmq's socket monitor): refused handshakes
//! and dropped connections, rate-limited so that a flood of connections cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::socket::{Received, WatchedSocket};
use super::TransportError;

// libzmq's event numbers (zmq.h, 4.3).
const ACCEPTED: u16 = 0x0020;
const ACCEPT_FAILED: u16 = 0x0040;
const DISCONNECTED: u16 = 0x0200;
const HANDSHAKE_FAILED_NO_DETAIL: u16 = 0x0800;
const HANDSHAKE_SUCCEEDED: u16 = 0x1000;
const HANDSHAKE_FAILED_PROTOCOL: u16 = 0x2000;
const HANDSHAKE_FAILED_AUTH: u16 = 0x4000;

/// Warnings a socket logs per [`WINDOW`]; the rest are counted and reported once.
const WARNINGS_PER_WINDOW: u32 = 10;
const WINDOW: Duration = Duration::from_secs(10);

/// Each monitor needs an inproc address of its own.
static NEXT_MONITOR: AtomicU64 = AtomicU64::new(0);

pub(super) struct Monitor {
    socket_name: &'static str,
    events: WatchedSocket,
    limit: RateLimit,
}

impl Monitor {
    pub(super) fn attach(
        socket_name: &'static str,
        watched: &zmq::Socket,
        context: &zmq::Context,
    ) -> Result<Self, TransportError> {
        let setup = |what: &'static str| {
            move |source: zmq::Error| TransportError::Setup { socket: socket_name, what, source }
        };
        let address = format!(
            "inproc://parakernel-monitor-{socket_name}-{}",
            NEXT_MONITOR.fetch_add(1, Ordering::Relaxed)
        );
        let wanted = ACCEPTED
            | ACCEPT_FAILED
            | DISCONNECTED
            | HANDSHAKE_FAILED_NO_DETAIL
            | HANDSHAKE_SUCCEEDED
            | HANDSHAKE_FAILED_PROTOCOL
            | HANDSHAKE_FAILED_AUTH;
        watched.monitor(&address, i32::from(wanted)).map_err(setup("monitor"))?;
        let reader = context.socket(zmq::PAIR).map_err(setup("monitor reader"))?;
        reader.set_linger(0).map_err(setup("monitor reader"))?;
        // libzmq sends monitor events from its I/O thread and blocks when the pipe is full,
        // which would stop every socket of the context: no limit on this side makes the inproc
        // pipe unbounded (events are a few dozen bytes; the reader drains them at every turn).
        reader.set_rcvhwm(0).map_err(setup("monitor reader"))?;
        reader.connect(&address).map_err(setup("monitor reader"))?;
        let events = WatchedSocket::new(reader)
            .map_err(|source| TransportError::Watch { socket: socket_name, source })?;
        Ok(Self { socket_name, events, limit: RateLimit::new() })
    }

    /// Waits until there may be events to log. Call [`Monitor::log_events`] before every wait:
    /// libzmq signals `ZMQ_FD` only to a reader that has looked at its events since.
    pub(super) fn changed(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.events.changed()
    }

    /// Logs every event that has arrived.
    pub(super) fn log_events(&mut self) {
        while self.events.has_message() {
            match self.events.receive() {
                Ok(Received::Message(frames)) => {
                    if let Some((event, value)) = frames.first().and_then(|frame| parse(frame)) {
                        self.log(event, value);
                    }
                }
                Ok(Received::Nothing) => break,
                Ok(Received::TooManyFrames(_)) => {}
                Err(error) => {
                    tracing::debug!(socket = self.socket_name, %error, "monitor read failed");
                    break;
                }
            }
        }
    }

    fn log(&mut self, event: u16, value: u32) {
        let socket = self.socket_name;
        match event {
            ACCEPTED => tracing::debug!(socket, "connection accepted"),
            HANDSHAKE_SUCCEEDED => tracing::debug!(socket, "handshake succeeded"),
            // The gate logs why a TCP connection ended; libzmq does not say.
            DISCONNECTED => tracing::debug!(socket, "connection closed"),
            HANDSHAKE_FAILED_AUTH | HANDSHAKE_FAILED_PROTOCOL | HANDSHAKE_FAILED_NO_DETAIL
            | ACCEPT_FAILED => {
                let Some(suppressed) = self.limit.allow(Instant::now()) else {
                    return;
                };
                if suppressed > 0 {
                    tracing::warn!(socket, suppressed, "connection warnings were not logged in the last {WINDOW:?}");
                }
                match event {
                    HANDSHAKE_FAILED_AUTH => tracing::warn!(
                        socket,
                        "refused a connection: CurveZMQ authentication failed (the peer lacks the \
                         connection file's keys)"
                    ),
                    HANDSHAKE_FAILED_PROTOCOL => tracing::warn!(
                        socket,
                        code = format_args!("{value:#x}"),
                        "refused a connection: {}",
                        protocol_error(value)
                    ),
                    HANDSHAKE_FAILED_NO_DETAIL => tracing::warn!(
                        socket,
                        errno = value,
                        "refused a connection: the ZMTP handshake did not complete (garbage \
                         instead of a greeting, a mechanism mismatch, or too slow)"
                    ),
                    _ => tracing::warn!(
                        socket,
                        errno = value,
                        "cannot accept a connection (out of file descriptors?)"
                    ),
                }
            }
            _ => {}
        }
    }
}

/// What libzmq's protocol error code (zmq.h, `ZMQ_PROTOCOL_ERROR_*`) means for a person.
fn protocol_error(code: u32) -> &'static str {
    match code {
        0x1100_0001 => "CurveZMQ authentication failed (the peer does not hold the server's key)",
        0x1100_0002 => "the peer's security mechanism is not the kernel's (CurveZMQ on one side only)",
        0x1000_0000..=0x10FF_FFFF => "it broke the ZMTP handshake (a malformed or unexpected command)",
        _ => "it broke the ZMTP handshake",
    }
}

/// A monitor event's first frame: the event number and its value, little-endian.
fn parse(frame: &[u8]) -> Option<(u16, u32)> {
    let event = u16::from_le_bytes(frame.get(0..2)?.try_into().ok()?);
    let value = u32::from_le_bytes(frame.get(2..6)?.try_into().ok()?);
    Some((event, value))
}

/// At most [`WARNINGS_PER_WINDOW`] warnings per [`WINDOW`]: what a peer can make the kernel log
/// must not flood the log.
#[derive(Debug)]
pub struct RateLimit {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimit {
    pub fn new() -> Self {
        Self { window_start: Instant::now(), logged: 0, suppressed: 0 }
    }

    /// `Some(n)` if this warning may be logged, `n` being how many were suppressed before it.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if now.duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.logged = 0;
        }
        if self.logged >= WARNINGS_PER_WINDOW {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_as_libzmq_writes_them() {
        assert_eq!(parse(&[0x00, 0x02, 7, 0, 0, 0]), Some((DISCONNECTED, 7)));
        assert_eq!(parse(&[0x00, 0x02]), None);
    }

    #[test]
    fn warnings_are_limited_per_window_and_the_rest_counted() {
        let start = Instant::now();
        let mut limit = RateLimit { window_start: start, logged: 0, suppressed: 0 };
        for _ in 0..WARNINGS_PER_WINDOW {
            assert_eq!(limit.allow(start), Some(0));
        }
        assert_eq!(limit.allow(start), None);
        assert_eq!(limit.allow(start), None);
        assert_eq!(limit.allow(start + WINDOW), Some(2));
    }
}
