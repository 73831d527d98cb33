//! Query answers with a deadline: a lane answers completion and inspection beside its running
//! cell, but a cell that holds its GIL in C code (or a slow first import of Jedi) must not keep
//! the reply. Whatever comes first is sent: the lane's answer, or at the deadline an empty one
//! ("answer with what can be had"); the other is dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;

use crate::kernel::executor::{Event, Query, RequestId};
use crate::native;

/// How long a query may wait for a lane that is running a cell. A busy pure-Python cell gives
/// the GIL to the query thread every switch interval (completion then takes tens of
/// milliseconds); the bound is for cells inside C code that keep the GIL. The kernel keeps the
/// same bounds (`kernel::QUERY_BOUND_BUSY`, `kernel::QUERY_BOUND_IDLE`).
pub(crate) use crate::kernel::{QUERY_BOUND_BUSY, QUERY_BOUND_IDLE};

pub(crate) struct Answers {
    events: UnboundedSender<Event>,
    pending: Mutex<BTreeMap<RequestId, Pending>>,
    changed: Condvar,
}

struct Pending {
    deadline: Instant,
    fallback: Value,
}

impl Answers {
    /// Starts the thread that sends the fallback answers.
    pub(crate) fn start(events: UnboundedSender<Event>) -> Arc<Answers> {
        let answers = Arc::new(Answers {
            events,
            pending: Mutex::new(BTreeMap::new()),
            changed: Condvar::new(),
        });
        let timer = Arc::clone(&answers);
        native::spawn_without_sigint("parakernel-answers", move || timer.run_timer());
        answers
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<RequestId, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `request` as asked now of a lane that is `busy` or idle; `query` decides the
    /// fallback answer. An idle lane is given longer: its answer can only be slow for a reason
    /// worth waiting for (jedi's first completion on a loaded machine takes over a second).
    pub(crate) fn expect(&self, request: RequestId, query: &Query, busy: bool) {
        let patience = if busy { QUERY_BOUND_BUSY } else { QUERY_BOUND_IDLE };
        let pending = Pending {
            deadline: Instant::now() + patience,
            fallback: fallback(query),
        };
        self.lock().insert(request, pending);
        self.changed.notify_one();
    }

    /// Sends the lane's answer, unless the fallback was sent already.
    pub(crate) fn answer(&self, request: RequestId, reply: Value) {
        if self.lock().remove(&request).is_some() {
            let _ = self.events.send(Event::Answered { request, reply });
        } else {
            tracing::debug!(request, "a query answer came after its deadline: dropped");
        }
    }

    fn run_timer(&self) {
        let mut pending = self.lock();
        loop {
            let now = Instant::now();
            let due: Vec<RequestId> = pending
                .iter()
                .filter(|(_, entry)| entry.deadline <= now)
                .map(|(request, _)| *request)
                .collect();
            for request in due {
                if let Some(entry) = pending.remove(&request) {
                    tracing::debug!(request, "the lane did not answer a query in time");
                    let _ = self.events.send(Event::Answered { request, reply: entry.fallback });
                }
            }
            let next = pending.values().map(|entry| entry.deadline).min();
            pending = match next {
                None => self.changed.wait(pending).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    self.changed
                        .wait_timeout(pending, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

/// The reply sent when the lane is too busy to answer: valid and empty.
pub(crate) fn fallback(query: &Query) -> Value {
    match query {
        Query::Complete { cursor_pos, .. } => json!({
            "status": "ok", "matches": [], "cursor_start": cursor_pos, "cursor_end": cursor_pos,
            "metadata": {},
        }),
        Query::Inspect { .. } => json!({ "status": "ok", "found": false, "data": {}, "metadata": {} }),
        Query::IsComplete { .. } => json!({ "status": "unknown" }),
        Query::CommInfo { .. } => json!({ "status": "ok", "comms": {} }),
    }
}
