//! The five ZeroMQ sockets on tokio. Moves frames; never looks inside them.
