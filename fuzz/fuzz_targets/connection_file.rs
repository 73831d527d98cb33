//! Fuzzes the connection-file parser: any text either is refused or gives a connection whose
//! key can sign, and a keyed connection always uses the one scheme the kernel implements.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parakernel::wire::{ConnectionInfo, Signer};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(info) = ConnectionInfo::from_json(text, "fuzz") else { return };
    assert!(
        info.key.is_empty() || info.signature_scheme == "hmac-sha256",
        "accepted scheme {:?} with a key",
        info.signature_scheme
    );
    let signer = Signer::new(info.key.as_bytes());
    assert_eq!(signer.is_signing(), !info.key.is_empty());
});
