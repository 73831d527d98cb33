//! One ROUTER socket (shell, control or stdin): a receive task and a send task, so neither
//! direction waits on the other; moves frames without reading them.

use bytes::Bytes;
use tokio::sync::mpsc;
use zeromq::{RouterRecvHalf, RouterSendHalf, RouterSocket, SocketRecv, SocketSend, ZmqMessage};

use super::dispatch::{SocketCommand, SocketQueue};
use super::{Channel, Incoming, INCOMING_QUEUE_CAPACITY};

/// Starts the socket's two tasks; returns the incoming queue and the queue its send task reads.
pub(super) fn start(
    channel: Channel,
    socket: RouterSocket,
) -> (mpsc::Receiver<Incoming>, SocketQueue) {
    let (send_half, recv_half) = socket.split();
    let (incoming, incoming_queue) = mpsc::channel(INCOMING_QUEUE_CAPACITY);
    let (commands, command_queue) = mpsc::unbounded_channel();
    tokio::spawn(receive(channel, recv_half, incoming));
    tokio::spawn(send(channel, send_half, command_queue));
    (incoming_queue, commands)
}

async fn receive(channel: Channel, mut socket: RouterRecvHalf, incoming: mpsc::Sender<Incoming>) {
    loop {
        // Reading a ROUTER is cancel-safe: zeromq's fair queue hands out whole messages.
        let received = tokio::select! {
            received = socket.recv() => received,
            () = incoming.closed() => break,
        };
        match received {
            Ok(message) => {
                tracing::trace!(%channel, frames = ?message.iter().collect::<Vec<_>>(), "received");
                let message = Incoming {
                    channel,
                    frames: message.into_vec(),
                };
                // Waiting here (not dropping) is the back-pressure: zeromq keeps the rest.
                if incoming.send(message).await.is_err() {
                    break;
                }
            }
            Err(error) => tracing::warn!(%channel, %error, "receive failed; socket keeps serving"),
        }
    }
    tracing::debug!(%channel, "incoming receiver dropped; receive task ends");
}

async fn send(
    channel: Channel,
    mut socket: RouterSendHalf,
    mut commands: mpsc::UnboundedReceiver<SocketCommand>,
) {
    let mut writes = WriteTracker::new();
    while let Some(command) = commands.recv().await {
        match command {
            SocketCommand::Send(frames) => {
                send_one(channel, &mut socket, writes.track(frames)).await;
            }
            SocketCommand::Flush(passed) => {
                let written = writes.next_round();
                tokio::spawn(async move {
                    written.await;
                    let _ = passed.send(());
                });
            }
        }
    }
    tracing::debug!(%channel, "outgoing queue closed; send task ends");
}

async fn send_one(channel: Channel, socket: &mut RouterSendHalf, frames: Vec<Bytes>) {
    if frames.len() < 2 {
        tracing::warn!(%channel, frames = frames.len(), "dropped: needs an identity frame and a message");
        return;
    }
    let identity_length = frames[0].len();
    tracing::trace!(%channel, frames = ?frames, "sending");
    let message = match ZmqMessage::try_from(frames) {
        Ok(message) => message,
        Err(error) => {
            tracing::warn!(%channel, %error, "dropped: not a message");
            return;
        }
    };
    // zeromq 0.7 refuses an unknown or disconnected identity where libzmq drops silently; a
    // client that went away is normal, so this is a dropped message, not a failure.
    if let Err(error) = socket.send(message).await {
        tracing::debug!(%channel, %error, identity_length, "dropped: peer unknown or gone");
    }
}

/// Knows when the messages handed to zeromq have been written.
///
/// zeromq 0.7's ROUTER `send` only queues the message for a per-peer writer task, which
/// encodes it and flushes the TCP stream in one step. Each message's last frame is wrapped so
/// that dropping it (which the writer does right after encoding, and which also happens when
/// the message is refused or its peer's queue is discarded) drops a sender of this round's
/// channel; the round is written when all of them are gone.
struct WriteTracker {
    round: mpsc::Sender<()>,
    round_written: mpsc::Receiver<()>,
}

impl WriteTracker {
    fn new() -> Self {
        let (round, round_written) = mpsc::channel(1);
        Self {
            round,
            round_written,
        }
    }

    fn track(&self, mut frames: Vec<Bytes>) -> Vec<Bytes> {
        if let Some(last) = frames.pop() {
            frames.push(Bytes::from_owner(TrackedFrame {
                frame: last,
                _round: self.round.clone(),
            }));
        }
        frames
    }

    /// Closes the current round and returns a future that resolves once its messages are
    /// written or dropped; later messages belong to a new round.
    fn next_round(&mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let Self {
            round,
            round_written,
        } = std::mem::replace(self, Self::new());
        drop(round);
        let mut round_written = round_written;
        async move {
            // Nothing is ever sent: `recv` returns `None` once every tracked frame is dropped.
            let _ = round_written.recv().await;
        }
    }
}

/// A frame that holds a sender of its round's channel until zeromq lets go of it.
struct TrackedFrame {
    frame: Bytes,
    _round: mpsc::Sender<()>,
}

impl AsRef<[u8]> for TrackedFrame {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_round_is_written_when_its_frames_are_dropped() {
        let mut writes = WriteTracker::new();
        let first = writes.track(vec![Bytes::from_static(b"id"), Bytes::from_static(b"one")]);
        assert_eq!(first[1], Bytes::from_static(b"one"));
        let round = writes.next_round();
        let later = writes.track(vec![Bytes::from_static(b"id"), Bytes::from_static(b"two")]);

        let mut round = std::pin::pin!(round);
        assert!(
            futures_poll_once(round.as_mut()).await.is_none(),
            "frame still held"
        );
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(10), round)
            .await
            .expect("round resolves once its frames are dropped");
        drop(later);
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(future: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            output = future => Some(output),
            () = std::future::ready(()) => None,
        }
    }
}
