//! Channels without Python: threads stand in for lanes. Nothing here depends on the clock but
//! failure guards (a deadline far beyond what a healthy run needs).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::*;

const GUARD: Duration = Duration::from_secs(60);

fn never() -> bool {
    false
}

fn int(n: i64) -> Value {
    Value::Int(Int::Small(n))
}

fn guard() -> Option<Instant> {
    Some(Instant::now() + GUARD)
}

#[test]
fn messages_come_out_in_order_and_the_counters_follow() {
    let registry = Registry::default();
    let channel = registry.channel("fifo", Some(0)).unwrap();
    for n in 0..10 {
        channel.send(int(n), None, &never).unwrap();
    }
    assert_eq!(channel.len(), 10);
    for n in 0..10 {
        assert_eq!(channel.recv(None, &never).unwrap(), int(n));
    }
    assert_eq!(channel.recv(Some(Instant::now()), &never), Err(RecvError::Empty));
    let stats = channel.stats();
    assert_eq!((stats.sent, stats.received, stats.depth, stats.closed), (10, 10, 0, false));
    assert_eq!(registry.stats().len(), 1);
}

#[test]
fn a_name_is_one_channel_and_a_maxsize_mismatch_says_so() {
    let registry = Registry::default();
    let first = registry.channel("results", Some(2)).unwrap();
    let again = registry.channel("results", None).unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    let error = registry.channel("results", Some(3)).unwrap_err();
    assert!(error.to_string().contains("maxsize 2"), "{error}");
    assert!(registry.channel("results", Some(0)).is_err(), "0 asks for no bound: another bound");
    // Opened first without a bound (a receiver), the first who asks for one sets it.
    let receiver = registry.channel("jobs", None).unwrap();
    assert_eq!(receiver.maxsize(), 0);
    registry.channel("jobs", Some(4)).unwrap();
    assert_eq!((receiver.maxsize(), receiver.stats().maxsize), (4, 4));
    assert!(registry.channel("jobs", Some(5)).is_err());
    let long = registry.channel(&"y".repeat(10_000), None).unwrap_err().to_string();
    assert!(long.len() < 200 && long.contains("10000 characters"), "{long}");
    assert!(registry.channel("", Some(0)).is_err());
    assert!(registry.channel("a\nb", Some(0)).is_err());
    assert!(registry.channel(&"x".repeat(MAX_NAME + 1), Some(0)).is_err());
}

#[test]
fn a_bounded_send_waits_until_a_receive_makes_room() {
    let channel = Registry::default().channel("bounded", Some(1)).unwrap();
    channel.send(int(1), None, &never).unwrap();
    assert_eq!(channel.send(int(2), Some(Instant::now()), &never), Err(SendError::Full(int(2))));
    let sender = {
        let channel = Arc::clone(&channel);
        thread::spawn(move || channel.send(int(2), guard(), &never))
    };
    // The second send can only finish after this receive: it is blocked until then.
    while channel.stats().waiting_senders == 0 {
        thread::yield_now();
    }
    assert_eq!(channel.len(), 1, "the blocked send has not sent");
    assert_eq!(channel.recv(None, &never).unwrap(), int(1));
    sender.join().unwrap().unwrap();
    assert_eq!(channel.recv(None, &never).unwrap(), int(2));
}

#[test]
fn close_drains_then_stops_and_senders_fail_at_once() {
    let channel = Registry::default().channel("closing", Some(0)).unwrap();
    channel.send(Value::Str("last".into()), None, &never).unwrap();
    channel.close();
    assert_eq!(channel.send(int(1), None, &never), Err(SendError::Closed(int(1))));
    assert_eq!(channel.recv(None, &never).unwrap(), Value::Str("last".into()));
    assert_eq!(channel.recv(None, &never), Err(RecvError::Closed));
    assert!(channel.stats().closed);
}

#[test]
fn close_wakes_a_blocked_receiver() {
    let channel = Registry::default().channel("close-wakes", Some(0)).unwrap();
    let receiver = {
        let channel = Arc::clone(&channel);
        thread::spawn(move || channel.recv(guard(), &never))
    };
    while channel.stats().waiting_receivers == 0 {
        thread::yield_now();
    }
    channel.close();
    assert_eq!(receiver.join().unwrap(), Err(RecvError::Closed));
}

#[test]
fn a_wake_with_stop_set_ends_a_blocked_recv_and_send() {
    let registry = Registry::default();
    let empty = registry.channel("empty", Some(0)).unwrap();
    let full = registry.channel("full", Some(1)).unwrap();
    full.send(int(0), None, &never).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (channel, stop) = (Arc::clone(&empty), Arc::clone(&stop));
        thread::spawn(move || channel.recv(guard(), &|| stop.load(Ordering::SeqCst)))
    };
    let sender = {
        let (channel, stop) = (Arc::clone(&full), Arc::clone(&stop));
        thread::spawn(move || channel.send(int(1), guard(), &|| stop.load(Ordering::SeqCst)))
    };
    while empty.stats().waiting_receivers == 0 || full.stats().waiting_senders == 0 {
        thread::yield_now();
    }
    stop.store(true, Ordering::SeqCst);
    empty.wake();
    full.wake();
    assert_eq!(receiver.join().unwrap(), Err(RecvError::Stopped));
    assert_eq!(sender.join().unwrap(), Err(SendError::Stopped(int(1))));
    // Nothing was lost: the full channel still holds its one message.
    assert_eq!(full.recv(None, &never).unwrap(), int(0));
}

#[test]
fn four_senders_two_receivers_every_message_exactly_once() {
    const SENDERS: i64 = 4;
    const EACH: i64 = 5_000;
    let channel = Registry::default().channel("many", Some(64)).unwrap();
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let channel = Arc::clone(&channel);
            thread::spawn(move || {
                for n in 0..EACH {
                    let message = Value::Tuple(vec![int(sender), int(n)]);
                    channel.send(message, guard(), &never).unwrap();
                }
            })
        })
        .collect();
    let receivers: Vec<_> = (0..2)
        .map(|_| {
            let channel = Arc::clone(&channel);
            thread::spawn(move || {
                let mut got = Vec::new();
                while let Ok(value) = channel.recv(guard(), &never) {
                    got.push(value);
                }
                got
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    channel.close();
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for receiver in receivers {
        for value in receiver.join().unwrap() {
            let Value::Tuple(items) = value else { panic!("not a tuple") };
            let (Value::Int(Int::Small(sender)), Value::Int(Int::Small(n))) = (&items[0], &items[1]) else {
                panic!("not two ints")
            };
            assert!(seen.insert((*sender, *n)), "({sender}, {n}) delivered twice");
            total += 1;
        }
    }
    assert_eq!(total, SENDERS * EACH);
    assert_eq!(seen.len() as i64, SENDERS * EACH, "every message arrived");
    let stats = channel.stats();
    assert_eq!((stats.sent, stats.received), ((SENDERS * EACH) as u64, (SENDERS * EACH) as u64));
}

#[test]
fn one_receiver_sees_each_senders_messages_in_order() {
    let channel = Registry::default().channel("ordered", Some(8)).unwrap();
    let senders: Vec<_> = (0..3)
        .map(|sender| {
            let channel = Arc::clone(&channel);
            thread::spawn(move || {
                for n in 0..2_000 {
                    channel.send(Value::Tuple(vec![int(sender), int(n)]), guard(), &never).unwrap();
                }
            })
        })
        .collect();
    let mut next = [0_i64; 3];
    for _ in 0..6_000 {
        let Value::Tuple(items) = channel.recv(guard(), &never).unwrap() else { panic!("not a tuple") };
        let (Value::Int(Int::Small(sender)), Value::Int(Int::Small(n))) = (&items[0], &items[1]) else {
            panic!("not two ints")
        };
        let slot = usize::try_from(*sender).unwrap();
        assert_eq!(*n, next[slot], "sender {sender}'s messages out of order");
        next[slot] += 1;
    }
    for sender in senders {
        sender.join().unwrap();
    }
}

#[test]
fn two_threads_ping_pong_a_thousand_times() {
    let registry = Registry::default();
    let (ping, pong) = (registry.channel("ping", Some(1)).unwrap(), registry.channel("pong", Some(1)).unwrap());
    let other = {
        let (ping, pong) = (Arc::clone(&ping), Arc::clone(&pong));
        thread::spawn(move || {
            for _ in 0..1_000 {
                let value = ping.recv(guard(), &never).unwrap();
                let Value::Int(Int::Small(n)) = value else { panic!("not an int") };
                pong.send(int(n + 1), guard(), &never).unwrap();
            }
        })
    };
    let mut n = 0;
    for _ in 0..1_000 {
        ping.send(int(n), guard(), &never).unwrap();
        let Value::Int(Int::Small(back)) = pong.recv(guard(), &never).unwrap() else { panic!("not an int") };
        assert_eq!(back, n + 1);
        n = back;
    }
    other.join().unwrap();
    assert_eq!(n, 1_000);
}

#[test]
fn sizes_count_nested_values() {
    let value = Value::Dict(vec![(Value::Str("k".into()), Value::Bytes(vec![0; 1000]))]);
    assert!(value.size() >= 1001);
    assert!(Value::List(vec![value.clone(), value.clone()]).size() >= 2 * value.size());
}

#[test]
fn a_subscribed_waker_hears_of_every_change_until_unsubscribed() {
    let channel = Registry::default().channel("wakers", Some(0)).unwrap();
    let heard = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let id = {
        let heard = Arc::clone(&heard);
        channel.subscribe(Arc::new(move || {
            heard.fetch_add(1, Ordering::SeqCst);
        }))
    };
    channel.send(int(1), None, &never).unwrap();
    channel.recv(None, &never).unwrap();
    channel.wake();
    assert_eq!(heard.load(Ordering::SeqCst), 3);
    channel.unsubscribe(id);
    channel.close();
    assert_eq!(heard.load(Ordering::SeqCst), 3);
}

#[test]
fn waiting_counts_and_unlink() {
    let registry = Registry::default();
    let channel = registry.channel("counted", None).unwrap();
    {
        let _receiver = channel.waiting(false);
        let _sender = channel.waiting(true);
        assert_eq!((channel.stats().waiting_senders, channel.stats().waiting_receivers), (1, 1));
    }
    assert_eq!((channel.stats().waiting_senders, channel.stats().waiting_receivers), (0, 0));
    channel.send(int(1), None, &never).unwrap();
    assert!(registry.unlink("counted"));
    assert!(!registry.unlink("counted"));
    // The holder sees it closed and empty; the name makes a new channel.
    assert_eq!(channel.recv(None, &never), Err(RecvError::Closed));
    let new = registry.channel("counted", None).unwrap();
    assert!(!Arc::ptr_eq(&channel, &new) && !new.stats().closed);
}

#[test]
fn a_drained_flood_gives_its_queue_back() {
    let channel = Registry::default().channel("flood", None).unwrap();
    for n in 0..100_000 {
        channel.send(int(n), None, &never).unwrap();
    }
    let full = channel.lock().queue.capacity();
    while channel.recv(Some(Instant::now()), &never).is_ok() {}
    let drained = channel.lock().queue.capacity();
    assert!(full >= 100_000 && drained <= 2048, "{full} -> {drained}");
}
