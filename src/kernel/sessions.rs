//! One lane per session (`--lane-per-session`, `parakernel run`): each client session (a
//! notebook) has a scope of its own, named after the session. Its cells that name no lane run
//! in the scope's own lane (`nb1-train`, `session-1a2b3c4d`); the lanes its cells name are the
//! scope's too (`%%lane fit` runs in `nb1-train/fit`), so two notebooks that both tag
//! `lane:fit` do not share an interpreter. A name without `/` that a session's lane call gives
//! (`%wait fit`, `%lane stop fit`) means the session's own lane of that name when there is
//! one; a name with `/`, or one the session has no lane of, is the lane of that name as
//! `%lanes` shows it. Stopping a session's lane stops the lanes its cells named.

use crate::lanes::{InterruptTarget, Lane, Executor, RequestId};
use super::routing;
use super::Kernel;

/// Between a session's scope and the name its cells give a lane (never in a name a cell gives).
const SCOPE_SEPARATOR: char = '/';

impl<E: Executor> Kernel<E> {
    /// The scope of a client session: its lane's name, given on first use (`None` when the
    /// kernel runs without lanes per session, or without lanes at all).
    fn session_scope(&mut self, session: &str) -> Option<String> {
        if !self.lane_per_session || self.executor.lanes_unavailable().is_some() {
            return None;
        }
        if let Some(name) = self.session_lanes.get(session) {
            return Some(name.clone());
        }
        let base = session_lane_name(session);
        let taken = |name: &str| self.session_lanes.values().any(|known| known == name);
        let name = (1..).map(|n| if n == 1 { base.clone() } else { format!("{base}-{n}") }).find(|name| !taken(name)).expect("a free name");
        self.session_lanes.insert(session.to_owned(), name.clone());
        Some(name)
    }

    /// One lane per session: the lane of a client session (made on its first cell). `None` when
    /// the kernel runs without lanes per session, or without lanes at all.
    pub(super) fn session_lane(&mut self, session: &str) -> Option<Lane> {
        let name = self.session_scope(session)?;
        Some(self.own_lane(Lane::Named(name), session))
    }

    /// The lane a session's cell names: the session's own lane of that name (one lane per
    /// session), else the lane of that name.
    pub(super) fn named_lane(&mut self, name: String, session: &str) -> Lane {
        match self.session_scope(session) {
            Some(scope) => self.own_lane(scoped(&scope, &name), session),
            None => Lane::Named(name),
        }
    }

    /// Marks `lane` as `session`'s (again after a `%lane stop`, which forgets the lane's queue).
    fn own_lane(&mut self, lane: Lane, session: &str) -> Lane {
        self.lanes.entry(lane.clone()).or_default().session = Some(session.to_owned());
        lane
    }

    /// The lane a query's `%%lane NAME` line names, if it exists.
    pub(super) fn existing_named_lane(&self, name: &str, session: &str) -> Option<Lane> {
        let scoped = self.session_lanes.get(session).filter(|_| self.lane_per_session).map(|scope| scoped(scope, name));
        scoped.into_iter().chain([Lane::Named(name.to_owned())]).find(|lane| self.lanes.contains_key(lane))
    }

    /// The lane a user means by `name` in a lane call made by the cell `request`.
    pub(super) fn lookup(&self, name: &str, request: Option<RequestId>) -> Result<Lane, String> {
        if let Some(lane) = self.caller_scope(request).map(|scope| scoped(scope, name)) {
            if !name.contains(SCOPE_SEPARATOR) && self.lanes.contains_key(&lane) {
                return Ok(lane);
            }
        }
        let lane = match name {
            "main" => Lane::Main,
            _ => name
                .strip_prefix("fresh-")
                .and_then(|slot| slot.parse().ok())
                .map(Lane::Fresh)
                .filter(|lane| self.lanes.contains_key(lane))
                .unwrap_or_else(|| Lane::Named(name.to_owned())),
        };
        if self.lanes.contains_key(&lane) {
            return Ok(lane);
        }
        let known: Vec<String> = self.lanes.keys().map(Lane::name).collect();
        Err(format!("there is no lane named {name:?}; lanes now: {}", known.join(", ")))
    }

    /// The scope of the session whose cell made a lane call.
    fn caller_scope(&self, request: Option<RequestId>) -> Option<&String> {
        let flight = self.in_flight.get(&request?)?;
        self.session_lanes.get(&flight.message.header.session).filter(|_| self.lane_per_session)
    }

    /// The lanes a session's cells named (`scope/NAME`), and the fresh lanes now running one of
    /// its cells: ended with the session's lane.
    pub(super) fn scoped_lanes(&self, scope: &str) -> Vec<Lane> {
        let prefix = format!("{scope}{SCOPE_SEPARATOR}");
        let session = self.session_lanes.iter().find(|(_, known)| *known == scope).map(|(session, _)| session.as_str());
        let runs_session_cell = |queue: &super::LaneQueue| {
            let running = queue.running.and_then(|request| self.in_flight.get(&request));
            running.is_some_and(|flight| Some(flight.message.header.session.as_str()) == session)
        };
        self.lanes
            .iter()
            .filter(|(lane, queue)| match lane {
                Lane::Named(name) => name.starts_with(&prefix),
                Lane::Fresh(_) => runs_session_cell(queue),
                Lane::Main => false,
            })
            .map(|(lane, _)| lane.clone())
            .collect()
    }

    /// What an `interrupt_request` from `session` interrupts. One lane per session: the lanes
    /// now running that session's cells (its own lane, the lanes its cells named, the main or
    /// fresh lanes it sent cells to), and nobody else's. A session that sent no cell is the
    /// Jupyter server's own, which JupyterLab's interrupt button goes through (it does not say
    /// which notebook): every lane. Without lanes per session: every lane, as ipykernel.
    pub(super) fn interrupt_targets(&self, session: &str) -> Vec<InterruptTarget> {
        if !self.lane_per_session || !self.session_counts.contains_key(session) {
            return vec![InterruptTarget::All];
        }
        let of_session = |request: &RequestId| self.in_flight.get(request).is_some_and(|flight| flight.message.header.session == session);
        self.lanes
            .iter()
            .filter(|(_, queue)| queue.running.as_ref().is_some_and(of_session))
            .map(|(lane, _)| InterruptTarget::Lane(lane.clone()))
            .collect()
    }
}

/// The lane `name` of a session's `scope` (`nb1-train/fit`).
fn scoped(scope: &str, name: &str) -> Lane {
    Lane::Named(format!("{scope}{SCOPE_SEPARATOR}{name}"))
}

/// A lane name for a client session: `session-` and the first 8 characters of a uuid, else
/// the session's letters, digits, `_` and `-` (at most 48; `session` if none).
fn session_lane_name(session: &str) -> String {
    let uuid_like = session.len() >= 8 && session.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if uuid_like {
        return format!("session-{}", &session[..8]);
    }
    let kept: String = session.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').take(48).collect();
    if kept.is_empty() || kept == "main" || routing::reserved_name(&kept) {
        format!("session-{kept}")
    } else {
        kept
    }
}
