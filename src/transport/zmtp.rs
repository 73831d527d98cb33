//! Checks the bytes a TCP peer sends against ZMTP 3 framing, as they stream past, before libzmq
//! sees them: a greeting, then frames whose declared sizes are bounded per frame and per
//! message, and messages bounded in frame count. libzmq's own limit (`ZMQ_MAXMSGSIZE`) is per
//! frame: a peer that sends frames with the MORE flag for ever grows the kernel without bound
//! (measured: 88 MB of one-byte frames held 1.9 GB). This check holds no data, only counters,
//! so it costs the same whatever the peer declares. It knows framing, never what a message
//! means.

use std::fmt;

/// The ZMTP 3 greeting's length.
const GREETING: usize = 64;
const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;
const FLAG_RESERVED: u8 = !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND);

/// Largest command other than CurveZMQ's MESSAGE (READY, HELLO, INITIATE, PING carry little).
const MAX_COMMAND: u64 = 64 * 1024;
/// What CurveZMQ adds to a frame it wraps in a MESSAGE command (name, nonce, box, flags).
const CURVE_OVERHEAD: u64 = 1 + 7 + 8 + 16 + 1;

/// Why a peer's bytes were refused; shown in the log line that says the connection was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotAGreeting,
    UnsupportedVersion(u8),
    UnknownMechanism,
    ReservedFlags(u8),
    FrameTooLarge { declared: u64, max: u64 },
    MessageTooLarge { total: u64, max: u64 },
    TooManyFrames { max: usize },
    CommandTooLarge { declared: u64, max: u64 },
    CommandWithMore,
}

impl fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotAGreeting => formatter.write_str("the first bytes are not a ZMTP greeting"),
            Refusal::UnsupportedVersion(major) => {
                write!(formatter, "ZMTP version {major} (only version 3 is served)")
            }
            Refusal::UnknownMechanism => {
                formatter.write_str("the greeting names a mechanism other than NULL or CURVE")
            }
            Refusal::ReservedFlags(flags) => write!(formatter, "a frame sets reserved flag bits ({flags:#04x})"),
            Refusal::FrameTooLarge { declared, max } => {
                write!(formatter, "a frame declares {declared} bytes, over the maximum message size of {max}")
            }
            Refusal::MessageTooLarge { total, max } => {
                write!(formatter, "a message's frames add up to {total} bytes, over the maximum message size of {max}")
            }
            Refusal::TooManyFrames { max } => write!(formatter, "a message has more than {max} frames"),
            Refusal::CommandTooLarge { declared, max } => {
                write!(formatter, "a command declares {declared} bytes (at most {max})")
            }
            Refusal::CommandWithMore => formatter.write_str("a command frame sets the MORE flag"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bytes of the greeting seen so far.
    Greeting(usize),
    /// Expecting a frame's flags byte.
    Flags,
    /// Reading a frame's size: bytes still to come, the value so far, the frame's flags.
    Size { left: u8, size: u64, flags: u8 },
    /// Skipping a frame's body; `last`: it ends a message (or is a command).
    Body { left: u64, last: bool },
    Refused,
}

/// The state of one connection's stream, fed in chunks as they arrive.
#[derive(Debug, Clone)]
pub struct FrameCheck {
    max_message_size: u64,
    max_frames: usize,
    state: State,
    /// The greeting's bytes, kept to check them once complete.
    greeting: [u8; GREETING],
    /// Frames and bytes of the message being received (reset after a frame without MORE).
    frames: usize,
    total: u64,
    /// Bytes received of the message or command not yet complete: what libzmq holds for it.
    unfinished: u64,
}

impl FrameCheck {
    pub fn new(max_message_size: u64, max_frames: usize) -> Self {
        Self {
            max_message_size,
            max_frames,
            state: State::Greeting(0),
            greeting: [0; GREETING],
            frames: 0,
            total: 0,
            unfinished: 0,
        }
    }

    /// Bytes received of the message (or command) still being received: libzmq holds them
    /// until it is complete.
    pub fn unfinished(&self) -> u64 {
        self.unfinished
    }

    /// Checks the next bytes of the stream. After a refusal every later call refuses too.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Refusal> {
        while !bytes.is_empty() {
            match self.state {
                State::Refused => return Err(Refusal::NotAGreeting),
                State::Greeting(seen) => {
                    let take = (GREETING - seen).min(bytes.len());
                    self.greeting[seen..seen + take].copy_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    let seen = seen + take;
                    // The signature can be judged as soon as its bytes are there.
                    if seen >= 1 && self.greeting[0] != 0xFF {
                        return self.refuse(Refusal::NotAGreeting);
                    }
                    if seen >= 10 && self.greeting[9] & 0x01 == 0 {
                        return self.refuse(Refusal::NotAGreeting);
                    }
                    if seen >= 11 && self.greeting[10] != 3 {
                        return self.refuse(Refusal::UnsupportedVersion(self.greeting[10]));
                    }
                    if seen < GREETING {
                        self.state = State::Greeting(seen);
                        continue;
                    }
                    let mechanism = &self.greeting[12..32];
                    let name_end = mechanism.iter().position(|&byte| byte == 0).unwrap_or(mechanism.len());
                    let (name, padding) = mechanism.split_at(name_end);
                    if !matches!(name, b"NULL" | b"CURVE") || padding.iter().any(|&byte| byte != 0) {
                        return self.refuse(Refusal::UnknownMechanism);
                    }
                    self.state = State::Flags;
                }
                State::Flags => {
                    let flags = bytes[0];
                    bytes = &bytes[1..];
                    self.unfinished += 1;
                    if flags & FLAG_RESERVED != 0 {
                        return self.refuse(Refusal::ReservedFlags(flags));
                    }
                    if flags & FLAG_COMMAND != 0 && flags & FLAG_MORE != 0 {
                        return self.refuse(Refusal::CommandWithMore);
                    }
                    let left = if flags & FLAG_LONG != 0 { 8 } else { 1 };
                    self.state = State::Size { left, size: 0, flags };
                }
                State::Size { left, size, flags } => {
                    let size = (size << 8) | u64::from(bytes[0]);
                    bytes = &bytes[1..];
                    self.unfinished += 1;
                    if left > 1 {
                        self.state = State::Size { left: left - 1, size, flags };
                        continue;
                    }
                    self.frame(size, flags)?;
                    let last = flags & FLAG_COMMAND != 0 || flags & FLAG_MORE == 0;
                    self.state = if size == 0 {
                        self.end_of_frame(last);
                        State::Flags
                    } else {
                        State::Body { left: size, last }
                    };
                }
                State::Body { left, last } => {
                    let available = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
                    let take = left.min(available);
                    // `take` is at most `bytes.len()`.
                    bytes = &bytes[usize::try_from(take).unwrap_or(bytes.len())..];
                    self.unfinished += take;
                    self.state = if take == left {
                        self.end_of_frame(last);
                        State::Flags
                    } else {
                        State::Body { left: left - take, last }
                    };
                }
            }
        }
        Ok(())
    }

    /// Judges a frame from its header, before any of its body is read.
    fn frame(&mut self, size: u64, flags: u8) -> Result<(), Refusal> {
        if flags & FLAG_COMMAND != 0 {
            // CurveZMQ carries every message frame in a MESSAGE command; its MORE flag is
            // encrypted, so a peer that passed the CurveZMQ handshake (it holds the keys) is
            // bounded per frame only.
            let max = MAX_COMMAND.max(self.max_message_size.saturating_add(CURVE_OVERHEAD));
            if size > max {
                return self.refuse(Refusal::CommandTooLarge { declared: size, max });
            }
            return Ok(());
        }
        if size > self.max_message_size {
            return self.refuse(Refusal::FrameTooLarge { declared: size, max: self.max_message_size });
        }
        self.frames += 1;
        self.total = self.total.saturating_add(size);
        if self.frames > self.max_frames {
            return self.refuse(Refusal::TooManyFrames { max: self.max_frames });
        }
        if self.total > self.max_message_size {
            return self.refuse(Refusal::MessageTooLarge { total: self.total, max: self.max_message_size });
        }
        if flags & FLAG_MORE == 0 {
            self.frames = 0;
            self.total = 0;
        }
        Ok(())
    }

    fn end_of_frame(&mut self, last: bool) {
        if last {
            self.unfinished = 0;
        }
    }

    fn refuse(&mut self, refusal: Refusal) -> Result<(), Refusal> {
        self.state = State::Refused;
        Err(refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting(mechanism: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 0];
        let mut name = mechanism.to_vec();
        name.resize(20, 0);
        bytes.extend(name);
        bytes.push(0);
        bytes.resize(GREETING, 0);
        bytes
    }

    fn short(flags: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![flags, u8::try_from(body.len()).unwrap()];
        bytes.extend(body);
        bytes
    }

    fn long_header(flags: u8, size: u64) -> Vec<u8> {
        let mut bytes = vec![flags | FLAG_LONG];
        bytes.extend(size.to_be_bytes());
        bytes
    }

    #[test]
    fn a_client_stream_passes_in_any_chunking() {
        let mut stream = greeting(b"NULL");
        stream.extend(short(FLAG_COMMAND, b"\x05READY\x0bSocket-Type\x00\x00\x00\x06DEALER"));
        stream.extend(short(FLAG_MORE, b""));
        stream.extend(short(FLAG_MORE, b"<IDS|MSG>"));
        stream.extend(long_header(0, 300));
        stream.extend(vec![b'x'; 300]);
        for chunk in [1, 2, 7, 64, stream.len()] {
            let mut check = FrameCheck::new(1000, 8);
            for piece in stream.chunks(chunk) {
                check.feed(piece).expect("a well-formed stream");
            }
            assert_eq!(check.state, State::Flags);
            assert_eq!(check.unfinished(), 0);
        }
    }

    #[test]
    fn a_huge_declared_frame_is_refused_from_its_header() {
        // The 73 bytes that once aborted the kernel: a greeting and a 2^44-byte frame header.
        let mut stream = greeting(b"NULL");
        stream.extend(long_header(0, 1 << 44));
        let mut check = FrameCheck::new(1 << 30, 8);
        let refusal = check.feed(&stream).unwrap_err();
        assert_eq!(refusal, Refusal::FrameTooLarge { declared: 1 << 44, max: 1 << 30 });
        assert!(refusal.to_string().contains("17592186044416 bytes"), "{refusal}");
        assert!(check.feed(b"more").is_err(), "refused for good");
    }

    #[test]
    fn endless_more_frames_are_refused_by_count_and_by_total() {
        let mut check = FrameCheck::new(1 << 20, 4);
        check.feed(&greeting(b"NULL")).unwrap();
        for _ in 0..4 {
            check.feed(&short(FLAG_MORE, b"a")).unwrap();
        }
        assert_eq!(check.feed(&short(FLAG_MORE, b"a")), Err(Refusal::TooManyFrames { max: 4 }));

        let mut check = FrameCheck::new(100, 1000);
        check.feed(&greeting(b"NULL")).unwrap();
        check.feed(&short(FLAG_MORE, &[0; 60])).unwrap();
        let refusal = check.feed(&short(FLAG_MORE, &[0; 60])).unwrap_err();
        assert_eq!(refusal, Refusal::MessageTooLarge { total: 120, max: 100 });
    }

    #[test]
    fn counts_restart_with_each_message() {
        let mut check = FrameCheck::new(100, 2);
        check.feed(&greeting(b"NULL")).unwrap();
        for _ in 0..50 {
            check.feed(&short(FLAG_MORE, &[0; 40])).unwrap();
            check.feed(&short(0, &[0; 40])).unwrap();
        }
    }

    #[test]
    fn unfinished_counts_the_bytes_of_the_message_being_received() {
        let mut check = FrameCheck::new(1000, 8);
        check.feed(&greeting(b"NULL")).unwrap();
        assert_eq!(check.unfinished(), 0);
        check.feed(&short(FLAG_MORE, b"abc")).unwrap();
        assert_eq!(check.unfinished(), 5);
        check.feed(&long_header(0, 100)).unwrap();
        check.feed(&[0; 60]).unwrap();
        assert_eq!(check.unfinished(), 5 + 9 + 60);
        check.feed(&[0; 40]).unwrap();
        assert_eq!(check.unfinished(), 0, "the message is complete");
        check.feed(&short(FLAG_COMMAND, b"\x04PING")).unwrap();
        assert_eq!(check.unfinished(), 0, "a command is complete by itself");
    }

    #[test]
    fn garbage_instead_of_a_greeting_is_refused_at_once() {
        assert_eq!(FrameCheck::new(100, 2).feed(b"GET / HTTP/1.1\r\n"), Err(Refusal::NotAGreeting));
        let mut old = greeting(b"NULL");
        old[10] = 2;
        assert_eq!(FrameCheck::new(100, 2).feed(&old[..11]), Err(Refusal::UnsupportedVersion(2)));
        assert_eq!(FrameCheck::new(100, 2).feed(&greeting(b"PLAIN")), Err(Refusal::UnknownMechanism));
        FrameCheck::new(100, 2).feed(&greeting(b"CURVE")).expect("CURVE is served");
    }

    #[test]
    fn bad_flags_and_commands_are_refused() {
        let mut check = FrameCheck::new(100, 2);
        check.feed(&greeting(b"NULL")).unwrap();
        assert_eq!(check.feed(&[0x08, 0]), Err(Refusal::ReservedFlags(0x08)));

        let mut check = FrameCheck::new(100, 2);
        check.feed(&greeting(b"NULL")).unwrap();
        assert_eq!(check.feed(&[FLAG_COMMAND | FLAG_MORE, 0]), Err(Refusal::CommandWithMore));

        let mut check = FrameCheck::new(100, 2);
        check.feed(&greeting(b"CURVE")).unwrap();
        // A CurveZMQ MESSAGE may carry a frame of the maximum size, not more.
        check.feed(&long_header(FLAG_COMMAND, 100 + CURVE_OVERHEAD)).unwrap();
        let mut check = FrameCheck::new(100, 2);
        check.feed(&greeting(b"CURVE")).unwrap();
        let refusal = check.feed(&long_header(FLAG_COMMAND, MAX_COMMAND + 1)).unwrap_err();
        assert!(matches!(refusal, Refusal::CommandTooLarge { .. }), "{refusal:?}");
    }
}
