//! Routes each outgoing message to its socket's queue by channel, and turns a flush request into
//! one flush marker per socket; never looks inside frames and never waits on a socket.

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Channel, Outgoing};

/// What a socket's send task does next, in the order it was queued.
pub(super) enum SocketCommand {
    Send(Vec<Bytes>),
    /// Answer once every earlier `Send` on this socket was written or dropped.
    Flush(oneshot::Sender<()>),
}

pub(super) type SocketQueue = mpsc::UnboundedSender<SocketCommand>;

pub(super) struct SocketQueues {
    pub(super) shell: SocketQueue,
    pub(super) control: SocketQueue,
    pub(super) stdin: SocketQueue,
    pub(super) iopub: SocketQueue,
}

impl SocketQueues {
    fn route(&self, message: Outgoing) {
        let queue = match message.channel {
            Channel::Shell => &self.shell,
            Channel::Control => &self.control,
            Channel::Stdin => &self.stdin,
            Channel::Iopub => &self.iopub,
        };
        if queue.send(SocketCommand::Send(message.frames)).is_err() {
            tracing::warn!(channel = %message.channel, "send task has ended; message dropped");
        }
    }

    /// Queues a flush marker behind everything already routed, and answers `done` when every
    /// socket has passed its marker.
    fn flush(&self, done: oneshot::Sender<()>) {
        let markers: Vec<oneshot::Receiver<()>> =
            [&self.shell, &self.control, &self.stdin, &self.iopub]
                .into_iter()
                .map(|queue| {
                    let (passed, marker) = oneshot::channel();
                    // A send task that has ended writes nothing more: its marker counts as passed
                    // (the receiver sees the sender dropped).
                    let _ = queue.send(SocketCommand::Flush(passed));
                    marker
                })
                .collect();
        tokio::spawn(async move {
            for marker in markers {
                let _ = marker.await;
            }
            let _ = done.send(());
        });
    }
}

/// Starts the dispatcher. It ends when every `outgoing` sender is gone, and holds `alive` until
/// then.
pub(super) fn start(
    outgoing: mpsc::UnboundedReceiver<Outgoing>,
    flush_requests: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    queues: SocketQueues,
    alive: watch::Sender<()>,
) {
    tokio::spawn(run(outgoing, flush_requests, queues, alive));
}

async fn run(
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    mut flush_requests: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    queues: SocketQueues,
    _alive: watch::Sender<()>,
) {
    loop {
        tokio::select! {
            message = outgoing.recv() => match message {
                Some(message) => queues.route(message),
                None => break,
            },
            Some(done) = flush_requests.recv() => {
                // The caller sent its messages before asking to flush, so they are in
                // `outgoing` by now even if `select!` picked this branch first: route them
                // before the markers.
                while let Ok(message) = outgoing.try_recv() {
                    queues.route(message);
                }
                queues.flush(done);
            }
        }
    }
    // Flushes asked for before the last sender went away still get their answer.
    while let Ok(done) = flush_requests.try_recv() {
        queues.flush(done);
    }
    tracing::debug!("every outgoing sender is gone; dispatcher ends");
}
