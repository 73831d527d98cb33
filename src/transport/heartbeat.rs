//! The heartbeat REP socket: echoes every request at once, on its own task; shares no state with
//! the other sockets and never reads what it echoes.

use tokio::sync::watch;
use zeromq::{RepSocket, SocketRecv, SocketSend};

/// Starts the echo task; it ends when `alive`'s sender is dropped.
pub(super) fn start(socket: RepSocket, alive: watch::Receiver<()>) {
    tokio::spawn(run(socket, alive));
}

async fn run(mut socket: RepSocket, mut alive: watch::Receiver<()>) {
    loop {
        // Reading is cancel-safe: the fair queue hands out whole messages.
        let request = tokio::select! {
            request = socket.recv() => request,
            // No value is ever sent, so this resolves only when the sender is dropped.
            _ = alive.changed() => break,
        };
        match request {
            Ok(message) => {
                if let Err(error) = socket.send(message).await {
                    tracing::debug!(%error, "heartbeat echo not sent; peer gone");
                }
            }
            Err(error) => tracing::debug!(%error, "heartbeat receive failed; socket keeps serving"),
        }
    }
    tracing::debug!("transport dropped; heartbeat ends");
}
