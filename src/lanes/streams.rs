//! Coalesces stream writes: consecutive writes of one request to one stream become one
//! `stream` message, flushed on a short timer, on size, and before any other output. The one
//! stream buffer: each lane's way out (`native`'s outlet) keeps one, and the kernel publishes
//! what comes out of it as it comes.

use std::time::{Duration, Instant};

use super::{RequestId, StreamName};

/// How long text may wait for more text before it is sent.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Text above this size is sent at once.
pub const FLUSH_SIZE: usize = 1 << 20;

/// Text ready to be published as one `stream` message.
#[derive(Debug, PartialEq, Eq)]
pub struct Flushed {
    pub request: Option<RequestId>,
    pub name: StreamName,
    pub text: String,
}

#[derive(Debug, Default)]
pub struct StreamBuffer {
    pending: Option<(Flushed, Instant)>,
}

impl StreamBuffer {
    /// Adds `text`. Returns what must be published before it (text of another request or
    /// stream), or everything when the size limit is reached.
    pub fn push(&mut self, request: Option<RequestId>, name: StreamName, text: &str, now: Instant) -> Vec<Flushed> {
        let mut ready = Vec::new();
        match &mut self.pending {
            Some((pending, _)) if pending.request == request && pending.name == name => {
                pending.text.push_str(text);
            }
            _ => {
                ready.extend(self.take());
                self.pending = Some((Flushed { request, name, text: text.to_owned() }, now));
            }
        }
        if self.pending.as_ref().is_some_and(|(pending, _)| pending.text.len() >= FLUSH_SIZE) {
            ready.extend(self.take());
        }
        ready
    }

    /// Everything pending, to publish now.
    pub fn take(&mut self) -> Option<Flushed> {
        self.pending.take().map(|(pending, _)| pending)
    }

    /// When the pending text is due, if there is any.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|(_, since)| *since + FLUSH_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_writes_of_one_stream_coalesce() {
        let mut buffer = StreamBuffer::default();
        let now = Instant::now();
        for line in 0..1000 {
            assert!(buffer.push(Some(1), StreamName::Stdout, &format!("{line}\n"), now).is_empty());
        }
        let flushed = buffer.take().unwrap();
        assert_eq!(flushed.text.lines().count(), 1000);
        assert!(buffer.take().is_none());
        assert!(buffer.deadline().is_none());
    }

    #[test]
    fn another_stream_or_request_flushes_what_came_before() {
        let mut buffer = StreamBuffer::default();
        let now = Instant::now();
        buffer.push(Some(1), StreamName::Stdout, "a", now);
        let ready = buffer.push(Some(1), StreamName::Stderr, "b", now);
        assert_eq!(ready, vec![Flushed { request: Some(1), name: StreamName::Stdout, text: "a".into() }]);
        let ready = buffer.push(Some(2), StreamName::Stderr, "c", now);
        assert_eq!(ready, vec![Flushed { request: Some(1), name: StreamName::Stderr, text: "b".into() }]);
        assert_eq!(buffer.deadline(), Some(now + FLUSH_INTERVAL));
    }

    #[test]
    fn large_text_is_sent_at_once() {
        let mut buffer = StreamBuffer::default();
        let big = "x".repeat(FLUSH_SIZE);
        let ready = buffer.push(None, StreamName::Stdout, &big, Instant::now());
        assert_eq!(ready.len(), 1);
        assert!(buffer.take().is_none());
    }
}
