//! What each request means: dispatch, busy/idle, counters, lane queues. Never touches sockets or
//! Python directly.

pub mod executor;
