//! The heartbeat REP socket: a thread of its own echoes every request at once, whatever the
//! tokio runtime is doing; shares no state with the other sockets and never reads what it echoes.

use std::thread::JoinHandle;

use tokio::sync::watch;

/// How often the thread looks whether the transport is gone while nobody pings.
const ALIVE_CHECK_MS: i64 = 100;

/// Starts the echo thread; it ends soon after `alive`'s sender is dropped.
pub(super) fn start(socket: zmq::Socket, alive: watch::Receiver<()>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("parakernel-heartbeat".into()).spawn(move || run(&socket, &alive))
}

fn run(socket: &zmq::Socket, alive: &watch::Receiver<()>) {
    // No value is ever sent: `has_changed` fails only once the sender is dropped.
    while alive.has_changed().is_ok() {
        match socket.poll(zmq::POLLIN, ALIVE_CHECK_MS) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "heartbeat poll failed; heartbeat ends");
                return;
            }
        }
        // A REP socket hands out one whole request, and must answer it before the next.
        match socket.recv_multipart(zmq::DONTWAIT) {
            Ok(request) => {
                if let Err(error) = socket.send_multipart(request, zmq::DONTWAIT) {
                    tracing::debug!(%error, "heartbeat echo not sent; peer gone");
                }
            }
            Err(zmq::Error::EAGAIN) => {}
            Err(error) => tracing::debug!(%error, "heartbeat receive failed; socket keeps serving"),
        }
    }
    tracing::debug!("transport dropped; heartbeat ends");
}
