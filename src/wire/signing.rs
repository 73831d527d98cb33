//! HMAC-SHA256 over header, parent header, metadata and content; verification in constant time
//! and refusal of signatures already seen. The key never leaves this file (not even in `Debug`).

use std::collections::{HashSet, VecDeque};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::WireError;

type HmacSha256 = Hmac<Sha256>;

/// Signs outgoing messages. An empty key means "no signing", as in jupyter_client.
#[derive(Clone)]
pub struct Signer {
    mac: Option<HmacSha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("signed", &self.mac.is_some()).finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        let mac = (!key.is_empty())
            .then(|| HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length"));
        Self { mac }
    }

    pub fn is_signing(&self) -> bool {
        self.mac.is_some()
    }

    /// The hex signature of the four signed frames, or "" when there is no key.
    pub fn sign(&self, parts: &[&[u8]]) -> String {
        match &self.mac {
            None => String::new(),
            Some(mac) => {
                let mut mac = mac.clone();
                for part in parts {
                    mac.update(part);
                }
                hex::encode(mac.finalize().into_bytes())
            }
        }
    }
}

/// How many signatures are remembered to refuse replays (as jupyter_client's digest history).
const REMEMBERED_SIGNATURES: usize = 1 << 16;

/// Checks incoming signatures and remembers them to refuse replays.
#[derive(Debug)]
pub struct Verifier {
    signer: Signer,
    seen: HashSet<Vec<u8>>,
    order: VecDeque<Vec<u8>>,
}

impl Verifier {
    pub fn new(signer: Signer) -> Self {
        Self { signer, seen: HashSet::new(), order: VecDeque::new() }
    }

    /// Accepts `signature` (hex) for `parts` once; a second time it is a replay.
    pub fn verify(&mut self, signature: &[u8], parts: &[&[u8]]) -> Result<(), WireError> {
        let Some(mac) = &self.signer.mac else {
            return Ok(());
        };
        if signature.is_empty() {
            return Err(WireError::MissingSignature);
        }
        let expected = hex::decode(signature).map_err(|_| WireError::BadSignature)?;
        let mut mac = mac.clone();
        for part in parts {
            mac.update(part);
        }
        mac.verify_slice(&expected).map_err(|_| WireError::BadSignature)?;
        if !self.seen.insert(expected.clone()) {
            return Err(WireError::Replayed);
        }
        self.order.push_back(expected);
        if self.order.len() > REMEMBERED_SIGNATURES {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 4231, test case 2.
    #[test]
    fn matches_the_rfc_4231_vector() {
        let signer = Signer::new(b"Jefe");
        assert_eq!(
            signer.sign(&[b"what do ya want ", b"for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verifies_once_then_refuses_the_replay() {
        let signer = Signer::new(b"key");
        let parts: [&[u8]; 4] = [b"{}", b"{}", b"{}", b"{}"];
        let signature = signer.sign(&parts);
        let mut verifier = Verifier::new(signer);
        verifier.verify(signature.as_bytes(), &parts).unwrap();
        assert!(matches!(verifier.verify(signature.as_bytes(), &parts), Err(WireError::Replayed)));
    }

    #[test]
    fn refuses_bad_and_missing_signatures() {
        let signer = Signer::new(b"key");
        let parts: [&[u8]; 4] = [b"{}", b"{}", b"{}", b"{\"a\":1}"];
        let mut verifier = Verifier::new(signer.clone());
        let other = Signer::new(b"other").sign(&parts);
        assert!(matches!(verifier.verify(other.as_bytes(), &parts), Err(WireError::BadSignature)));
        assert!(matches!(verifier.verify(b"zz", &parts), Err(WireError::BadSignature)));
        assert!(matches!(verifier.verify(b"", &parts), Err(WireError::MissingSignature)));
        let good = signer.sign(&parts);
        verifier.verify(good.as_bytes(), &parts).unwrap();
    }

    #[test]
    fn an_empty_key_signs_nothing_and_accepts_everything() {
        let signer = Signer::new(b"");
        assert_eq!(signer.sign(&[b"x"]), "");
        let mut verifier = Verifier::new(signer);
        verifier.verify(b"", &[b"x"]).unwrap();
    }

    #[test]
    fn debug_never_shows_the_key() {
        let shown = format!("{:?}", Verifier::new(Signer::new(b"secret-key")));
        assert!(!shown.contains("secret"), "{shown}");
    }
}
