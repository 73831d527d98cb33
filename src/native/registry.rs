//! Lane states by interpreter ID, where an interpreter's `_parakernel` finds its lane when it is
//! imported. Rust data only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::sync::LockExt;
use super::LaneState;

/// Lanes by interpreter ID. Rust data only: never a Python object.
static LANES: Mutex<BTreeMap<i64, Arc<LaneState>>> = Mutex::new(BTreeMap::new());

/// Makes `state` the lane state of the interpreter with ID `interpreter_id`; its next import of
/// `_parakernel` binds to it.
pub fn register(interpreter_id: i64, state: Arc<LaneState>) {
    LANES
        .lock_unpoisoned()
        .insert(interpreter_id, state);
}

/// Forgets the interpreter's lane state (module objects that still exist keep their clone).
pub fn unregister(interpreter_id: i64) {
    LANES
        .lock_unpoisoned()
        .remove(&interpreter_id);
}

pub(super) fn lookup(interpreter_id: i64) -> Option<Arc<LaneState>> {
    LANES
        .lock_unpoisoned()
        .get(&interpreter_id)
        .cloned()
}
