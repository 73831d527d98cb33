//! Fuzzes everything in `wire` that turns untrusted frames into a message: multipart framing,
//! the HMAC check and replay refusal, the envelope's JSON, and the typed content of requests.
//!
//! Input: `[mode, tweak, frame, 0xFF, frame, 0xFF, ...]`. Frames are split on 0xFF, a byte
//! that UTF-8 (so every JSON frame) never contains. A fuzzer cannot forge HMAC-SHA256, so
//! `mode` decides what becomes of the signature frame (the one after the first `<IDS|MSG>`):
//!
//! - `Signed`: replaced by the right signature, so the JSON and content parsers are reached.
//! - `Own`: left as the fuzzer wrote it; it passes exactly when it is the right MAC.
//! - `Tampered`: signed, then one bit of a signed frame or of the signature is flipped, or
//!   the signature is cut to a prefix (`tweak` says which); it must never pass.
//! - `Replayed`: signed, then sent twice through one `Verifier` (the second time in upper
//!   case when `tweak` is odd); the second must be refused as a replay.
//! - `Unsigned`: an empty key, as a client without a key; nothing is checked but the parsing.
//!
//! Whatever decodes must re-encode to frames that decode to the same message, and the reply
//! the kernel would send to it must decode, parented to it.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use parakernel::wire::{reply_type, Message, Request, Session, Signer, Verifier, WireError, DELIMITER};
use serde_json::json;

const KEY: &[u8] = b"fuzz-key";
const SEPARATOR: u8 = 0xFF;

fuzz_target!(|data: &[u8]| {
    let [mode, tweak, rest @ ..] = data else { return };
    let frames: Vec<Bytes> = rest.split(|&byte| byte == SEPARATOR).map(Bytes::copy_from_slice).collect();
    let signer = Signer::new(KEY);
    match mode % 5 {
        0 => signed(frames, &signer),
        1 => own(frames, &signer),
        2 => tampered(frames, &signer, *tweak),
        3 => replayed(frames, &signer, *tweak),
        _ => unsigned(frames),
    }
});

fn signed(mut frames: Vec<Bytes>, signer: &Signer) {
    let framed = sign(&mut frames, signer);
    // The kernel's own path: the envelope checked and parsed, the content typed from its bytes.
    let received = Message::receive(frames.clone(), &mut Verifier::new(signer.clone()));
    let typed = received.as_ref().ok().map(|message| Request::parse(message.msg_type(), &message.content));
    let result = Message::decode(frames, &mut Verifier::new(signer.clone()));
    if result.is_ok() {
        assert!(received.is_ok(), "decodes but the kernel's path refuses it: {received:?}");
    }
    // Typing straight from the frame is the stricter of the two: a field given twice is an
    // error there, while the tree keeps the last. Whatever it accepts, the tree accepts too.
    if let (Ok(message), Some(Ok(_))) = (&result, &typed) {
        let again = Request::parse(message.msg_type(), &serde_json::to_vec(&message.content).unwrap());
        assert!(again.is_ok(), "typed from the frame: {typed:?}; from the tree: {again:?}");
    }
    if !framed {
        assert_misframed(&result);
        return;
    }
    match result {
        Ok(message) => check_round_trip(&message, signer),
        Err(error) => assert!(after_verification(&error), "a signed message was refused: {error}"),
    }
}

fn own(frames: Vec<Bytes>, signer: &Signer) {
    let right = signature_slot(&frames).map(|slot| {
        let given = hex::decode(&frames[slot]).ok();
        let expected = hex::decode(signer.sign(&signed_parts(&frames, slot))).unwrap();
        given.as_deref() == Some(expected.as_slice())
    });
    let result = Message::decode(frames, &mut Verifier::new(signer.clone()));
    let Some(right) = right else {
        assert_misframed(&result);
        return;
    };
    let passed = match &result {
        Ok(_) => true,
        Err(error) => after_verification(error),
    };
    assert_eq!(passed, right, "passed the signature check: {passed}, right signature: {right}");
    if let Ok(message) = result {
        check_round_trip(&message, signer);
    }
}

fn tampered(mut frames: Vec<Bytes>, signer: &Signer, tweak: u8) {
    if !sign(&mut frames, signer) {
        return;
    }
    let slot = signature_slot(&frames).unwrap();
    let choice = usize::from(tweak % 6);
    let at = usize::from(tweak / 6);
    if choice == 5 {
        // A prefix of the right signature (an even number of hex digits, so still hex).
        frames[slot] = frames[slot].slice(..(at % 32) * 2);
    } else {
        // One bit of the signature frame or of one of the four signed frames after it.
        let target = slot + choice;
        let mut changed = frames[target].to_vec();
        if changed.is_empty() {
            changed.push(b'x');
        } else {
            let at = at % changed.len();
            changed[at] ^= 1;
        }
        frames[target] = Bytes::from(changed);
    }
    let result = Message::decode(frames, &mut Verifier::new(signer.clone()));
    assert!(
        matches!(result, Err(WireError::BadSignature | WireError::MissingSignature)),
        "a tampered message was not refused: {result:?}"
    );
}

fn replayed(mut frames: Vec<Bytes>, signer: &Signer, tweak: u8) {
    if !sign(&mut frames, signer) {
        return;
    }
    let mut again = frames.clone();
    if tweak % 2 == 1 {
        let slot = signature_slot(&again).unwrap();
        again[slot] = Bytes::from(again[slot].to_ascii_uppercase());
    }
    let mut verifier = Verifier::new(signer.clone());
    let first = Message::decode(frames, &mut verifier);
    let passed = match &first {
        Ok(_) => true,
        Err(error) => after_verification(error),
    };
    assert!(passed, "a signed message was refused: {first:?}");
    let second = Message::decode(again, &mut verifier);
    assert!(matches!(second, Err(WireError::Replayed)), "a replay was not refused: {second:?}");
}

fn unsigned(frames: Vec<Bytes>) {
    let signer = Signer::new(b"");
    let framed = signature_slot(&frames).is_some();
    let result = Message::decode(frames, &mut Verifier::new(signer.clone()));
    if !framed {
        assert_misframed(&result);
        return;
    }
    match result {
        Ok(message) => check_round_trip(&message, &signer),
        Err(error) => assert!(after_verification(&error), "without a key no signature is checked: {error}"),
    }
}

/// The index of the signature frame when the framing is right: the frame after the first
/// delimiter, followed by at least the four signed frames.
fn signature_slot(frames: &[Bytes]) -> Option<usize> {
    let delimiter = frames.iter().position(|frame| frame.as_ref() == DELIMITER)?;
    (frames.len() - delimiter > 5).then_some(delimiter + 1)
}

fn signed_parts(frames: &[Bytes], slot: usize) -> [&[u8]; 4] {
    [&frames[slot + 1], &frames[slot + 2], &frames[slot + 3], &frames[slot + 4]]
}

/// Writes the right signature into the signature frame; false when the framing has no room.
fn sign(frames: &mut [Bytes], signer: &Signer) -> bool {
    let Some(slot) = signature_slot(frames) else { return false };
    frames[slot] = Bytes::from(signer.sign(&signed_parts(frames, slot)));
    true
}

/// Errors that can only come after the signature was accepted.
fn after_verification(error: &WireError) -> bool {
    matches!(error, WireError::Json { .. } | WireError::Content { .. } | WireError::ContentNotObject(_))
}

fn assert_misframed(result: &Result<Message, WireError>) {
    assert!(
        matches!(result, Err(WireError::NoDelimiter(_) | WireError::TooFewFrames(_))),
        "frames without room for a message were not refused as such: {result:?}"
    );
}

/// What the kernel does with a decoded message (types its content, replies to it) must not
/// panic, and `encode` must give frames that decode to the same message.
fn check_round_trip(message: &Message, signer: &Signer) {
    let parsed = Request::parse(message.msg_type(), &serde_json::to_vec(&message.content).unwrap());
    if let Ok(request) = &parsed {
        assert_eq!(request.msg_type(), message.msg_type());
    }
    let again = Message::decode(message.encode(signer), &mut Verifier::new(signer.clone()))
        .unwrap_or_else(|error| panic!("an encoded message does not decode: {error}"));
    assert_eq!(again.identities, message.identities);
    assert_eq!(again.header, message.header);
    assert_eq!(again.parent_header, message.parent_header);
    assert_eq!(again.metadata, message.metadata);
    assert_eq!(again.content, message.content);
    assert_eq!(again.buffers, message.buffers);
    let parsed_again = Request::parse(again.msg_type(), &serde_json::to_vec(&again.content).unwrap());
    assert_eq!(parsed_again.is_ok(), parsed.is_ok(), "{parsed:?} then {parsed_again:?}");

    // The reply goes back to the sender, parented to the request and in its subshell.
    let session = Session::new(signer.clone());
    let msg_type = reply_type(message.msg_type()).unwrap_or_else(|| "status".to_owned());
    let reply = session.reply(message, &msg_type, json!({"status": "ok"}));
    let reply = Message::decode(reply.encode(signer), &mut Verifier::new(signer.clone()))
        .unwrap_or_else(|error| panic!("a reply does not decode: {error}"));
    assert_eq!(reply.identities, message.identities);
    assert_eq!(reply.parent_header.as_ref(), Some(&message.header));
    assert_eq!(reply.header.extra.get("subshell_id"), message.header.extra.get("subshell_id"));
}
