//! A libzmq socket driven from tokio: its `ZMQ_FD` is watched by tokio's reactor and says only
//! "look at `ZMQ_EVENTS` again", so every wait re-checks the events after clearing readiness.
//! Reads and writes whole multipart messages without blocking; knows nothing of their content.

use std::os::fd::{AsRawFd, RawFd};

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A message with more frames than this is read to its end and dropped: no Jupyter message
/// needs more (identities, the delimiter, five parts and its buffers).
pub(super) const MAX_FRAMES: usize = 4096;

/// Frames at least this long are handed to libzmq without a copy.
const ZERO_COPY_FROM: usize = 64 * 1024;

/// `ZMQ_FD`, which libzmq owns: never closed here.
struct EventsFd(RawFd);

impl AsRawFd for EventsFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// One received frame, kept in libzmq's own buffer (no copy) until the last `Bytes` that shares
/// it is dropped.
struct ReceivedFrame(zmq::Message);

// SAFETY: no Python interpreter is involved. A `zmq_msg_t` is plain data whose buffer is
// reference-counted atomically by libzmq; it may be read and closed on any thread, it just must
// not be used by two threads at once, which `Bytes` never does with its owner (it only reads).
unsafe impl Send for ReceivedFrame {}
// SAFETY: as above; shared access only ever reads the frame's bytes.
unsafe impl Sync for ReceivedFrame {}

impl AsRef<[u8]> for ReceivedFrame {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// What reading one message gave.
pub(super) enum Received {
    Message(Vec<Bytes>),
    /// A message over [`MAX_FRAMES`] frames, read and dropped.
    TooManyFrames(usize),
    /// Nothing to read now.
    Nothing,
}

pub(super) struct WatchedSocket {
    // Declared first, so dropped first: tokio stops watching the fd before libzmq closes it.
    events: AsyncFd<EventsFd>,
    socket: zmq::Socket,
}

impl WatchedSocket {
    pub(super) fn new(socket: zmq::Socket) -> std::io::Result<Self> {
        let fd = socket.get_fd().map_err(std::io::Error::from)?;
        // SAFETY: no Python interpreter is involved. The fd belongs to `socket`, which is
        // declared after `events` in this struct and so closed only after tokio stopped
        // watching the fd; nothing here closes or replaces it.
        let events = unsafe { AsyncFd::register_with_interest(EventsFd(fd), Interest::READABLE)? };
        Ok(Self { events, socket })
    }

    /// Waits until libzmq signals that the socket's events may have changed. Readiness is
    /// cleared before returning: the caller looks at the events next, and any later signal
    /// wakes the next wait.
    ///
    /// The future borrows only the watched fd, not the (not `Sync`) socket, so a task can hold
    /// it across an await and still be sent between threads.
    pub(super) fn changed(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        let events = &self.events;
        async move {
            match events.readable().await {
                Ok(mut guard) => guard.clear_ready(),
                Err(error) => {
                    // The reactor is shutting down; nothing more will be read.
                    tracing::debug!(%error, "socket watch ended");
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Whether a whole message can be read now.
    pub(super) fn has_message(&self) -> bool {
        self.socket.get_events().is_ok_and(|events| events.contains(zmq::POLLIN))
    }

    /// Reads one whole message if one is there.
    pub(super) fn receive(&self) -> Result<Received, zmq::Error> {
        let mut frames = Vec::new();
        let mut count = 0usize;
        loop {
            let mut frame = zmq::Message::new();
            match self.socket.recv(&mut frame, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) if count == 0 => return Ok(Received::Nothing),
                Err(error) => return Err(error),
            }
            count += 1;
            let more = frame.get_more();
            if count <= MAX_FRAMES {
                frames.push(Bytes::from_owner(ReceivedFrame(frame)));
            }
            if !more {
                break;
            }
        }
        if count > MAX_FRAMES {
            return Ok(Received::TooManyFrames(count));
        }
        Ok(Received::Message(frames))
    }

    /// Hands one multipart message to libzmq without waiting. An error means libzmq refused it
    /// (a subscriber or peer over its high-water mark): that message is dropped.
    pub(super) fn send(&self, frames: Vec<Bytes>) -> Result<(), zmq::Error> {
        let last = frames.len().saturating_sub(1);
        for (index, frame) in frames.into_iter().enumerate() {
            let flags = zmq::DONTWAIT | if index < last { zmq::SNDMORE } else { 0 };
            self.socket.send(outgoing_frame(frame), flags)?;
        }
        Ok(())
    }
}

/// A libzmq message holding the frame's bytes: large frames are moved, not copied, when the
/// `Bytes` is the only handle on a `Vec` (as serialized JSON is).
fn outgoing_frame(frame: Bytes) -> zmq::Message {
    if frame.len() < ZERO_COPY_FROM {
        return zmq::Message::from(&frame[..]);
    }
    let boxed: Box<[u8]> = Vec::from(frame).into_boxed_slice();
    zmq::Message::from(boxed)
}
