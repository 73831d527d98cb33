//! The message envelope and its multipart framing:
//! `[identities..., <IDS|MSG>, signature, header, parent_header, metadata, content, buffers...]`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Signer, Verifier, WireError};

pub const DELIMITER: &[u8] = b"<IDS|MSG>";
pub const PROTOCOL_VERSION: &str = "5.5";

/// A message header. Fields the protocol adds later (e.g. `subshell_id`) are kept as they came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub msg_id: String,
    pub msg_type: String,
    #[serde(default)]
    pub session: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub date: String,
    #[serde(default)]
    pub version: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One Jupyter message. `identities` are the ROUTER routing frames (or the iopub topic).
///
/// The content is a JSON tree (`Value`) by default. A received message keeps its content as the
/// signed bytes it came as ([`Message::receive`]) until it is typed once ([`crate::wire::Request::parse`]),
/// and the kernel may send content that borrows what it already holds (a cell's code echoed in
/// `execute_input`): a 200 MB `execute_request` is never held as a tree nor copied to be echoed.
#[derive(Debug, Clone)]
pub struct Message<C = Value> {
    pub identities: Vec<Bytes>,
    pub header: Header,
    /// `None` when the parent header is `{}`.
    pub parent_header: Option<Header>,
    pub metadata: Map<String, Value>,
    pub content: C,
    pub buffers: Vec<Bytes>,
}

impl<C> Message<C> {
    pub fn msg_type(&self) -> &str {
        &self.header.msg_type
    }

    /// The content, and the rest of the message (to reply to it, or parent output to it).
    pub fn take_content(self) -> (Message<()>, C) {
        let Message { identities, header, parent_header, metadata, content, buffers } = self;
        (Message { identities, header, parent_header, metadata, content: (), buffers }, content)
    }
}

impl<C: Serialize> Message<C> {
    /// The multipart frames of this message, signed by `signer`.
    pub fn encode(&self, signer: &Signer) -> Vec<Bytes> {
        let header = to_json(&self.header);
        let parent = self.parent_header.as_ref().map_or_else(|| b"{}".to_vec(), to_json);
        let metadata = to_json(&self.metadata);
        let content = to_json(&self.content);
        let signature = signer.sign(&[&header, &parent, &metadata, &content]);
        let mut frames = Vec::with_capacity(self.identities.len() + 6 + self.buffers.len());
        frames.extend(self.identities.iter().cloned());
        frames.push(Bytes::from_static(DELIMITER));
        frames.push(Bytes::from(signature));
        frames.extend([header, parent, metadata, content].map(Bytes::from));
        frames.extend(self.buffers.iter().cloned());
        frames
    }
}

impl Message {
    /// Splits, verifies and parses one multipart message, content included, into a JSON tree.
    pub fn decode(frames: Vec<Bytes>, verifier: &mut Verifier) -> Result<Self, WireError> {
        let (message, content) = Message::receive(frames, verifier)?.take_content();
        let content: Value = parse(&content, "content")?;
        if !content.is_object() {
            return Err(WireError::ContentNotObject(message.header.msg_type));
        }
        let Message { identities, header, parent_header, metadata, buffers, .. } = message;
        Ok(Message { identities, header, parent_header, metadata, content, buffers })
    }
}

impl Message<Bytes> {
    /// Splits, verifies and parses one multipart message, all but its content, which stays the
    /// frame it came in (typed later, straight from its bytes). Nothing is parsed before the
    /// signature is checked.
    pub fn receive(mut frames: Vec<Bytes>, verifier: &mut Verifier) -> Result<Self, WireError> {
        let delimiter = frames
            .iter()
            .position(|frame| frame.as_ref() == DELIMITER)
            .ok_or(WireError::NoDelimiter(frames.len()))?;
        let after = frames.len() - delimiter - 1;
        if after < 5 {
            return Err(WireError::TooFewFrames(after));
        }
        let mut rest = frames.split_off(delimiter);
        let identities = frames;
        let buffers = rest.split_off(6);
        let [_, signature, header, parent, metadata, content] =
            <[Bytes; 6]>::try_from(rest).expect("six frames were split off");
        verifier.verify(&signature, &[&header, &parent, &metadata, &content])?;

        let header: Header = parse(&header, "header")?;
        let parent: Value = parse(&parent, "parent_header")?;
        let parent_header = match parent {
            Value::Object(map) if map.is_empty() => None,
            other => Some(
                serde_json::from_value(other)
                    .map_err(|source| WireError::Json { part: "parent_header", source })?,
            ),
        };
        let metadata: Map<String, Value> = parse(&metadata, "metadata")?;
        Ok(Self { identities, header, parent_header, metadata, content, buffers })
    }
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], part: &'static str) -> Result<T, WireError> {
    serde_json::from_slice(bytes).map_err(|source| WireError::Json { part, source })
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("message parts are plain JSON values")
}

/// The kernel's side of a Jupyter session: makes headers and signs what it sends.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub signer: Signer,
}

impl Session {
    pub fn new(signer: Signer) -> Self {
        Self { id: uuid::Uuid::new_v4().to_string(), signer }
    }

    pub fn header(&self, msg_type: &str) -> Header {
        Header {
            msg_id: uuid::Uuid::new_v4().to_string(),
            msg_type: msg_type.to_owned(),
            session: self.id.clone(),
            username: "kernel".to_owned(),
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            version: PROTOCOL_VERSION.to_owned(),
            extra: Map::new(),
        }
    }

    /// A new message whose parent is `parent` (if any), to be sent to `identities`.
    pub fn message<C>(
        &self,
        msg_type: &str,
        content: C,
        parent: Option<&Header>,
        identities: Vec<Bytes>,
    ) -> Message<C> {
        let mut header = self.header(msg_type);
        // Replies and outputs of a subshell request stay in that subshell (JEP 91).
        if let Some(subshell) = parent.and_then(|p| p.extra.get("subshell_id")) {
            header.extra.insert("subshell_id".to_owned(), subshell.clone());
        }
        Message {
            identities,
            header,
            parent_header: parent.cloned(),
            metadata: Map::new(),
            content,
            buffers: Vec::new(),
        }
    }

    /// The reply to `request`: routed back to its sender, parented to it.
    pub fn reply<R, C>(&self, request: &Message<R>, msg_type: &str, content: C) -> Message<C> {
        self.message(msg_type, content, Some(&request.header), request.identities.clone())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn session() -> Session {
        Session::new(Signer::new(b"secret"))
    }

    fn verifier() -> Verifier {
        Verifier::new(Signer::new(b"secret"))
    }

    #[test]
    fn round_trips_through_frames() {
        let session = session();
        let mut message = session.message(
            "execute_request",
            json!({"code": "1+1"}),
            None,
            vec![Bytes::from_static(b"client-1")],
        );
        message.buffers.push(Bytes::from_static(b"\x00\x01"));
        let frames = message.encode(&session.signer);
        assert_eq!(frames[0].as_ref(), b"client-1");
        assert_eq!(frames[1].as_ref(), DELIMITER);
        assert_eq!(frames.len(), 1 + 6 + 1);

        let decoded = Message::decode(frames, &mut verifier()).unwrap();
        assert_eq!(decoded.identities, message.identities);
        assert_eq!(decoded.header, message.header);
        assert!(decoded.parent_header.is_none());
        assert_eq!(decoded.content, json!({"code": "1+1"}));
        assert_eq!(decoded.buffers, message.buffers);
    }

    #[test]
    fn a_reply_is_routed_back_and_parented_to_the_request() {
        let session = session();
        let request = session.message(
            "kernel_info_request",
            json!({}),
            None,
            vec![Bytes::from_static(b"peer")],
        );
        let reply = session.reply(&request, "kernel_info_reply", json!({"status": "ok"}));
        assert_eq!(reply.identities, request.identities);
        assert_eq!(reply.parent_header.as_ref().unwrap().msg_id, request.header.msg_id);
        assert_eq!(reply.header.msg_type, "kernel_info_reply");
        assert_eq!(reply.header.version, PROTOCOL_VERSION);
    }

    #[test]
    fn keeps_unknown_header_fields_and_the_subshell_of_the_parent() {
        let session = session();
        let mut request = session.message("execute_request", json!({}), None, vec![]);
        request.header.extra.insert("subshell_id".into(), json!("abc"));
        let frames = request.encode(&session.signer);
        let decoded = Message::decode(frames, &mut verifier()).unwrap();
        assert_eq!(decoded.header.extra["subshell_id"], json!("abc"));
        let reply = session.reply(&decoded, "execute_reply", json!({}));
        assert_eq!(reply.header.extra["subshell_id"], json!("abc"));
    }

    #[test]
    fn refuses_malformed_frames() {
        let session = session();
        let good = session.message("kernel_info_request", json!({}), None, vec![]).encode(&session.signer);

        let no_delimiter: Vec<Bytes> = good.iter().skip(1).cloned().collect();
        assert!(matches!(Message::decode(no_delimiter, &mut verifier()), Err(WireError::NoDelimiter(_))));

        let short: Vec<Bytes> = good.iter().take(4).cloned().collect();
        assert!(matches!(Message::decode(short, &mut verifier()), Err(WireError::TooFewFrames(3))));

        let mut bad_json = good.clone();
        bad_json[5] = Bytes::from_static(b"{not json");
        bad_json[1] = Bytes::from(session.signer.sign(&[&bad_json[2], &bad_json[3], &bad_json[4], &bad_json[5]]));
        assert!(matches!(
            Message::decode(bad_json, &mut verifier()),
            Err(WireError::Json { part: "content", .. })
        ));

        let mut tampered = good.clone();
        tampered[5] = Bytes::from_static(b"{\"x\": 1}");
        assert!(matches!(Message::decode(tampered, &mut verifier()), Err(WireError::BadSignature)));

        let mut not_object = good;
        not_object[5] = Bytes::from_static(b"[1]");
        not_object[1] =
            Bytes::from(session.signer.sign(&[&not_object[2], &not_object[3], &not_object[4], &not_object[5]]));
        assert!(matches!(Message::decode(not_object, &mut verifier()), Err(WireError::ContentNotObject(_))));
    }

    #[test]
    fn receive_keeps_the_content_frame_as_it_came() {
        let session = session();
        let message = session.message("execute_request", json!({"code": "x = 1"}), None, vec![]);
        let frames = message.encode(&session.signer);
        let content_frame = frames[5].clone();
        let (received, content) = Message::receive(frames, &mut verifier()).unwrap().take_content();
        assert_eq!(received.header, message.header);
        assert_eq!(content, content_frame, "the very frame, not a copy of it");
        assert_eq!(content.as_ptr(), content_frame.as_ptr());
        // Not parsed at all: content that is not JSON is left to whoever types it.
        let mut not_json = session.message("x", json!({}), None, vec![]).encode(&session.signer);
        not_json[5] = Bytes::from_static(b"{not json");
        not_json[1] = Bytes::from(session.signer.sign(&[&not_json[2], &not_json[3], &not_json[4], &not_json[5]]));
        assert!(Message::receive(not_json, &mut verifier()).is_ok());
    }

    // Found by fuzz/fuzz_targets/wire_message.rs: serde_json's default float parser reads
    // about one in five of the shortest texts that Python and JavaScript write for a double
    // (e.g. a widget's value) one ULP off, and its output does not read back the same.
    #[test]
    fn numbers_arrive_as_the_client_wrote_them_and_survive_re_encoding() {
        let session = session();
        for text in ["0.10024691340000001", "-922337203685947758091"] {
            let mut frames =
                session.message("comm_msg", json!({}), None, vec![]).encode(&session.signer);
            frames[5] = Bytes::from(format!(r#"{{"comm_id": "c", "data": {{"value": {text}}}}}"#));
            frames[1] = Bytes::from(session.signer.sign(&[&frames[2], &frames[3], &frames[4], &frames[5]]));
            let decoded = Message::decode(frames, &mut verifier()).unwrap();
            let expected: f64 = text.parse().unwrap();
            assert_eq!(decoded.content["data"]["value"].as_f64(), Some(expected), "{text}");

            let again = Message::decode(decoded.encode(&session.signer), &mut verifier()).unwrap();
            assert_eq!(again.content, decoded.content, "{text}");
        }
    }

    #[test]
    fn a_header_without_msg_type_is_refused() {
        let session = session();
        let mut frames =
            session.message("kernel_info_request", json!({}), None, vec![]).encode(&session.signer);
        frames[2] = Bytes::from_static(b"{\"msg_id\": \"x\"}");
        frames[1] = Bytes::from(session.signer.sign(&[&frames[2], &frames[3], &frames[4], &frames[5]]));
        assert!(matches!(
            Message::decode(frames, &mut verifier()),
            Err(WireError::Json { part: "header", .. })
        ));
    }
}
