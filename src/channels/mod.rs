//! The process-wide channels between lanes (issue 8): named FIFOs whose messages are owned Rust
//! values ([`Value`]), never Python objects of another interpreter. Knows nothing of Python: the
//! native module of the sending interpreter turns its objects into a [`Value`], that of the
//! receiving interpreter turns the [`Value`] back into objects.
//!
//! Waiting is here too, so that it is the same for every kind of lane: a blocked `send` or
//! `recv` waits on the channel's condition variable, and re-checks a `stop` condition (the
//! caller's interrupt) whenever [`Channel::wake`] is called. Every message is delivered exactly
//! once, in order, whatever the number of senders and receivers.

mod buffers;
mod value;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

pub use buffers::{buffers, Block, BufferError, BufferStats, Buffers};
pub use value::{Int, Value};

use crate::sync::{CondvarExt, LockExt};

/// Why a channel cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel {name:?} exists with maxsize {existing}; open it with channel({name:?}) or maxsize={existing}")]
    MaxsizeMismatch { name: String, existing: usize },
    #[error("{0:?} is not a channel name: use 1-128 characters, no control characters")]
    BadName(String),
}

/// Why a send did not happen; the value comes back.
#[derive(Debug, PartialEq)]
pub enum SendError {
    /// Bounded and full until the deadline (or at once, without waiting).
    Full(Value),
    Closed(Value),
    /// `stop` said so (an interrupt).
    Stopped(Value),
}

/// Why a receive gave nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// Nothing came before the deadline (or at once, without waiting).
    Empty,
    /// Closed, and everything sent before was received.
    Closed,
    Stopped,
}

/// What `%channels` and `parakernel.channels()` show of one channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub name: String,
    pub depth: usize,
    /// 0: unbounded.
    pub maxsize: usize,
    pub sent: u64,
    pub received: u64,
    pub waiting_senders: usize,
    pub waiting_receivers: usize,
    pub closed: bool,
}

/// One named channel.
#[derive(Debug)]
pub struct Channel {
    name: String,
    state: Mutex<State>,
    changed: Condvar,
}

/// A waiter counted in [`Stats`] while it lives (see [`Channel::waiting`]).
pub struct Waiting<'a> {
    channel: &'a Channel,
    sender: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.channel.lock();
        let count = if self.sender { &mut state.waiting_senders } else { &mut state.waiting_receivers };
        *count = count.saturating_sub(1);
    }
}

/// Called after every change of a channel (a send, a receive, a close, a wake), without the
/// channel's lock held: how a lane waiting on its own condition variable learns of it.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct State {
    /// 0: unbounded.
    maxsize: usize,
    /// Whether someone asked for `maxsize` (else the first who does sets it).
    bound_fixed: bool,
    wakers: BTreeMap<u64, Waker>,
    next_waker: u64,
    queue: VecDeque<Value>,
    sent: u64,
    received: u64,
    waiting_senders: usize,
    waiting_receivers: usize,
    closed: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("State").field("depth", &self.queue.len()).field("closed", &self.closed).finish_non_exhaustive()
    }
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock_unpoisoned()
    }

    /// Calls `waker` after every change from now on, until [`Channel::unsubscribe`].
    pub fn subscribe(&self, waker: Waker) -> u64 {
        let mut state = self.lock();
        let id = state.next_waker;
        state.next_waker += 1;
        state.wakers.insert(id, waker);
        id
    }

    pub fn unsubscribe(&self, id: u64) {
        self.lock().wakers.remove(&id);
    }

    /// Tells every waiter of a change: the channel's own, then the subscribed wakers.
    fn changed(&self, state: MutexGuard<'_, State>) {
        let wakers: Vec<Waker> = state.wakers.values().cloned().collect();
        drop(state);
        self.changed.notify_all();
        for waker in wakers {
            waker();
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many messages wait to be received.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn full(state: &State) -> bool {
        state.maxsize != 0 && state.queue.len() >= state.maxsize
    }

    /// Counts the caller as a waiting sender (or receiver) until the guard is dropped: for
    /// waits outside [`Channel::send`] / [`Channel::recv`] (a lane waits on its own condition).
    pub fn waiting(&self, sender: bool) -> Waiting<'_> {
        let mut state = self.lock();
        if sender {
            state.waiting_senders += 1;
        } else {
            state.waiting_receivers += 1;
        }
        Waiting { channel: self, sender }
    }

    /// The bound: 0 for none.
    pub fn maxsize(&self) -> usize {
        self.lock().maxsize
    }

    /// Sends `value`, waiting while the channel is bounded and full: until `deadline` (`None`:
    /// for as long as it takes; in the past: not at all), or until `stop()` is true when
    /// checked after a [`Channel::wake`].
    pub fn send(&self, value: Value, deadline: Option<Instant>, stop: &dyn Fn() -> bool) -> Result<(), SendError> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return Err(SendError::Closed(value));
            }
            if !Self::full(&state) {
                state.queue.push_back(value);
                state.sent += 1;
                self.changed(state);
                return Ok(());
            }
            if stop() {
                return Err(SendError::Stopped(value));
            }
            match self.wait(state, deadline, |state| &mut state.waiting_senders) {
                Some(next) => state = next,
                None => return Err(SendError::Full(value)),
            }
        }
    }

    /// Receives the oldest message, waiting as [`Channel::send`] does while there is none.
    pub fn recv(&self, deadline: Option<Instant>, stop: &dyn Fn() -> bool) -> Result<Value, RecvError> {
        let mut state = self.lock();
        loop {
            if let Some(value) = state.queue.pop_front() {
                state.received += 1;
                // A flood's queue gives its memory back as it drains.
                let capacity = state.queue.capacity();
                if capacity > 1024 && state.queue.len() < capacity / 4 {
                    state.queue.shrink_to(capacity / 2);
                }
                self.changed(state);
                return Ok(value);
            }
            if state.closed {
                return Err(RecvError::Closed);
            }
            if stop() {
                return Err(RecvError::Stopped);
            }
            match self.wait(state, deadline, |state| &mut state.waiting_receivers) {
                Some(next) => state = next,
                None => return Err(RecvError::Empty),
            }
        }
    }

    /// Waits for a change until `deadline`, counted in `waiting`; `None` once the deadline has
    /// passed (without waiting when it already had).
    fn wait<'a>(
        &self,
        mut state: MutexGuard<'a, State>,
        deadline: Option<Instant>,
        waiting: impl Fn(&mut State) -> &mut usize,
    ) -> Option<MutexGuard<'a, State>> {
        let timeout = match deadline {
            None => None,
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return None,
            },
        };
        *waiting(&mut state) += 1;
        state = match timeout {
            None => self.changed.wait_unpoisoned(state),
            Some(left) => self.changed.wait_timeout_unpoisoned(state, left),
        };
        *waiting(&mut state) -= 1;
        Some(state)
    }

    /// Senders fail from now on; receivers get what is queued, then [`RecvError::Closed`].
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.changed(state);
    }

    /// Makes every blocked `send` and `recv` check its `stop` condition again (an interrupt).
    pub fn wake(&self) {
        // Taking the lock orders the wake after a waiter's check of `stop`: none is missed.
        self.changed(self.lock());
    }

    pub fn stats(&self) -> Stats {
        let state = self.lock();
        Stats {
            name: self.name.clone(),
            depth: state.queue.len(),
            maxsize: state.maxsize,
            sent: state.sent,
            received: state.received,
            waiting_senders: state.waiting_senders,
            waiting_receivers: state.waiting_receivers,
            closed: state.closed,
        }
    }
}

/// Every channel of the process, by name.
#[derive(Debug, Default)]
pub struct Registry {
    channels: Mutex<BTreeMap<String, Arc<Channel>>>,
}

/// The longest channel name.
pub const MAX_NAME: usize = 128;

/// A name as an error quotes it: at most 60 characters of it.
pub(crate) fn shortened(name: &str) -> String {
    if name.chars().count() <= 60 {
        return name.to_owned();
    }
    let head: String = name.chars().take(60).collect();
    format!("{head}… ({} characters)", name.chars().count())
}

impl Registry {
    /// The channel `name`, created if it does not exist. `maxsize` `Some(n)` asks for a bound
    /// (0: none): the first to ask sets it, whoever opened the channel before (so a receiver
    /// may open it first); asking for another bound later is an error. `None` opens it as it
    /// is (unbounded until someone asks).
    pub fn channel(&self, name: &str, maxsize: Option<usize>) -> Result<Arc<Channel>, ChannelError> {
        if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(ChannelError::BadName(shortened(name)));
        }
        let mut channels = self.channels.lock_unpoisoned();
        if let Some(channel) = channels.get(name) {
            if let Some(maxsize) = maxsize {
                let mut state = channel.lock();
                if !state.bound_fixed {
                    state.maxsize = maxsize;
                    state.bound_fixed = true;
                } else if maxsize != state.maxsize {
                    return Err(ChannelError::MaxsizeMismatch { name: name.to_owned(), existing: state.maxsize });
                }
            }
            return Ok(Arc::clone(channel));
        }
        let state = State { maxsize: maxsize.unwrap_or(0), bound_fixed: maxsize.is_some(), ..State::default() };
        let channel = Arc::new(Channel { name: name.to_owned(), state: Mutex::new(state), changed: Condvar::new() });
        channels.insert(name.to_owned(), Arc::clone(&channel));
        Ok(channel)
    }

    /// The channel `name` if it exists.
    pub fn get(&self, name: &str) -> Option<Arc<Channel>> {
        self.channels.lock_unpoisoned().get(name).cloned()
    }

    /// `Channel.unlink()`: closes the channel (its waiters wake: senders fail, receivers get
    /// what is queued, then closed), frees what nobody received and forgets the name, so that
    /// `channel(name)` makes a new one. Whether there was one.
    pub fn unlink(&self, name: &str) -> bool {
        let Some(channel) = self.channels.lock_unpoisoned().remove(name) else {
            return false;
        };
        let mut state = channel.lock();
        state.closed = true;
        state.queue = VecDeque::new();
        channel.changed(state);
        true
    }

    /// Every channel's stats, by name.
    pub fn stats(&self) -> Vec<Stats> {
        let channels: Vec<Arc<Channel>> = self.channels.lock_unpoisoned().values().cloned().collect();
        channels.iter().map(|channel| channel.stats()).collect()
    }
}

/// The process's registry.
pub fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

#[cfg(test)]
mod tests;
