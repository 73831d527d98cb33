//! One tokio task per message socket (shell, control, stdin: ROUTER; iopub: XPUB). Each owns
//! its socket, reads whole messages into its bounded queue, writes what the dispatcher routes to
//! it, and logs its connection events. Never looks inside a frame, apart from iopub's
//! subscribe byte.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::dispatch::{SocketCommand, SocketQueue};
use super::monitor::Monitor;
use super::socket::{Received, WatchedSocket, MAX_FRAMES};
use super::{Channel, Incoming, TransportError, INCOMING_QUEUE_CAPACITY};

/// Messages read in one turn before the task lets the others run.
const READ_BATCH: usize = 32;

/// Bytes of the messages a socket has handed to the kernel that the kernel still holds
/// (their frames are alive). Past the limit the socket reads nothing more until the kernel
/// lets go of some: a stranger who sends whole messages faster than the kernel checks their
/// signatures cannot pile them up (libzmq then holds at most its high-water mark per
/// connection, and stops reading those connections).
pub(super) struct Queued {
    bytes: AtomicU64,
    limit: u64,
    freed: Notify,
}

impl Queued {
    pub(super) fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self { bytes: AtomicU64::new(0), limit, freed: Notify::new() })
    }

    fn over(&self) -> bool {
        self.bytes.load(Ordering::Acquire) > self.limit
    }
}

/// The last frame of a message handed to the kernel: counts the message's bytes in
/// [`Queued`] until the kernel drops it.
struct Counted {
    frame: Bytes,
    size: u64,
    queued: Arc<Queued>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.queued.bytes.fetch_sub(self.size, Ordering::AcqRel);
        // Stores a wake-up if the task is not waiting yet: none is lost.
        self.queued.freed.notify_one();
    }
}

/// Makes the message's last frame count its bytes until the message is dropped.
fn count(mut frames: Vec<Bytes>, queued: &Arc<Queued>) -> Vec<Bytes> {
    let size: u64 = frames.iter().map(|frame| frame.len() as u64).sum();
    if let Some(last) = frames.pop() {
        queued.bytes.fetch_add(size, Ordering::AcqRel);
        frames.push(Bytes::from_owner(Counted { frame: last, size, queued: Arc::clone(queued) }));
    }
    frames
}

const SUBSCRIBE: u8 = 1;
const UNSUBSCRIBE: u8 = 0;

/// Starts a ROUTER socket's task; returns its incoming queue and the queue its writes come from.
pub(super) fn start_router(
    channel: Channel,
    socket: zmq::Socket,
    context: &zmq::Context,
    queued_limit: u64,
) -> Result<(mpsc::Receiver<Incoming>, SocketQueue), TransportError> {
    let (incoming, incoming_queue) = mpsc::channel(INCOMING_QUEUE_CAPACITY);
    let (commands, command_queue) = mpsc::unbounded_channel();
    let io = SocketIo::new(channel.name(), socket, context, queued_limit)?;
    tokio::spawn(io.serve(command_queue, incoming, move |frames| Some(Incoming { channel, frames })));
    Ok((incoming_queue, commands))
}

/// Starts the iopub task; returns the subscription queue and the queue of frames to publish.
pub(super) fn start_iopub(
    socket: zmq::Socket,
    context: &zmq::Context,
    queued_limit: u64,
) -> Result<(mpsc::Receiver<Bytes>, SocketQueue), TransportError> {
    let (subscriptions, subscription_queue) = mpsc::channel(INCOMING_QUEUE_CAPACITY);
    let (commands, command_queue) = mpsc::unbounded_channel();
    let io = SocketIo::new("iopub", socket, context, queued_limit)?;
    tokio::spawn(io.serve(command_queue, subscriptions, subscription));
    Ok((subscription_queue, commands))
}

struct SocketIo {
    name: &'static str,
    socket: WatchedSocket,
    monitor: Monitor,
    queued: Arc<Queued>,
}

impl SocketIo {
    fn new(name: &'static str, socket: zmq::Socket, context: &zmq::Context, queued_limit: u64) -> Result<Self, TransportError> {
        let monitor = Monitor::attach(name, &socket, context)?;
        let socket = WatchedSocket::new(socket).map_err(|source| TransportError::Watch { socket: name, source })?;
        Ok(Self { name, socket, monitor, queued: Queued::new(queued_limit) })
    }

    /// Serves until every sender of `commands` is gone. `accept` turns a received message into
    /// what the queue carries (`None`: nothing to pass on). While the queue is full, nothing more
    /// is read: libzmq holds the peer's messages and stops reading its connection.
    async fn serve<T: Send + 'static>(
        mut self,
        mut commands: mpsc::UnboundedReceiver<SocketCommand>,
        queue: mpsc::Sender<T>,
        accept: impl Fn(Vec<Bytes>) -> Option<T> + Send + 'static,
    ) {
        let name = self.name;
        // A message read while the queue was full, passed on once there is room.
        let mut waiting: Option<T> = None;
        let mut queue_open = true;
        loop {
            // Before every wait: libzmq wakes `ZMQ_FD` only for a reader that has looked at
            // its events since the last signal (a monitor never read wedged libzmq's I/O
            // thread after about 2,000 connection events).
            self.monitor.log_events();
            let mut more_to_read = false;
            if waiting.is_none() && !self.queued.over() {
                more_to_read = self.read_batch(&queue, &mut waiting, &mut queue_open, &accept);
            }
            // Judged after reading: the batch may have just gone over, with messages left in
            // libzmq that no new signal will announce.
            let over = self.queued.over();
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(SocketCommand::Send(frames)) => self.send(frames),
                    // Every earlier message is in libzmq's hands by now.
                    Some(SocketCommand::Flush(passed)) => {
                        let _ = passed.send(());
                    }
                    None => break,
                },
                permit = queue.reserve(), if waiting.is_some() => match permit {
                    Ok(permit) => permit.send(waiting.take().expect("a message is waiting")),
                    Err(_) => {
                        waiting = None;
                        queue_open = false;
                    }
                },
                () = self.monitor.changed() => self.monitor.log_events(),
                () = self.socket.changed() => {}
                () = self.queued.freed.notified(), if over => {}
                () = tokio::task::yield_now(), if more_to_read => {}
            }
        }
        // Events that arrived while the last commands were written.
        self.monitor.log_events();
        tracing::debug!(socket = name, "outgoing queue closed; socket task ends");
    }

    /// Reads up to [`READ_BATCH`] messages into the queue; returns whether more may be waiting.
    fn read_batch<T>(
        &self,
        queue: &mpsc::Sender<T>,
        waiting: &mut Option<T>,
        queue_open: &mut bool,
        accept: &impl Fn(Vec<Bytes>) -> Option<T>,
    ) -> bool {
        for _ in 0..READ_BATCH {
            if self.queued.over() {
                return false;
            }
            if !self.socket.has_message() {
                return false;
            }
            let frames = match self.socket.receive() {
                Ok(Received::Message(frames)) => frames,
                Ok(Received::Nothing) => return false,
                Ok(Received::TooManyFrames(count)) => {
                    tracing::warn!(socket = self.name, frames = count, max = MAX_FRAMES, "dropped a message with too many frames");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(socket = self.name, %error, "receive failed; socket keeps serving");
                    return false;
                }
            };
            if !*queue_open {
                // The kernel no longer reads this socket: read and drop, so libzmq holds nothing.
                continue;
            }
            let Some(item) = accept(count(frames, &self.queued)) else { continue };
            match queue.try_send(item) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(item)) => {
                    *waiting = Some(item);
                    return false;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => *queue_open = false,
            }
        }
        true
    }

    fn send(&self, frames: Vec<Bytes>) {
        let minimum = if self.name == "iopub" { 1 } else { 2 };
        if frames.len() < minimum {
            tracing::warn!(socket = self.name, frames = frames.len(), "dropped: too few frames to send");
            return;
        }
        tracing::trace!(socket = self.name, frames = frames.len(), "sending");
        // A ROUTER drops a message for a peer that is gone or unknown, and iopub one for a
        // subscriber over its high-water mark, as ipykernel's sockets do.
        if let Err(error) = self.socket.send(frames) {
            tracing::debug!(socket = self.name, %error, "message dropped by libzmq");
        }
    }
}

/// The topic of a subscribe message; `None` for anything else (logged).
fn subscription(message: Vec<Bytes>) -> Option<Bytes> {
    let Ok([frame]) = <[Bytes; 1]>::try_from(message) else {
        tracing::debug!("ignored a message on iopub that is not a subscription");
        return None;
    };
    match frame.first() {
        Some(&SUBSCRIBE) => Some(frame.slice(1..)),
        Some(&UNSUBSCRIBE) => {
            tracing::debug!(topic_length = frame.len() - 1, "iopub unsubscribe");
            None
        }
        _ => {
            tracing::debug!("ignored a message on iopub that is not a subscription");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_topic_loses_its_leading_byte() {
        let topic = subscription(vec![Bytes::from_static(b"\x01status")]);
        assert_eq!(topic, Some(Bytes::from_static(b"status")));
        assert_eq!(subscription(vec![Bytes::from_static(b"\x01")]), Some(Bytes::new()));
    }

    #[test]
    fn other_messages_are_not_subscriptions() {
        assert_eq!(subscription(vec![Bytes::from_static(b"\x00status")]), None);
        assert_eq!(subscription(vec![Bytes::new()]), None);
        assert_eq!(subscription(vec![Bytes::from_static(b"\x01a"), Bytes::new()]), None);
    }
}
