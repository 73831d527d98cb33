//! Black-box tests of `parakernel::transport`: real sockets on free loopback ports, with zeromq
//! DEALER, SUB and REQ clients; no frame is interpreted.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use parakernel::transport::{
    self, Channel, Endpoints, Incoming, Outgoing, Transport, TransportError,
    INCOMING_QUEUE_CAPACITY,
};
use zeromq::util::PeerIdentity;
use zeromq::{
    DealerSocket, ReqSocket, Socket, SocketOptions, SocketRecv, SocketSend, SubSocket, ZmqMessage,
};

/// Only a guard against a hang; every test waits on the event it expects.
const FAILURE_GUARD: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(FAILURE_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn free_endpoints() -> Endpoints {
    // Hold all five listeners at once so the ports are distinct.
    let listeners: Vec<std::net::TcpListener> = (0..5)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local address").port())
        .collect();
    Endpoints {
        transport: "tcp".to_owned(),
        ip: "127.0.0.1".to_owned(),
        shell_port: ports[0],
        control_port: ports[1],
        stdin_port: ports[2],
        iopub_port: ports[3],
        hb_port: ports[4],
    }
}

/// Binds on free ports. Another test's client connection can take a port between the probe
/// and the bind (the probe must release it), so a taken port means: probe again.
async fn bind_free() -> (Endpoints, Transport) {
    bind_free_with(&transport::SocketOptions::default()).await
}

async fn bind_free_with(options: &transport::SocketOptions) -> (Endpoints, Transport) {
    let mut attempts = 0;
    loop {
        let endpoints = free_endpoints();
        match transport::bind(&endpoints, options).await {
            Ok(transport) => return (endpoints, transport),
            Err(error @ TransportError::Bind { .. }) if attempts < 10 => {
                attempts += 1;
                eprintln!("probing again: {error}");
            }
            Err(error) => panic!("bind: {error:?}"),
        }
    }
}

fn address(port: u16) -> String {
    format!("tcp://127.0.0.1:{port}")
}

fn frames(parts: &[&'static [u8]]) -> Vec<Bytes> {
    parts.iter().map(|part| Bytes::from_static(part)).collect()
}

fn message(parts: &[&'static [u8]]) -> ZmqMessage {
    ZmqMessage::try_from(frames(parts)).expect("at least one frame")
}

async fn dealer(identity: &str, port: u16) -> DealerSocket {
    let mut options = SocketOptions::default();
    options.peer_identity(PeerIdentity::try_from(identity.as_bytes()).expect("identity"));
    let mut socket = DealerSocket::with_options(options);
    within("dealer connect", socket.connect(&address(port)))
        .await
        .expect("dealer connects");
    socket
}

async fn next(receiver: &mut tokio::sync::mpsc::Receiver<Incoming>, what: &str) -> Incoming {
    within(what, receiver.recv())
        .await
        .expect("transport still running")
}

fn send(transport: &Transport, channel: Channel, frames: Vec<Bytes>) {
    transport
        .outgoing
        .send(Outgoing { channel, frames })
        .expect("transport still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_echoes_each_request() {
    let (endpoints, _transport) = bind_free().await;
    let mut client = ReqSocket::new();
    within(
        "heartbeat connect",
        client.connect(&address(endpoints.hb_port)),
    )
    .await
    .expect("connect");
    for ping in [&b"ping"[..], b"second", b""] {
        let ping = Bytes::copy_from_slice(ping);
        client
            .send(ZmqMessage::from(ping.clone()))
            .await
            .expect("send ping");
        let echo = within("heartbeat echo", client.recv()).await.expect("echo");
        assert_eq!(echo.into_vec(), vec![ping]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_request_arrives_with_identity_and_reply_reaches_the_dealer() {
    let (endpoints, mut transport) = bind_free().await;
    let mut client = dealer("client-1", endpoints.shell_port).await;

    client
        .send(message(&[
            b"<IDS|MSG>",
            b"signature",
            b"{\"header\":1}",
            b"",
            b"{}",
        ]))
        .await
        .expect("send request");
    let request = next(&mut transport.shell, "shell request").await;
    assert_eq!(request.channel, Channel::Shell);
    assert_eq!(
        request.frames,
        frames(&[
            b"client-1",
            b"<IDS|MSG>",
            b"signature",
            b"{\"header\":1}",
            b"",
            b"{}"
        ])
    );

    let mut reply = vec![request.frames[0].clone()];
    reply.extend(frames(&[b"<IDS|MSG>", b"reply", b""]));
    send(&transport, Channel::Shell, reply);
    let received = within("shell reply", client.recv()).await.expect("reply");
    assert_eq!(received.into_vec(), frames(&[b"<IDS|MSG>", b"reply", b""]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_routes_both_ways_like_shell() {
    let (endpoints, mut transport) = bind_free().await;
    let mut client = dealer("client-stdin", endpoints.stdin_port).await;

    // A ROUTER knows a peer once it has read from it; until then a send to it is dropped.
    client.send(message(&[b"hello"])).await.expect("send");
    let hello = next(&mut transport.stdin, "stdin message").await;
    assert_eq!(hello.channel, Channel::Stdin);
    assert_eq!(hello.frames, frames(&[b"client-stdin", b"hello"]));

    send(
        &transport,
        Channel::Stdin,
        frames(&[b"client-stdin", b"input_request"]),
    );
    let received = within("input_request", client.recv())
        .await
        .expect("input_request");
    assert_eq!(received.into_vec(), frames(&[b"input_request"]));
}

/// Shell's queue is full and nobody reads it, so its receive task is stuck waiting: control
/// must still be delivered (no head-of-line blocking), and then every shell message arrives,
/// in order (nothing dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_is_delivered_while_shell_is_full_and_unread() {
    let (endpoints, mut transport) = bind_free().await;
    let mut shell_client = dealer("shell-client", endpoints.shell_port).await;
    let mut control_client = dealer("control-client", endpoints.control_port).await;

    let shell_messages = INCOMING_QUEUE_CAPACITY + 50;
    for index in 0..shell_messages {
        shell_client
            .send(ZmqMessage::from(index.to_string()))
            .await
            .expect("send shell request");
    }
    // Polling a real condition, not sleeping for an ordering: the shell queue is full.
    within("the shell queue to fill", async {
        while transport.shell.len() < INCOMING_QUEUE_CAPACITY {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    control_client
        .send(message(&[b"interrupt_request"]))
        .await
        .expect("send control request");
    let control = next(&mut transport.control, "control while shell is full").await;
    assert_eq!(
        control.frames,
        frames(&[b"control-client", b"interrupt_request"])
    );

    send(
        &transport,
        Channel::Control,
        frames(&[b"control-client", b"interrupt_reply"]),
    );
    let reply = within("control reply", control_client.recv())
        .await
        .expect("reply");
    assert_eq!(reply.into_vec(), frames(&[b"interrupt_reply"]));

    for index in 0..shell_messages {
        let request = next(&mut transport.shell, "queued shell request").await;
        assert_eq!(request.frames[1], Bytes::from(index.to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_is_reported_then_published_frames_reach_the_subscriber() {
    let (endpoints, mut transport) = bind_free().await;
    let mut subscriber = SubSocket::new();
    within(
        "sub connect",
        subscriber.connect(&address(endpoints.iopub_port)),
    )
    .await
    .expect("connect");
    subscriber.subscribe("").await.expect("subscribe");

    let topic = within("subscription", transport.subscriptions.recv())
        .await
        .expect("transport still running");
    assert_eq!(topic, Bytes::new());

    // No further subscription message comes; publishing must not wait for one.
    for index in 0..3 {
        let index = index.to_string();
        let published = vec![
            Bytes::from_static(b"kernel.1234.status"),
            Bytes::from_static(b"<IDS|MSG>"),
            Bytes::from(index.clone()),
        ];
        send(&transport, Channel::Iopub, published.clone());
        let received = within("published message", subscriber.recv())
            .await
            .expect("message");
        assert_eq!(received.into_vec(), published);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_subscriptions_are_reported_without_the_subscribe_byte() {
    let (endpoints, mut transport) = bind_free().await;
    let mut subscriber = SubSocket::new();
    within(
        "sub connect",
        subscriber.connect(&address(endpoints.iopub_port)),
    )
    .await
    .expect("connect");
    subscriber.subscribe("kernel.").await.expect("subscribe");
    let topic = within("subscription", transport.subscriptions.recv()).await;
    assert_eq!(topic, Some(Bytes::from_static(b"kernel.")));

    // The XPUB filters by topic: only the matching message arrives.
    send(&transport, Channel::Iopub, frames(&[b"other", b"dropped"]));
    send(
        &transport,
        Channel::Iopub,
        frames(&[b"kernel.status", b"kept"]),
    );
    let received = within("published message", subscriber.recv())
        .await
        .expect("message");
    assert_eq!(received.into_vec(), frames(&[b"kernel.status", b"kept"]));
}

/// A second subscriber to a topic already subscribed is reported too: each is owed its own
/// `iopub_welcome` (libzmq's XPUB passes only the first unless verbose).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_is_reported_even_to_the_same_topic() {
    let (endpoints, mut transport) = bind_free().await;
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let mut subscriber = SubSocket::new();
        within("sub connect", subscriber.connect(&address(endpoints.iopub_port))).await.expect("connect");
        subscriber.subscribe("").await.expect("subscribe");
        let topic = within("each subscription", transport.subscriptions.recv()).await;
        assert_eq!(topic, Some(Bytes::new()));
        subscribers.push(subscriber);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_messages_are_dropped_and_the_socket_keeps_serving() {
    let (endpoints, mut transport) = bind_free().await;
    let mut client = dealer("known", endpoints.shell_port).await;
    client.send(message(&[b"request"])).await.expect("send");
    let request = next(&mut transport.shell, "request").await;
    let identity = request.frames[0].clone();

    send(&transport, Channel::Shell, frames(&[b"nobody", b"lost"]));
    send(
        &transport,
        Channel::Shell,
        vec![Bytes::from(vec![b'x'; 300]), Bytes::from_static(b"lost")],
    );
    send(&transport, Channel::Shell, vec![identity.clone()]);
    send(&transport, Channel::Shell, Vec::new());
    send(&transport, Channel::Iopub, Vec::new());
    send(
        &transport,
        Channel::Shell,
        vec![identity, Bytes::from_static(b"delivered")],
    );

    let received = within("the valid reply", client.recv())
        .await
        .expect("reply");
    assert_eq!(received.into_vec(), frames(&[b"delivered"]));

    client.send(message(&[b"again"])).await.expect("send");
    let again = next(&mut transport.shell, "a later request").await;
    assert_eq!(again.frames, frames(&[b"known", b"again"]));
}

/// The kernel sends its last replies, flushes, and its runtime is dropped at once (as when the
/// process ends): every reply must still reach the client.
#[test]
fn flush_then_runtime_drop_delivers_every_queued_reply() {
    const REPLIES: usize = 100;
    let client_runtime = tokio::runtime::Runtime::new().expect("client runtime");
    let kernel_runtime = tokio::runtime::Runtime::new().expect("kernel runtime");
    let (endpoints, mut transport) = kernel_runtime.block_on(bind_free());
    let mut client = client_runtime.block_on(dealer("leaving", endpoints.control_port));
    client_runtime
        .block_on(client.send(message(&[b"shutdown_request"])))
        .expect("send");

    kernel_runtime.block_on(async {
        let request = next(&mut transport.control, "shutdown_request").await;
        for index in 0..REPLIES {
            let body = Bytes::from(vec![u8::try_from(index % 256).expect("byte"); 10 * 1024]);
            send(
                &transport,
                Channel::Control,
                vec![request.frames[0].clone(), body],
            );
        }
        within("flush", transport.flush()).await;
    });
    drop(kernel_runtime);

    client_runtime.block_on(async {
        for index in 0..REPLIES {
            let reply = within("a reply sent before the flush", client.recv())
                .await
                .unwrap_or_else(|error| panic!("reply {index} lost: {error}"));
            let reply = reply.into_vec();
            assert_eq!(reply.len(), 1);
            assert_eq!(reply[0].len(), 10 * 1024);
            assert_eq!(reply[0][0], u8::try_from(index % 256).expect("byte"));
        }
    });
    drop(transport);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_answers_when_nothing_can_be_delivered_and_after_the_transport_is_gone() {
    let (_endpoints, transport) = bind_free().await;
    // Nothing is connected: everything is dropped, and flush still answers.
    send(&transport, Channel::Shell, frames(&[b"nobody", b"x"]));
    send(&transport, Channel::Control, frames(&[b"nobody", b"x"]));
    send(&transport, Channel::Stdin, frames(&[b"nobody", b"x"]));
    send(&transport, Channel::Iopub, frames(&[b"topic", b"x"]));
    within("flush", transport.flush()).await;

    let flusher = transport.flusher();
    drop(transport);
    within("flush after the transport is dropped", flusher.flush()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_errors_name_the_socket_and_address() {
    let (endpoints, _first) = bind_free().await;
    let Err(error) = transport::bind(&endpoints, &transport::SocketOptions::default()).await else {
        panic!("binding the same ports twice succeeded");
    };
    assert!(
        matches!(&error, TransportError::Bind { socket: "shell", address, .. } if *address == address_of(endpoints.shell_port)),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "cannot bind the shell socket to tcp://127.0.0.1:{}",
            endpoints.shell_port
        )
    );
}

fn address_of(port: u16) -> String {
    address(port)
}

/// Dropping the `Transport` ends every task and closes every socket: all five ports can be
/// bound again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_transport_releases_the_ports() {
    let (endpoints, transport) = bind_free().await;
    let mut client = dealer("someone", endpoints.shell_port).await;
    client.send(message(&[b"unread"])).await.expect("send");
    drop(transport);

    // The tasks end on their own schedule; poll for the ports to come free.
    let again = within("the ports to be released", async {
        loop {
            match transport::bind(&endpoints, &transport::SocketOptions::default()).await {
                Ok(transport) => break transport,
                Err(TransportError::Bind { .. }) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => panic!("{error}"),
            }
        }
    })
    .await;
    drop(again);
}

/// A ZMTP 3.0 greeting with the NULL mechanism, as a client sends it.
fn greeting() -> Vec<u8> {
    let mut bytes = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 0];
    bytes.extend(b"NULL");
    bytes.resize(64, 0);
    bytes
}

/// The NULL mechanism's READY command of a DEALER.
fn ready_dealer() -> Vec<u8> {
    let mut body = b"\x05READY\x0bSocket-Type".to_vec();
    body.extend(6u32.to_be_bytes());
    body.extend(b"DEALER");
    let mut bytes = vec![0x04, u8::try_from(body.len()).unwrap()];
    bytes.extend(body);
    bytes
}

/// Writes `bytes` on a raw TCP connection and reads until the kernel closes it.
async fn refused(port: u16, bytes: Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    // The peer may close while we still write: that is the refusal too.
    let _ = stream.write_all(&bytes).await;
    let mut sink = vec![0u8; 4096];
    within("the connection to be dropped", async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// The 73 bytes that once aborted the kernel (a greeting and a frame that declares 2^44 bytes),
/// a frame one byte over a small configured maximum, and an endless multipart message each drop
/// only their own connection: a client on the same socket is served afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frames_and_endless_messages_drop_their_connection_only() {
    let options = transport::SocketOptions { max_message_size: 1000, curve: None };
    let (endpoints, mut transport) = bind_free_with(&options).await;

    let mut huge = greeting();
    huge.push(0x02);
    huge.extend((1u64 << 44).to_be_bytes());
    assert_eq!(huge.len(), 73);
    refused(endpoints.shell_port, huge).await;

    let mut over = greeting();
    over.extend(ready_dealer());
    over.push(0x02);
    over.extend(1001u64.to_be_bytes());
    refused(endpoints.shell_port, over).await;

    let mut endless = greeting();
    endless.extend(ready_dealer());
    for _ in 0..10_000 {
        endless.extend([0x01, 0x01, b'a']);
    }
    refused(endpoints.shell_port, endless).await;

    let mut client = dealer("after", endpoints.shell_port).await;
    client.send(message(&[b"<IDS|MSG>", b"ok"])).await.expect("send");
    let incoming = next(&mut transport.shell, "a request after the attacks").await;
    assert_eq!(incoming.frames[1..], frames(&[b"<IDS|MSG>", b"ok"]));
}

/// The ipc endpoints `{prefix}-1` to `{prefix}-5`.
fn ipc_endpoints(prefix: &std::path::Path) -> Endpoints {
    Endpoints {
        transport: "ipc".to_owned(),
        ip: prefix.display().to_string(),
        shell_port: 1,
        control_port: 2,
        stdin_port: 3,
        iopub_port: 4,
        hb_port: 5,
    }
}

/// Under ipc the sockets are files at `{ip}-{port}`, private to the user and gone after close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipc_sockets_are_private_files_removed_on_close() {
    use std::os::unix::fs::PermissionsExt;
    let directory = tempfile::tempdir().expect("temporary directory");
    let prefix = directory.path().join("kernel-ipc");
    let endpoints = ipc_endpoints(&prefix);
    let mut transport = transport::bind(&endpoints, &transport::SocketOptions::default()).await.expect("bind");
    let shell = format!("{}-1", prefix.display());
    for port in 1..=5 {
        let path = format!("{}-{port}", prefix.display());
        let mode = std::fs::metadata(&path).expect("socket file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{path}");
    }
    let client = std::thread::spawn(move || {
        let context = zmq::Context::new();
        let dealer = context.socket(zmq::DEALER).unwrap();
        dealer.connect(&format!("ipc://{shell}")).unwrap();
        dealer.send_multipart([&b"<IDS|MSG>"[..], b"over ipc"], 0).unwrap();
        dealer.recv_multipart(0).unwrap()
    });
    let incoming = next(&mut transport.shell, "a request over ipc").await;
    assert_eq!(incoming.frames[1..], frames(&[b"<IDS|MSG>", b"over ipc"]));
    send(&transport, Channel::Shell, vec![incoming.frames[0].clone(), Bytes::from_static(b"reply")]);
    let reply = tokio::task::spawn_blocking(move || client.join().unwrap()).await.unwrap();
    assert_eq!(reply, vec![b"reply".to_vec()]);

    let closer = transport.closer();
    drop(transport);
    tokio::task::spawn_blocking(move || closer.close()).await.unwrap();
    for port in 1..=5 {
        assert!(!std::path::Path::new(&format!("{}-{port}", prefix.display())).exists());
    }
}

/// libzmq reports every connection to the socket's monitor; a monitor that was never read
/// once filled its pipe after about 2,000 events and stopped libzmq's I/O thread, so every
/// socket went silent. Connections come and go for as long as the kernel lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_come_and_go_and_the_socket_still_serves() {
    let (endpoints, mut transport) = bind_free().await;
    for _ in 0..1200 {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", endpoints.control_port)).await.expect("connect");
        drop(stream);
    }
    let mut client = dealer("after-many", endpoints.control_port).await;
    client.send(message(&[b"<IDS|MSG>", b"still here"])).await.expect("send");
    let incoming = next(&mut transport.control, "a request after 1,200 connections").await;
    assert_eq!(incoming.frames[1..], frames(&[b"<IDS|MSG>", b"still here"]));
}

/// Peers that each send most of a large frame and stop cannot together make the kernel hold
/// more than twice the maximum message size: the one that would go over is dropped, and once
/// the others are gone a whole message gets through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_messages_of_all_peers_share_one_budget() {
    use tokio::io::AsyncWriteExt;
    let options = transport::SocketOptions { max_message_size: 1000, curve: None };
    let (endpoints, mut transport) = bind_free_with(&options).await;
    let partial = || {
        let mut bytes = greeting();
        bytes.extend(ready_dealer());
        bytes.push(0x02);
        bytes.extend(950u64.to_be_bytes());
        bytes.extend([b'p'; 900]);
        bytes
    };
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", endpoints.shell_port)).await.expect("connect");
        stream.write_all(&partial()).await.expect("write");
        holders.push(stream);
    }
    // 2 x ~975 bytes held; a third unfinished message would take it over 2,000.
    refused(endpoints.shell_port, partial()).await;
    drop(holders);
    let mut client = dealer("after-budget", endpoints.shell_port).await;
    client.send(message(&[b"<IDS|MSG>", b"whole"])).await.expect("send");
    let incoming = next(&mut transport.shell, "a whole message once the budget is free").await;
    assert_eq!(incoming.frames[1..], frames(&[b"<IDS|MSG>", b"whole"]));
}

/// libzmq unlinks whatever is at an ipc path before it binds: a file that is not a socket, or a
/// socket another kernel serves, is refused instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipc_never_replaces_a_file_or_a_live_socket() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let prefix = directory.path().join("kernel");
    let endpoints = ipc_endpoints(&prefix);
    let thesis = directory.path().join("kernel-3");
    std::fs::write(&thesis, "my thesis").unwrap();
    let error = transport::bind(&endpoints, &transport::SocketOptions::default()).await.err().expect("refused");
    assert!(error.to_string().contains("is not a socket"), "{error}");
    assert_eq!(std::fs::read_to_string(&thesis).unwrap(), "my thesis");
    std::fs::remove_file(&thesis).unwrap();

    let first = transport::bind(&endpoints, &transport::SocketOptions::default()).await.expect("bind");
    let error = transport::bind(&endpoints, &transport::SocketOptions::default()).await.err().expect("refused");
    assert!(error.to_string().contains("another process serves it"), "{error}");
    drop(first);
}

/// What the kernel has not yet let go of counts: past one maximum-size message per socket the
/// socket reads nothing more until the kernel drops a message, so whole messages sent faster
/// than the kernel checks them cannot pile up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_stops_reading_while_the_kernel_holds_its_share() {
    let options = transport::SocketOptions { max_message_size: 1000, curve: None };
    let (endpoints, mut transport) = bind_free_with(&options).await;
    let mut client = dealer("piling", endpoints.shell_port).await;
    for _ in 0..3 {
        client.send(ZmqMessage::try_from(vec![Bytes::from(vec![b'm'; 600])]).unwrap()).await.expect("send");
    }
    let first = next(&mut transport.shell, "the first message").await;
    let second = next(&mut transport.shell, "the second message").await;
    // 1,200 bytes held by the kernel: over the share, the third stays in libzmq.
    assert!(transport.shell.try_recv().is_err(), "a third message was read past the share");
    drop(first);
    let third = next(&mut transport.shell, "the third, once the kernel let go of one").await;
    assert_eq!(third.frames[1].len(), 600);
    drop(second);
}
