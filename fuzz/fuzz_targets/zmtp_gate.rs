//! Fuzzes the gate's ZMTP check (`transport::zmtp::FrameCheck`), which sees every byte a TCP
//! peer sends before libzmq does. Its verdict must not depend on how the stream is cut into
//! reads, and must equal that of a plain, whole-stream reading of the same rules written here
//! independently (greeting; flags; short or long size; per-frame, per-message and frame-count
//! limits; commands bounded and never continued).
#![no_main]

use libfuzzer_sys::fuzz_target;
use parakernel::transport::zmtp::{FrameCheck, Refusal};

/// The largest non-MESSAGE command, and what CurveZMQ adds around a frame (as the gate says).
const MAX_COMMAND: u64 = 64 * 1024;
const CURVE_OVERHEAD: u64 = 33;

/// The whole stream read at once: `Ok` if nothing in it breaks a rule (it may end mid-frame).
fn reference(stream: &[u8], max_size: u64, max_frames: usize) -> Result<(), Refusal> {
    let greeting_len = stream.len().min(64);
    let greeting = &stream[..greeting_len];
    if greeting.first().is_some_and(|&b| b != 0xFF) {
        return Err(Refusal::NotAGreeting);
    }
    if greeting.len() >= 10 && greeting[9] & 1 == 0 {
        return Err(Refusal::NotAGreeting);
    }
    if greeting.len() >= 11 && greeting[10] != 3 {
        return Err(Refusal::UnsupportedVersion(greeting[10]));
    }
    if greeting.len() < 64 {
        return Ok(());
    }
    let mechanism = &greeting[12..32];
    let name_end = mechanism.iter().position(|&b| b == 0).unwrap_or(20);
    if !matches!(&mechanism[..name_end], b"NULL" | b"CURVE") || mechanism[name_end..].iter().any(|&b| b != 0) {
        return Err(Refusal::UnknownMechanism);
    }
    let mut at = 64;
    let (mut frames, mut total) = (0usize, 0u64);
    while at < stream.len() {
        let flags = stream[at];
        at += 1;
        if flags & 0xF8 != 0 {
            return Err(Refusal::ReservedFlags(flags));
        }
        if flags & 4 != 0 && flags & 1 != 0 {
            return Err(Refusal::CommandWithMore);
        }
        let width = if flags & 2 != 0 { 8 } else { 1 };
        if stream.len() - at < width {
            return Ok(());
        }
        let size = stream[at..at + width].iter().fold(0u64, |size, &b| (size << 8) | u64::from(b));
        at += width;
        if flags & 4 != 0 {
            let max = MAX_COMMAND.max(max_size.saturating_add(CURVE_OVERHEAD));
            if size > max {
                return Err(Refusal::CommandTooLarge { declared: size, max });
            }
        } else {
            if size > max_size {
                return Err(Refusal::FrameTooLarge { declared: size, max: max_size });
            }
            frames += 1;
            total = total.saturating_add(size);
            if frames > max_frames {
                return Err(Refusal::TooManyFrames { max: max_frames });
            }
            if total > max_size {
                return Err(Refusal::MessageTooLarge { total, max: max_size });
            }
            if flags & 1 == 0 {
                frames = 0;
                total = 0;
            }
        }
        let body = usize::try_from(size).unwrap_or(usize::MAX);
        if stream.len() - at < body {
            return Ok(());
        }
        at += body;
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let [size_byte, frames_byte, cut_byte, stream @ ..] = data else { return };
    let max_size = u64::from(*size_byte) * 16 + 1;
    let max_frames = usize::from(*frames_byte % 16) + 1;

    let mut whole = FrameCheck::new(max_size, max_frames);
    let verdict = whole.feed(stream);
    assert_eq!(verdict, reference(stream, max_size, max_frames), "differs from the reference");

    // The same stream in reads of every size from 1 to 256 bytes, as a socket may deliver it.
    let chunk = usize::from(*cut_byte) + 1;
    let mut pieces = FrameCheck::new(max_size, max_frames);
    let mut cut = Ok(());
    for piece in stream.chunks(chunk) {
        cut = pieces.feed(piece);
        if cut.is_err() {
            break;
        }
    }
    assert_eq!(cut, verdict, "the verdict depends on how the stream is read ({chunk}-byte reads)");
    if verdict.is_err() {
        assert!(whole.feed(b"\x00\x00").is_err(), "a refused stream must stay refused");
    }
});
