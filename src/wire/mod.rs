//! Connection file, message envelope, framing and signing. No I/O.
