//! Completion, inspection and `is_complete`: a query goes to its lane, and the client gets the
//! lane's answer, or an empty one once the lane's bound has passed (shorter for a busy lane).

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::debug;

use crate::lanes::{Executor, Lane, Query, RequestId};
use super::Kernel;

/// How long a completion, inspection or `is_complete` may wait for its lane; after that the
/// client gets an empty answer (a busy lane must never hold the editor).
pub const QUERY_BOUND_BUSY: Duration = Duration::from_secs(1);
/// How long a query may wait for an idle lane: only a safety bound against a query that never
/// returns (an object whose property blocks, under inspection), since an idle lane answers in
/// full however long it takes (jedi's first completion takes seconds on a loaded machine, and
/// an empty answer then would be wrong).
pub const QUERY_BOUND_IDLE: Duration = Duration::from_secs(60);

impl<E: Executor> Kernel<E> {
    /// Sends a query to a lane; if the answer is not in within its bound (shorter for a busy lane), `fallback`
    /// is sent instead.
    pub(super) fn query(&mut self, id: RequestId, lane: &Lane, query: Query, fallback: Value, offset: usize) {
        let flight = self.in_flight.get_mut(&id).expect("begun");
        flight.fallback = Some(fallback);
        flight.query_offset = offset;
        let busy = self.lanes.get(lane).is_some_and(|queue| queue.running.is_some());
        let deadline = Instant::now() + if busy { QUERY_BOUND_BUSY } else { QUERY_BOUND_IDLE };
        // Kept in deadline order: the two bounds differ, so arrival order is not enough.
        let at = self.query_deadlines.partition_point(|&(other, _)| other <= deadline);
        self.query_deadlines.insert(at, (deadline, id));
        self.executor.query(lane, id, query);
    }

    pub(super) fn on_answered(&mut self, id: RequestId, reply: Option<Value>) {
        let Some(flight) = self.in_flight.get_mut(&id) else {
            debug!(id, "an answer came after its bound; dropped");
            return;
        };
        let Some(mut reply) = reply.or_else(|| flight.fallback.take()) else {
            return;
        };
        // Positions in the reply are in the code the lane saw: shift them back over the
        // `%%lane` line the kernel removed.
        let offset = flight.query_offset;
        for key in ["cursor_start", "cursor_end"] {
            if let Some(position) = reply[key].as_u64() {
                reply[key] = json!(position + offset as u64);
            }
        }
        self.finish(id, Some(reply));
    }

    pub(super) fn expire_queries(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, id)) = self.query_deadlines.front() {
            if deadline > now {
                break;
            }
            self.query_deadlines.pop_front();
            if let Some(fallback) = self.in_flight.get_mut(&id).and_then(|flight| flight.fallback.take()) {
                debug!(id, "a lane did not answer a query in time; answered empty");
                self.finish(id, Some(fallback));
            }
        }
    }
}
