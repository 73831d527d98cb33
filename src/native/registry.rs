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
    INTERPRETERS.lock_unpoisoned().remove(&interpreter_id);
}

/// The address of each registered lane's interpreter, noted when it imports `_parakernel`:
/// where `--in`/`--out` find a lane other than main (as an address: no Python object).
static INTERPRETERS: Mutex<BTreeMap<i64, usize>> = Mutex::new(BTreeMap::new());

pub(super) fn note_interpreter(interpreter_id: i64, address: usize) {
    INTERPRETERS.lock_unpoisoned().insert(interpreter_id, address);
}

/// The interpreter (its address) of the lane named `name`, if it is registered.
pub(super) fn interpreter_of_lane(name: &str) -> Option<usize> {
    let id = LANES.lock_unpoisoned().iter().find(|(_, state)| state.lane().name() == name).map(|(id, _)| *id)?;
    INTERPRETERS.lock_unpoisoned().get(&id).copied()
}

pub(super) fn lookup(interpreter_id: i64) -> Option<Arc<LaneState>> {
    LANES
        .lock_unpoisoned()
        .get(&interpreter_id)
        .cloned()
}
