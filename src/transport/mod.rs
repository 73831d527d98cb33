//! The five Jupyter sockets on `zeromq` and tokio. Moves frames; never looks inside them (no
//! JSON, no signing).
//!
//! [`bind`] binds shell, control and stdin (ROUTER), iopub (XPUB) and heartbeat (REP) and
//! starts one task per job, so that no socket waits behind another:
//!
//! - one receive task per ROUTER socket feeds its own bounded queue ([`Transport::shell`],
//!   [`Transport::control`], [`Transport::stdin`]); a slow reader of shell never delays control;
//! - one dispatcher routes every [`Outgoing`] by its [`Channel`] to a per-socket queue, and one
//!   send task per socket writes them in order;
//! - one task owns the iopub socket: zeromq 0.7's XPUB records a subscription only while the
//!   socket is being read, so that task reads subscriptions and publishes at the same time;
//! - the heartbeat task echoes every request at once and depends on nothing else.
//!
//! Dropping [`Transport`] ends the tasks (the heartbeat stops once every clone of
//! [`Transport::outgoing`] is gone). Before the process exits, call [`Transport::flush`] so that
//! a last reply (`shutdown_reply`) has been written.

mod dispatch;
mod heartbeat;
mod iopub;
mod router;

use std::fmt;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use zeromq::{RepSocket, RouterSocket, Socket, XPubSocket};

/// How many incoming messages each receive queue holds before its socket stops reading (the
/// sender waits; nothing is dropped).
pub const INCOMING_QUEUE_CAPACITY: usize = 1024;

/// A message channel of the Jupyter protocol (heartbeat carries no messages, so it has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Shell,
    Control,
    Stdin,
    Iopub,
}

impl Channel {
    /// The channel's name as Jupyter writes it.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Shell => "shell",
            Channel::Control => "control",
            Channel::Stdin => "stdin",
            Channel::Iopub => "iopub",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// Where the five sockets listen, as the connection file gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// `"tcp"`; the only transport built in (zeromq's `ipc-transport` feature is off).
    pub transport: String,
    /// An address to bind, such as `127.0.0.1`, `0.0.0.0`, `*` or `::1`.
    pub ip: String,
    pub shell_port: u16,
    pub control_port: u16,
    pub stdin_port: u16,
    pub iopub_port: u16,
    pub hb_port: u16,
}

impl Endpoints {
    /// The `zeromq` address of one port, e.g. `tcp://127.0.0.1:5555`.
    fn address(&self, socket: &'static str, port: u16) -> Result<String, TransportError> {
        if self.transport != "tcp" {
            return Err(TransportError::UnsupportedTransport {
                transport: self.transport.clone(),
            });
        }
        if port == 0 {
            return Err(TransportError::PortZero { socket });
        }
        // libzmq reads `*` as "every interface"; zeromq 0.7 would look it up as a host name.
        let host = if self.ip == "*" {
            "0.0.0.0"
        } else {
            self.ip.as_str()
        };
        if host.contains(':') && !host.starts_with('[') {
            Ok(format!("tcp://[{host}]:{port}"))
        } else {
            Ok(format!("tcp://{host}:{port}"))
        }
    }
}

/// One multipart message read from shell, control or stdin.
///
/// `frames` starts with the peer's identity frame, as the ROUTER socket received it; the rest
/// are the frames the client sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Incoming {
    pub channel: Channel,
    pub frames: Vec<Bytes>,
}

/// One multipart message to send.
///
/// For shell, control and stdin `frames[0]` is the identity of the peer to route to (the
/// identity frame of the [`Incoming`] being answered) and is not sent itself. For iopub the
/// frames are published as they are; the first one is the topic subscribers filter on.
#[derive(Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub channel: Channel,
    pub frames: Vec<Bytes>,
}

// Debug shows frame sizes only: frames hold user code and output, which belong in `trace` logs
// at most.
impl fmt::Debug for Incoming {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Incoming")
            .field("channel", &self.channel)
            .field("frame_lengths", &FrameLengths(&self.frames))
            .finish()
    }
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Outgoing")
            .field("channel", &self.channel)
            .field("frame_lengths", &FrameLengths(&self.frames))
            .finish()
    }
}

struct FrameLengths<'a>(&'a [Bytes]);

impl fmt::Debug for FrameLengths<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_list()
            .entries(self.0.iter().map(Bytes::len))
            .finish()
    }
}

/// The bound sockets, seen as queues.
///
/// The fields may be moved out and used from different tasks. Dropping a receiver ends its
/// socket's receive task; dropping every clone of `outgoing` ends the send tasks and the
/// heartbeat.
pub struct Transport {
    pub control: mpsc::Receiver<Incoming>,
    pub shell: mpsc::Receiver<Incoming>,
    pub stdin: mpsc::Receiver<Incoming>,
    /// One item per iopub subscription the XPUB socket sees (the subscription topic bytes,
    /// without the leading 0x01 byte). The kernel answers each with an `iopub_welcome` message.
    pub subscriptions: mpsc::Receiver<Bytes>,
    pub outgoing: mpsc::UnboundedSender<Outgoing>,
    flusher: Flusher,
}

impl Transport {
    /// A transport with no sockets, for testing the kernel: the returned [`Peer`] holds the far
    /// end of every queue. Its `flush` returns at once, since whatever was sent is already in
    /// [`Peer::outgoing`].
    pub fn unbound() -> (Transport, Peer) {
        let (shell, shell_incoming) = mpsc::channel(INCOMING_QUEUE_CAPACITY);
        let (control, control_incoming) = mpsc::channel(INCOMING_QUEUE_CAPACITY);
        let (stdin, stdin_incoming) = mpsc::channel(INCOMING_QUEUE_CAPACITY);
        let (subscribe, subscriptions) = mpsc::channel(INCOMING_QUEUE_CAPACITY);
        let (outgoing, outgoing_queue) = mpsc::unbounded_channel();
        let transport = Transport {
            control: control_incoming,
            shell: shell_incoming,
            stdin: stdin_incoming,
            subscriptions,
            outgoing,
            flusher: Flusher { requests: None },
        };
        let peer = Peer {
            shell,
            control,
            stdin,
            subscriptions: subscribe,
            outgoing: outgoing_queue,
        };
        (transport, peer)
    }

    /// Waits until every [`Outgoing`] sent (on any clone of `outgoing`) before this call has
    /// been written to its TCP connection, or dropped because its peer is gone or unknown.
    ///
    /// Await this after the last reply and before the process exits. Returning means zeromq
    /// has encoded each message and its writer task flushes it to the operating system in the
    /// same step, so afterwards let the tokio runtime shut down normally: dropping the runtime
    /// lets a running task finish its step, `std::process::exit` does not wait. Returns at once
    /// if the transport's tasks have ended (nothing queued can be written any more). A client
    /// that stopped reading can hold a flush for ever: wrap it in `tokio::time::timeout`.
    pub async fn flush(&self) {
        self.flusher.flush().await;
    }

    /// A handle that can flush after the `Transport` itself was taken apart.
    pub fn flusher(&self) -> Flusher {
        self.flusher.clone()
    }
}

/// Flushes the outgoing queues; see [`Transport::flush`].
#[derive(Clone)]
pub struct Flusher {
    /// `None` for an unbound transport, which has nothing to flush.
    requests: Option<mpsc::UnboundedSender<oneshot::Sender<()>>>,
}

impl Flusher {
    /// See [`Transport::flush`].
    pub async fn flush(&self) {
        let Some(requests) = &self.requests else {
            return;
        };
        let (done, flushed) = oneshot::channel();
        if requests.send(done).is_ok() {
            // An error means the dispatcher ended: nothing more can be written.
            let _ = flushed.await;
        }
    }
}

/// The far end of an unbound [`Transport`] (see [`Transport::unbound`]): what a test sends on
/// `shell`, `control`, `stdin` and `subscriptions` arrives on the transport's receivers, and
/// everything the kernel sends on the transport's `outgoing` arrives on `outgoing`.
pub struct Peer {
    pub shell: mpsc::Sender<Incoming>,
    pub control: mpsc::Sender<Incoming>,
    pub stdin: mpsc::Sender<Incoming>,
    pub subscriptions: mpsc::Sender<Bytes>,
    pub outgoing: mpsc::UnboundedReceiver<Outgoing>,
}

/// Everything that can go wrong in the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("transport {transport:?} is not supported: only \"tcp\" is built in")]
    UnsupportedTransport { transport: String },
    #[error("the {socket} port is 0: the connection file must give every port")]
    PortZero { socket: &'static str },
    #[error("cannot bind the {socket} socket to {address}")]
    Bind {
        socket: &'static str,
        address: String,
        #[source]
        source: zeromq::ZmqError,
    },
}

/// Binds the five sockets and starts their tasks. Must be called inside a tokio runtime.
///
/// Every port must be given (a port of 0 is an error: nobody could learn the port chosen).
pub async fn bind(endpoints: &Endpoints) -> Result<Transport, TransportError> {
    let mut shell = RouterSocket::new();
    let mut control = RouterSocket::new();
    let mut stdin = RouterSocket::new();
    let mut iopub = XPubSocket::new();
    let mut heartbeat = RepSocket::new();
    bind_socket(&mut shell, "shell", endpoints, endpoints.shell_port).await?;
    bind_socket(&mut control, "control", endpoints, endpoints.control_port).await?;
    bind_socket(&mut stdin, "stdin", endpoints, endpoints.stdin_port).await?;
    bind_socket(&mut iopub, "iopub", endpoints, endpoints.iopub_port).await?;
    bind_socket(&mut heartbeat, "heartbeat", endpoints, endpoints.hb_port).await?;

    let (shell_incoming, shell_queue) = router::start(Channel::Shell, shell);
    let (control_incoming, control_queue) = router::start(Channel::Control, control);
    let (stdin_incoming, stdin_queue) = router::start(Channel::Stdin, stdin);
    let (subscriptions, iopub_queue) = iopub::start(iopub);

    // The dispatcher holds `alive`; the heartbeat stops when the dispatcher ends.
    let (alive, heartbeat_alive) = watch::channel(());
    heartbeat::start(heartbeat, heartbeat_alive);

    let (outgoing, outgoing_queue) = mpsc::unbounded_channel();
    let (flush_requests, flush_queue) = mpsc::unbounded_channel();
    dispatch::start(
        outgoing_queue,
        flush_queue,
        dispatch::SocketQueues {
            shell: shell_queue,
            control: control_queue,
            stdin: stdin_queue,
            iopub: iopub_queue,
        },
        alive,
    );

    Ok(Transport {
        control: control_incoming,
        shell: shell_incoming,
        stdin: stdin_incoming,
        subscriptions,
        outgoing,
        flusher: Flusher {
            requests: Some(flush_requests),
        },
    })
}

async fn bind_socket(
    socket: &mut impl Socket,
    name: &'static str,
    endpoints: &Endpoints,
    port: u16,
) -> Result<(), TransportError> {
    let address = endpoints.address(name, port)?;
    match socket.bind(&address).await {
        Ok(bound) => {
            tracing::debug!(socket = name, %bound, "bound");
            Ok(())
        }
        Err(source) => Err(TransportError::Bind {
            socket: name,
            address,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(transport: &str, ip: &str) -> Endpoints {
        Endpoints {
            transport: transport.to_owned(),
            ip: ip.to_owned(),
            shell_port: 1,
            control_port: 2,
            stdin_port: 3,
            iopub_port: 4,
            hb_port: 5,
        }
    }

    #[test]
    fn addresses_follow_zeromq_syntax() {
        let address = |ip: &str| endpoints("tcp", ip).address("shell", 5555).unwrap();
        assert_eq!(address("127.0.0.1"), "tcp://127.0.0.1:5555");
        assert_eq!(address("*"), "tcp://0.0.0.0:5555");
        assert_eq!(address("::1"), "tcp://[::1]:5555");
        assert_eq!(address("[::1]"), "tcp://[::1]:5555");
        assert_eq!(address("localhost"), "tcp://localhost:5555");
    }

    #[test]
    fn refuses_what_cannot_be_bound() {
        let error = endpoints("ipc", "kernel").address("shell", 1).unwrap_err();
        assert!(matches!(error, TransportError::UnsupportedTransport { .. }));
        let error = endpoints("tcp", "127.0.0.1")
            .address("iopub", 0)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "the iopub port is 0: the connection file must give every port"
        );
    }

    #[tokio::test]
    async fn unbound_transport_connects_its_queues_to_the_peer() {
        let (mut transport, mut peer) = Transport::unbound();
        let incoming = Incoming {
            channel: Channel::Control,
            frames: vec![Bytes::from_static(b"id"), Bytes::from_static(b"request")],
        };
        peer.control.send(incoming.clone()).await.unwrap();
        assert_eq!(transport.control.recv().await, Some(incoming));
        peer.subscriptions.send(Bytes::new()).await.unwrap();
        assert_eq!(transport.subscriptions.recv().await, Some(Bytes::new()));

        let reply = Outgoing {
            channel: Channel::Control,
            frames: vec![Bytes::from_static(b"id"), Bytes::from_static(b"reply")],
        };
        transport.outgoing.send(reply.clone()).unwrap();
        transport.flush().await;
        assert_eq!(peer.outgoing.try_recv().ok(), Some(reply));
    }

    #[test]
    fn debug_shows_sizes_not_contents() {
        let message = Outgoing {
            channel: Channel::Shell,
            frames: vec![
                Bytes::from_static(b"identity"),
                Bytes::from_static(b"secret"),
            ],
        };
        let shown = format!("{message:?}");
        assert_eq!(shown, "Outgoing { channel: Shell, frame_lengths: [8, 6] }");
    }
}
