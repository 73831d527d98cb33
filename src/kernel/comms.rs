//! Comms (ipywidgets and the like) live in the lane whose code opened them: the kernel notes
//! the owner of every comm as its `comm_open` goes out (or comes in from the frontend, which
//! the main lane serves), sends the frontend's `comm_msg` and `comm_close` to that lane, and
//! answers `comm_info` itself, naming each comm's lane. A lane restarted or stopped takes its
//! comms with it: the frontend is told they are closed.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::lanes::{Executor, Lane, RequestId};
use crate::wire::content::CommKind;
use super::Kernel;

/// How many open comms the kernel keeps track of; past that an entry is forgotten for each new
/// one (its messages then go to the main lane) rather than the map growing without bound.
const MAX_TRACKED_COMMS: usize = 100_000;

/// An open comm: the lane it lives in and its target.
#[derive(Debug, Clone)]
pub(super) struct OpenComm {
    pub lane: Lane,
    pub target_name: String,
}

/// The comms of every lane, by comm id.
#[derive(Debug, Default)]
pub(super) struct Comms {
    open: BTreeMap<String, OpenComm>,
}

impl Comms {
    fn opened(&mut self, comm_id: &str, lane: Lane, target_name: &str) {
        if self.open.len() >= MAX_TRACKED_COMMS && !self.open.contains_key(comm_id) {
            tracing::warn!("more than {MAX_TRACKED_COMMS} open comms; forgetting one to track the new one");
            let first = self.open.keys().next().cloned();
            if let Some(first) = first {
                self.open.remove(&first);
            }
        }
        self.open.insert(comm_id.to_owned(), OpenComm { lane, target_name: target_name.to_owned() });
    }

    /// The lane a comm lives in; the main lane for a comm the kernel does not know (it answers
    /// "no such comm" as ipykernel does).
    pub(super) fn lane_of(&self, comm_id: &str) -> Lane {
        self.open.get(comm_id).map_or(Lane::Main, |comm| comm.lane.clone())
    }

    /// A comm message about to be published by `lane`, or received from the frontend for
    /// `lane`: opens and closes change what is open.
    pub(super) fn note(&mut self, kind: CommKind, content: &Map<String, Value>, lane: &Lane) {
        let Some(comm_id) = content.get("comm_id").and_then(Value::as_str) else { return };
        match kind {
            CommKind::Open => {
                let target = content.get("target_name").and_then(Value::as_str).unwrap_or("");
                self.opened(comm_id, lane.clone(), target);
            }
            CommKind::Close => {
                self.open.remove(comm_id);
            }
            CommKind::Msg => {}
        }
    }

    /// `comm_info_reply` content: every open comm (of `target_name`, when given) with its lane.
    pub(super) fn info(&self, target_name: Option<&str>) -> Value {
        let comms: Map<String, Value> = self
            .open
            .iter()
            .filter(|(_, comm)| target_name.is_none_or(|target| comm.target_name == target))
            .map(|(id, comm)| (id.clone(), json!({"target_name": comm.target_name, "lane": comm.lane.name()})))
            .collect();
        json!({"status": "ok", "comms": comms})
    }

    /// Forgets the comms of `lane` and returns their ids.
    pub(super) fn close_lane(&mut self, lane: &Lane) -> Vec<String> {
        let ids: Vec<String> = self.open.iter().filter(|(_, comm)| &comm.lane == lane).map(|(id, _)| id.clone()).collect();
        for id in &ids {
            self.open.remove(id);
        }
        ids
    }
}

impl<E: Executor> Kernel<E> {
    /// The lane that ran (or runs) `request`; the main lane for output outside any request.
    pub(super) fn lane_of_request(&self, request: Option<RequestId>) -> Lane {
        request
            .and_then(|id| {
                self.in_flight.get(&id).and_then(|flight| flight.lane.clone()).or_else(|| self.finished_lane(id))
            })
            .unwrap_or(Lane::Main)
    }

    /// The frontend loses the comms of a lane that was restarted or stopped: a `comm_close` for
    /// each, so its widgets stop sending to an interpreter that is gone.
    pub(super) fn close_comms_of(&mut self, lane: &Lane) {
        for comm_id in self.comms.close_lane(lane) {
            let message = self.iopub_message("comm_close", json!({"comm_id": comm_id, "data": {}}), None);
            self.send(super::Channel::Iopub, &message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comms_are_tracked_by_lane_and_target() {
        let mut comms = Comms::default();
        let lane = Lane::Named("w".into());
        let map = |value: Value| value.as_object().cloned().unwrap();
        comms.note(CommKind::Open, &map(json!({"comm_id": "a", "target_name": "jupyter.widget"})), &lane);
        comms.note(CommKind::Open, &map(json!({"comm_id": "b", "target_name": "other"})), &Lane::Main);
        assert_eq!(comms.lane_of("a"), lane);
        assert_eq!(comms.lane_of("unknown"), Lane::Main);
        assert_eq!(
            comms.info(Some("jupyter.widget")),
            json!({"status": "ok", "comms": {"a": {"target_name": "jupyter.widget", "lane": "w"}}})
        );
        assert_eq!(comms.info(None)["comms"].as_object().unwrap().len(), 2);
        assert_eq!(comms.close_lane(&lane), vec!["a".to_owned()]);
        comms.note(CommKind::Close, &map(json!({"comm_id": "b"})), &Lane::Main);
        assert_eq!(comms.info(None), json!({"status": "ok", "comms": {}}));
    }
}
