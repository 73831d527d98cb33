//! Query answers, from the thread that answers a lane's queries to the kernel. The kernel alone
//! keeps the deadline (`kernel::QUERY_BOUND_BUSY`): a busy lane's editor gets an empty
//! answer in time, an idle lane's answer is waited for however long jedi takes; an answer that
//! comes after its deadline is dropped there.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use crate::lanes::{Event, RequestId};

pub(crate) struct Answers {
    events: UnboundedSender<Event>,
}

impl Answers {
    pub(crate) fn new(events: UnboundedSender<Event>) -> Arc<Answers> {
        Arc::new(Answers { events })
    }

    /// Sends the lane's answer to `request`.
    pub(crate) fn answer(&self, request: RequestId, reply: Value) {
        let _ = self.events.send(Event::Answered { request, reply: Some(reply) });
    }

    /// No lane can answer `request` (its query thread is gone): the kernel sends its empty
    /// answer now rather than at the deadline.
    pub(crate) fn unanswerable(&self, request: RequestId) {
        let _ = self.events.send(Event::Answered { request, reply: None });
    }
}
