//! The TCP front of each socket. libzmq never faces a TCP peer: the gate accepts on the
//! connection file's port, checks every byte the peer sends against ZMTP framing as it streams
//! past ([`FrameCheck`]: bounded frames, messages and frame counts, so no peer can make the
//! kernel hold more than one maximum-size message per connection), and relays the connection to
//! the libzmq socket, bound on a Unix socket in a directory only this user can enter. A refused
//! connection is dropped with one log line that says why. Never looks inside a frame's body.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{mpsc, watch};
use std::thread::JoinHandle;

use crate::sync::LockExt;
use super::monitor::RateLimit;
use super::socket::MAX_FRAMES;
use super::zmtp::FrameCheck;

/// The first read buffer of a connection; it grows while a peer sends in bulk, so that many idle
/// connections cost little and a large message still moves in few reads.
const FIRST_BUFFER: usize = 4 * 1024;
const LARGEST_BUFFER: usize = 256 * 1024;

/// How long the gate waits before accepting again after `accept` failed (out of file
/// descriptors: the pending connection stays in the backlog until one is free).
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// A peer that stops sending in the middle of a message for this long is dropped: libzmq holds
/// what it sent of that message until the message is complete.
const STALL: Duration = Duration::from_secs(30);

/// How long the gate keeps trying to reach libzmq's Unix socket when its backlog is full.
const UPSTREAM_PATIENCE: Duration = Duration::from_secs(2);

/// Largest message a peer may send to iopub (subscriptions) or heartbeat (pings): clients
/// subscribe to a topic of a few bytes and ping with a few bytes. libzmq's subscription trie
/// costs tens of bytes per topic byte, so a large topic would be a large cost.
const SMALL_MESSAGE: u64 = 1024;

/// All an iopub peer may send over its connection's life (greeting, handshake, subscriptions).
const IOPUB_LIFETIME: u64 = 64 * 1024;

/// What the peers of one socket may send.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    max_message_size: u64,
    max_frames: usize,
    lifetime: Option<u64>,
}

impl Limits {
    /// Shell, control and stdin carry requests of up to `max_message_size` bytes (the ROUTER
    /// adds an identity frame, so one frame fewer than the socket task takes); iopub and
    /// heartbeat carry a few bytes.
    pub(super) fn of(socket: &str, max_message_size: u64) -> Self {
        match socket {
            "iopub" => Self { max_message_size: SMALL_MESSAGE, max_frames: 4, lifetime: Some(IOPUB_LIFETIME) },
            "heartbeat" => Self { max_message_size: SMALL_MESSAGE, max_frames: 4, lifetime: None },
            _ => Self { max_message_size, max_frames: MAX_FRAMES - 1, lifetime: None },
        }
    }
}

/// Bytes of unfinished messages that libzmq holds for all peers of all sockets together: a
/// peer whose bytes would take it over its limit is dropped, so that many peers each sending
/// most of a maximum-size message cannot exhaust memory between them.
pub(super) struct Budget {
    held: AtomicU64,
    limit: u64,
}

impl Budget {
    pub(super) fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self { held: AtomicU64::new(0), limit })
    }
}

/// One connection's share of the [`Budget`], given back when dropped.
struct Share {
    budget: Arc<Budget>,
    amount: u64,
}

impl Share {
    /// Sets this connection's share to `amount`; `false` if that takes the budget over.
    fn set(&mut self, amount: u64) -> bool {
        if amount > self.amount {
            let more = amount - self.amount;
            let before = self.budget.held.fetch_add(more, Ordering::AcqRel);
            self.amount = amount;
            before.saturating_add(more) <= self.budget.limit
        } else {
            self.budget.held.fetch_sub(self.amount - amount, Ordering::AcqRel);
            self.amount = amount;
            true
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.amount, Ordering::AcqRel);
    }
}

/// One socket's gate, bound but not yet serving.
pub(super) struct Gate {
    pub(super) name: &'static str,
    pub(super) listener: std::net::TcpListener,
    /// libzmq's Unix socket file for this socket.
    pub(super) upstream: PathBuf,
}

/// How long relayed connections may go on once the transport is gone: long enough for libzmq
/// to write its last replies (its linger time) through the gate.
const DRAIN: Duration = Duration::from_secs(2);

/// Starts the gates on a thread of their own (its own tokio runtime), so that connections keep
/// being relayed while the kernel's runtime shuts down and libzmq writes its last messages. The
/// gates stop accepting once `alive`'s sender is dropped; the thread ends when every relayed
/// connection has ended, or [`DRAIN`] after that.
pub(super) fn start(gates: Vec<Gate>, max_message_size: u64, alive: watch::Receiver<()>) -> io::Result<JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let budget = Budget::new(max_message_size.saturating_mul(2));
    let mut listeners = Vec::new();
    for gate in gates {
        gate.listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            name: gate.name,
            upstream: gate.upstream,
            limits: Limits::of(gate.name, max_message_size),
            budget: Arc::clone(&budget),
            warnings: Mutex::new(RateLimit::new()),
        });
        listeners.push((gate.listener, shared));
    }
    std::thread::Builder::new().name("parakernel-gate".into()).spawn(move || {
        runtime.block_on(async move {
            // Every accept loop and relay holds a sender; `recv` says `None` once all are gone.
            let (running, mut all_ended) = mpsc::channel::<()>(1);
            for (listener, shared) in listeners {
                match TcpListener::from_std(listener) {
                    Ok(listener) => {
                        tokio::spawn(accept(listener, shared, alive.clone(), running.clone()));
                    }
                    Err(error) => tracing::error!(socket = shared.name, %error, "cannot serve the gate"),
                }
            }
            drop(running);
            let mut alive = alive;
            // No value is ever sent: this resolves once the transport is gone.
            let _ = alive.changed().await;
            let _ = tokio::time::timeout(DRAIN, all_ended.recv()).await;
        });
    })
}

struct Shared {
    name: &'static str,
    upstream: PathBuf,
    limits: Limits,
    budget: Arc<Budget>,
    warnings: Mutex<RateLimit>,
}

impl Shared {
    /// Logs a warning unless too many were logged lately (a flood of bad connections must not
    /// flood the log); says how many were left out.
    fn warn(&self, peer: Option<SocketAddr>, what: &dyn std::fmt::Display) {
        let allowed = self.warnings.lock_unpoisoned().allow(Instant::now());
        let Some(suppressed) = allowed else { return };
        let peer = peer.map_or_else(|| "-".to_owned(), |peer| peer.to_string());
        if suppressed > 0 {
            tracing::warn!(socket = self.name, suppressed, "connection warnings were left out of the log");
        }
        tracing::warn!(socket = self.name, %peer, "{what}");
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, mut alive: watch::Receiver<()>, running: mpsc::Sender<()>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let running = running.clone();
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        relay(stream, peer, shared).await;
                        drop(running);
                    });
                }
                Err(error) => {
                    shared.warn(None, &format_args!("cannot accept a connection: {error}"));
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            // No value is ever sent: this resolves once the sender is dropped.
            _ = alive.changed() => break,
        }
    }
    tracing::debug!(socket = shared.name, "transport dropped; gate stops accepting");
}

/// Connects to libzmq's Unix socket, retrying while its listen backlog is full (a flood of
/// connections must not cost a real client its connection).
async fn connect_upstream(path: &std::path::Path) -> io::Result<UnixStream> {
    let deadline = Instant::now() + UPSTREAM_PATIENCE;
    loop {
        match UnixStream::connect(path).await {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            connected => return connected,
        }
    }
}

async fn relay(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    // Every Jupyter message is a request or a reply that someone waits for (libzmq sets the
    // same on its own TCP sockets).
    let _ = tcp.set_nodelay(true);
    let unix = match connect_upstream(&shared.upstream).await {
        Ok(unix) => unix,
        Err(error) => {
            shared.warn(Some(peer), &format_args!("cannot reach the socket behind the gate: {error}"));
            return;
        }
    };
    let (mut from_peer, mut to_peer) = tcp.into_split();
    let (mut from_kernel, mut to_kernel) = unix.into_split();
    let limits = shared.limits;
    let inbound = async {
        let mut check = FrameCheck::new(limits.max_message_size, limits.max_frames);
        let mut share = Share { budget: Arc::clone(&shared.budget), amount: 0 };
        let mut received = 0u64;
        let mut buffer = vec![0u8; FIRST_BUFFER];
        loop {
            let read = from_peer.read(&mut buffer);
            let count = if check.unfinished() > 0 {
                match tokio::time::timeout(STALL, read).await {
                    Ok(count) => count?,
                    Err(_) => return Ok(Some(format!("no byte for {STALL:?} in the middle of a message"))),
                }
            } else {
                read.await?
            };
            if count == 0 {
                return Ok(None);
            }
            if let Err(refusal) = check.feed(&buffer[..count]) {
                return Ok(Some(refusal.to_string()));
            }
            received += count as u64;
            if let Some(lifetime) = limits.lifetime.filter(|&lifetime| received > lifetime) {
                return Ok(Some(format!("sent more than the {lifetime} bytes a {} peer may send", shared.name)));
            }
            if !share.set(check.unfinished()) {
                return Ok(Some(format!(
                    "unfinished messages from all peers would exceed {} bytes",
                    shared.budget.limit
                )));
            }
            to_kernel.write_all(&buffer[..count]).await?;
            if count == buffer.len() && buffer.len() < LARGEST_BUFFER {
                buffer.resize(buffer.len() * 2, 0);
            }
        }
    };
    let outbound = tokio::io::copy(&mut from_kernel, &mut to_peer);
    tokio::select! {
        ended = inbound => match ended {
            Ok(Some(refusal)) => shared.warn(Some(peer), &format_args!("connection dropped: {refusal}")),
            Ok(None) => tracing::debug!(socket = shared.name, %peer, "peer closed its connection"),
            Err::<_, io::Error>(error) => tracing::debug!(socket = shared.name, %peer, %error, "connection broken"),
        },
        ended = outbound => if let Err(error) = ended {
            tracing::debug!(socket = shared.name, %peer, %error, "connection broken");
        },
    }
    // Dropping both halves of both streams closes them: libzmq sees its peer gone.
}
