//! Typed content of the requests the kernel answers, and the one table that maps each
//! `msg_type` to its type.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::WireError;

#[derive(Debug, Clone, Deserialize)]
pub struct ExecuteRequest {
    pub code: String,
    #[serde(default)]
    pub silent: bool,
    #[serde(default = "yes")]
    pub store_history: bool,
    #[serde(default)]
    pub user_expressions: Map<String, Value>,
    /// As ipykernel reads it: a client that does not say it answers `input_request`s is not
    /// sent one (an `input()` would wait for good).
    #[serde(default)]
    pub allow_stdin: bool,
    #[serde(default = "yes")]
    pub stop_on_error: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompleteRequest {
    pub code: String,
    pub cursor_pos: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InspectRequest {
    pub code: String,
    pub cursor_pos: Option<usize>,
    #[serde(default)]
    pub detail_level: u8,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IsCompleteRequest {
    pub code: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryAccess {
    Range,
    Tail,
    Search,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HistoryRequest {
    #[serde(default)]
    pub output: bool,
    #[serde(default)]
    pub raw: bool,
    pub hist_access_type: HistoryAccess,
    #[serde(default)]
    pub session: Option<i64>,
    #[serde(default)]
    pub start: Option<i64>,
    #[serde(default)]
    pub stop: Option<i64>,
    #[serde(default)]
    pub n: Option<usize>,
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub unique: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CommInfoRequest {
    #[serde(default)]
    pub target_name: Option<String>,
}

/// `comm_open`, `comm_msg` and `comm_close` all carry a comm id; the rest goes to the comm
/// manager as it came.
#[derive(Debug, Clone, Deserialize)]
pub struct CommRequest {
    pub comm_id: String,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ShutdownRequest {
    #[serde(default)]
    pub restart: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InputReply {
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Empty {}

fn yes() -> bool {
    true
}

/// One table: `msg_type` => variant(content). The enum, the parser and `msg_type()` are all
/// generated from it, so they cannot drift apart.
macro_rules! requests {
    ($($msg_type:literal => $variant:ident($content:ty),)*) => {
        /// A message the kernel understands, with typed content.
        #[derive(Debug, Clone)]
        pub enum Request {
            $($variant($content),)*
            /// A `msg_type` the kernel does not know.
            Unknown(String),
        }

        impl Request {
            /// Types the content of a message of type `msg_type` straight from the bytes of its
            /// frame: no JSON tree is built on the way (a cell's code is unescaped once, into
            /// its `String`). Content that is not JSON is [`WireError::Json`], JSON that is not
            /// an object [`WireError::ContentNotObject`], and an object whose fields do not fit
            /// the type [`WireError::Content`].
            pub fn parse(msg_type: &str, content: &[u8]) -> Result<Self, WireError> {
                match msg_type {
                    $($msg_type => typed(msg_type, content).map(Request::$variant),)*
                    other => {
                        // Content nobody reads is checked as any other, and not kept.
                        serde_json::from_slice::<IgnoredAny>(content)
                            .map_err(|source| content_error(msg_type, content, source))?;
                        if !is_object(content) {
                            return Err(WireError::ContentNotObject(other.to_owned()));
                        }
                        Ok(Request::Unknown(other.to_owned()))
                    }
                }
            }

            pub fn msg_type(&self) -> &str {
                match self {
                    $(Request::$variant(_) => $msg_type,)*
                    Request::Unknown(msg_type) => msg_type,
                }
            }
        }
    };
}

requests! {
    "kernel_info_request" => KernelInfo(Empty),
    "execute_request" => Execute(ExecuteRequest),
    "complete_request" => Complete(CompleteRequest),
    "inspect_request" => Inspect(InspectRequest),
    "is_complete_request" => IsComplete(IsCompleteRequest),
    "history_request" => History(HistoryRequest),
    "comm_info_request" => CommInfo(CommInfoRequest),
    "comm_open" => CommOpen(CommRequest),
    "comm_msg" => CommMsg(CommRequest),
    "comm_close" => CommClose(CommRequest),
    "shutdown_request" => Shutdown(ShutdownRequest),
    "interrupt_request" => Interrupt(Empty),
    "input_reply" => InputReply(InputReply),
}

fn typed<T: serde::de::DeserializeOwned>(msg_type: &str, content: &[u8]) -> Result<T, WireError> {
    // serde also reads a struct from a JSON array (its fields in order): `["print(1)", false]`
    // would run as a cell. Content must be an object.
    if !is_object(content) {
        return Err(match serde_json::from_slice::<IgnoredAny>(content) {
            Err(source) => WireError::Json { part: "content", source },
            Ok(_) => WireError::ContentNotObject(msg_type.to_owned()),
        });
    }
    serde_json::from_slice(content).map_err(|source| content_error(msg_type, content, source))
}

/// Which error `source` (from reading `content`) is: the whole frame is checked again only on
/// this path, since typing stops at the first field that does not fit.
fn content_error(msg_type: &str, content: &[u8], source: serde_json::Error) -> WireError {
    if let Err(source) = serde_json::from_slice::<IgnoredAny>(content) {
        return WireError::Json { part: "content", source };
    }
    if !is_object(content) {
        return WireError::ContentNotObject(msg_type.to_owned());
    }
    WireError::Content { msg_type: msg_type.to_owned(), source }
}

fn is_object(content: &[u8]) -> bool {
    content.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'{')
}

/// The reply type owed for `msg_type`, if it is a request (`x_request` → `x_reply`).
pub fn reply_type(msg_type: &str) -> Option<String> {
    msg_type.strip_suffix("_request").map(|stem| format!("{stem}_reply"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn execute_request_defaults_follow_the_protocol() {
        let Request::Execute(request) =
            Request::parse("execute_request", br#"{"code": "1"}"#).unwrap()
        else {
            panic!("not an execute request")
        };
        assert!(!request.silent);
        assert!(request.store_history);
        assert!(!request.allow_stdin);
        assert!(request.stop_on_error);
    }

    #[test]
    fn content_that_is_not_an_object_is_refused_even_when_its_items_would_fit() {
        let error = Request::parse("execute_request", br#"["print(1)", false, true, {}, true, true]"#).unwrap_err();
        assert!(matches!(error, WireError::ContentNotObject(ref msg_type) if msg_type == "execute_request"), "{error}");
        assert!(matches!(Request::parse("execute_request", b"[1,"), Err(WireError::Json { .. })));
        assert!(matches!(Request::parse("shutdown_request", b"[true]"), Err(WireError::ContentNotObject(_))));
    }

    #[test]
    fn a_wrong_typed_field_is_an_error_that_names_the_message() {
        let error = Request::parse("execute_request", br#"{"code": 5}"#).unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("execute_request content is not valid"), "{text}");
        assert!(text.contains("expected a string"), "{text}");
    }

    #[test]
    fn content_errors_say_whether_the_frame_is_json_an_object_or_the_wrong_fields() {
        let json = |msg_type, content: &[u8]| Request::parse(msg_type, content).unwrap_err();
        assert!(matches!(json("execute_request", b"{code:"), WireError::Json { part: "content", .. }));
        // Typing stops at the wrong field; the syntax error after it still decides.
        assert!(matches!(json("execute_request", br#"{"code": 5, oops"#), WireError::Json { .. }));
        assert!(matches!(json("execute_request", b"[1]"), WireError::ContentNotObject(_)));
        assert!(matches!(json("execute_request", br#" "text" "#), WireError::ContentNotObject(_)));
        assert!(matches!(json("execute_request", br#"{"silent": true}"#), WireError::Content { .. }));
        assert!(matches!(json("debug_request", b"{oops"), WireError::Json { .. }));
        assert!(matches!(json("debug_request", b"[]"), WireError::ContentNotObject(_)));
    }

    #[test]
    fn a_cell_is_unescaped_straight_from_the_frame() {
        let content = serde_json::to_vec(&json!({"code": "s = 'é\\n'\nlen(s)\t\u{1F600}"})).unwrap();
        let Request::Execute(request) = Request::parse("execute_request", &content).unwrap() else {
            panic!("not an execute request")
        };
        assert_eq!(request.code, "s = 'é\\n'\nlen(s)\t\u{1F600}");
    }

    #[test]
    fn unknown_types_are_kept_by_name() {
        let request = Request::parse("debug_request", b"{}").unwrap();
        assert!(matches!(&request, Request::Unknown(name) if name == "debug_request"));
        assert_eq!(request.msg_type(), "debug_request");
    }

    #[test]
    fn the_table_maps_both_ways() {
        for msg_type in ["kernel_info_request", "comm_msg", "input_reply", "history_request"] {
            let content = match msg_type {
                "comm_msg" => json!({"comm_id": "c", "data": {}}),
                "input_reply" => json!({"value": "x"}),
                "history_request" => json!({"hist_access_type": "tail", "n": 3}),
                _ => json!({}),
            };
            let content = serde_json::to_vec(&content).unwrap();
            assert_eq!(Request::parse(msg_type, &content).unwrap().msg_type(), msg_type);
        }
    }

    #[test]
    fn reply_types() {
        assert_eq!(reply_type("execute_request").as_deref(), Some("execute_reply"));
        assert_eq!(reply_type("comm_msg"), None);
    }
}
