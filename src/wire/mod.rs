//! Bytes to typed messages and back: the connection file, the message envelope, multipart
//! framing, HMAC-SHA256 signing and verification, and the typed content of every request the
//! kernel answers, and how a log line quotes a peer's string. No I/O happens here.

mod connection;
pub mod content;
mod message;
mod quoted;
mod requests;
mod signing;

pub use connection::ConnectionInfo;
pub use message::{Header, Message, Session, DELIMITER, PROTOCOL_VERSION};
pub use quoted::{quoted, Quoted, QUOTED_CHARS};
pub use requests::{
    reply_type, CommInfoRequest, CommRequest, CompleteRequest, ExecuteRequest, HistoryAccess,
    HistoryRequest, InputReply, InspectRequest, IsCompleteRequest, Request, ShutdownRequest,
};
pub use signing::{Signer, Verifier};

/// Everything that can be wrong with bytes that claim to be a Jupyter message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot read connection file {path}")]
    ConnectionFileIo {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection file {path} is not valid")]
    ConnectionFileJson {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported signature scheme {0:?} (only hmac-sha256 is supported)")]
    SignatureScheme(String),
    #[error("no <IDS|MSG> delimiter among {0} frames")]
    NoDelimiter(usize),
    #[error("{0} frames after the delimiter; a message needs at least 5")]
    TooFewFrames(usize),
    #[error("the message is not signed")]
    MissingSignature,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the signature was already seen (replayed message)")]
    Replayed,
    #[error("the {part} frame is not valid JSON")]
    Json {
        part: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the content of {0} is not a JSON object")]
    ContentNotObject(String),
    #[error("{msg_type} content is not valid: {source}")]
    Content {
        msg_type: String,
        #[source]
        source: serde_json::Error,
    },
}
