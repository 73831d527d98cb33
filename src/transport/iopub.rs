//! The iopub XPUB socket: one task that publishes outgoing frames and reads subscriptions at the
//! same time; reads only the subscribe byte, never a published frame.

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::sync::mpsc;
use zeromq::{SocketRecv, SocketSend, XPubSocket, ZmqMessage};

use super::dispatch::{SocketCommand, SocketQueue};
use super::INCOMING_QUEUE_CAPACITY;

const SUBSCRIBE: u8 = 1;
const UNSUBSCRIBE: u8 = 0;

/// Starts the iopub task; returns the subscription queue and the queue of frames to publish.
pub(super) fn start(socket: XPubSocket) -> (mpsc::Receiver<Bytes>, SocketQueue) {
    let (subscriptions, subscription_queue) = mpsc::channel(INCOMING_QUEUE_CAPACITY);
    let (commands, command_queue) = mpsc::unbounded_channel();
    tokio::spawn(run(socket, command_queue, subscriptions));
    (subscription_queue, commands)
}

/// zeromq 0.7's XPUB learns a subscription only inside `recv`, so this task must keep reading
/// while it publishes. Publishing never waits for the kernel to take subscriptions either:
/// topics it has not taken yet wait in `pending`, so none is lost and none blocks iopub.
async fn run(
    mut socket: XPubSocket,
    mut commands: mpsc::UnboundedReceiver<SocketCommand>,
    subscriptions: mpsc::Sender<Bytes>,
) {
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(SocketCommand::Send(frames)) => publish(&mut socket, frames).await,
                // `publish` returns after writing to every subscriber, so all earlier messages
                // are written by now.
                Some(SocketCommand::Flush(passed)) => {
                    let _ = passed.send(());
                }
                None => break,
            },
            // Cancel-safe: the fair queue hands out whole messages, and the subscription is
            // recorded in the same poll that returns it.
            received = socket.recv() => match received {
                Ok(message) => {
                    if let Some(topic) = subscription(message) {
                        if !subscriptions.is_closed() {
                            pending.push_back(topic);
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "iopub receive failed; socket keeps serving"),
            },
            permit = subscriptions.reserve(), if !pending.is_empty() => match permit {
                Ok(permit) => permit.send(pending.pop_front().expect("pending is not empty")),
                // The kernel stopped listening for subscriptions; publishing goes on.
                Err(_) => pending.clear(),
            },
        }
    }
    tracing::debug!("outgoing queue closed; iopub task ends");
}

async fn publish(socket: &mut XPubSocket, frames: Vec<Bytes>) {
    tracing::trace!(frames = ?frames, "publishing");
    let message = match ZmqMessage::try_from(frames) {
        Ok(message) => message,
        Err(error) => {
            tracing::warn!(%error, "dropped: an iopub message needs at least a topic frame");
            return;
        }
    };
    if let Err(error) = socket.send(message).await {
        tracing::warn!(%error, "publish failed; iopub keeps serving");
    }
}

/// The topic of a subscribe message; `None` for anything else (logged).
fn subscription(message: ZmqMessage) -> Option<Bytes> {
    if message.len() != 1 {
        tracing::debug!(
            frames = message.len(),
            "ignored a message on iopub that is not a subscription"
        );
        return None;
    }
    let frame = message.into_vec().pop()?;
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
        let topic = subscription(ZmqMessage::from(Bytes::from_static(b"\x01status")));
        assert_eq!(topic, Some(Bytes::from_static(b"status")));
        let everything = subscription(ZmqMessage::from(Bytes::from_static(b"\x01")));
        assert_eq!(everything, Some(Bytes::new()));
    }

    #[test]
    fn other_messages_are_not_subscriptions() {
        assert_eq!(
            subscription(ZmqMessage::from(Bytes::from_static(b"\x00status"))),
            None
        );
        assert_eq!(subscription(ZmqMessage::from(Bytes::new())), None);
        let two_frames =
            ZmqMessage::try_from(vec![Bytes::from_static(b"\x01a"), Bytes::new()]).unwrap();
        assert_eq!(subscription(two_frames), None);
    }
}
