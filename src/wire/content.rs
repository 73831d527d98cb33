//! The content of what the kernel sends: execute replies, error replies, and the outputs a lane
//! publishes on iopub. Every reply and output the kernel and the lanes build comes from these
//! types, so an error or aborted reply is made in one place and the kernel asks
//! `reply.is_error()`, not `reply["status"] == "error"`.
//!
//! runtimed's `jupyter-protocol` crate was evaluated for this (README, design notes): its types
//! change what clients see (mimebundles retyped, fields added or dropped) and copy large
//! bundles, so these few types are parakernel's own. Mimebundles stay JSON maps, passed through
//! as the lane built them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An exception as Jupyter shows it: the `error` output, and the error part of a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorContent {
    pub ename: String,
    pub evalue: String,
    #[serde(default)]
    pub traceback: Vec<String>,
}

impl ErrorContent {
    /// An error the kernel raises itself: its traceback is the one line `ename: evalue`.
    pub fn new(ename: &str, evalue: &str) -> Self {
        ErrorContent { ename: ename.to_owned(), evalue: evalue.to_owned(), traceback: vec![format!("{ename}: {evalue}")] }
    }

    /// The reply content of a request that failed (any request type): `status: error` and the
    /// error's fields.
    pub fn reply(&self) -> Value {
        let mut content = Map::new();
        content.insert("status".into(), Value::from("error"));
        content.insert("ename".into(), Value::from(self.ename.as_str()));
        content.insert("evalue".into(), Value::from(self.evalue.as_str()));
        content.insert("traceback".into(), Value::from(self.traceback.clone()));
        Value::Object(content)
    }
}

/// `execute_reply` content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ExecuteReply {
    Ok {
        execution_count: u64,
        #[serde(default)]
        user_expressions: Map<String, Value>,
        #[serde(default)]
        payload: Vec<Value>,
    },
    Error {
        execution_count: u64,
        #[serde(flatten)]
        error: ErrorContent,
        #[serde(default)]
        user_expressions: Map<String, Value>,
        #[serde(default)]
        payload: Vec<Value>,
    },
    /// The cell did not run (`stop_on_error` after a failed cell, a restarted lane's queue).
    Aborted {
        execution_count: u64,
        #[serde(default)]
        user_expressions: Map<String, Value>,
        #[serde(default)]
        payload: Vec<Value>,
    },
}

impl ExecuteReply {
    /// The reply of a cell that failed with `error` before or without running.
    pub fn error(execution_count: u64, error: ErrorContent) -> Self {
        ExecuteReply::Error { execution_count, error, user_expressions: Map::new(), payload: Vec::new() }
    }

    pub fn aborted(execution_count: u64) -> Self {
        ExecuteReply::Aborted { execution_count, user_expressions: Map::new(), payload: Vec::new() }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, ExecuteReply::Error { .. })
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("an execute reply is plain JSON")
    }
}

/// `display_data` and `update_display_data` content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisplayData {
    pub data: Map<String, Value>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub transient: Map<String, Value>,
}

/// `execute_result` content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecuteResult {
    pub execution_count: Option<u64>,
    pub data: Map<String, Value>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// `clear_output` content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearOutput {
    #[serde(default)]
    pub wait: bool,
}

/// Which comm message a lane sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommKind {
    Open,
    Msg,
    Close,
}

/// What a lane publishes on iopub besides streams and status.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    DisplayData(DisplayData),
    UpdateDisplayData(DisplayData),
    ExecuteResult(ExecuteResult),
    Error(ErrorContent),
    ClearOutput(ClearOutput),
    /// A comm message; its content (`comm_id`, `data`, and `target_name` for an open) is the
    /// comm library's.
    Comm(CommKind, Map<String, Value>),
}

impl Output {
    /// Types `content` (JSON text) as the output `msg_type` names; an unknown type or content
    /// that does not fit it is an error for the caller (the lane's code) to see.
    pub fn parse(msg_type: &str, content: &[u8]) -> Result<Output, String> {
        fn typed<'a, T: Deserialize<'a>>(msg_type: &str, content: &'a [u8]) -> Result<T, String> {
            serde_json::from_slice(content).map_err(|error| format!("{msg_type} content is not valid: {error}"))
        }
        Ok(match msg_type {
            "display_data" => Output::DisplayData(typed(msg_type, content)?),
            "update_display_data" => Output::UpdateDisplayData(typed(msg_type, content)?),
            "execute_result" => Output::ExecuteResult(typed(msg_type, content)?),
            "error" => Output::Error(typed(msg_type, content)?),
            "clear_output" => Output::ClearOutput(typed(msg_type, content)?),
            "comm_open" => Output::Comm(CommKind::Open, typed(msg_type, content)?),
            "comm_msg" => Output::Comm(CommKind::Msg, typed(msg_type, content)?),
            "comm_close" => Output::Comm(CommKind::Close, typed(msg_type, content)?),
            other => {
                return Err(format!(
                    "{other:?} is not an output a lane can publish (display_data, update_display_data, \
                     execute_result, error, clear_output, comm_open, comm_msg, comm_close)"
                ))
            }
        })
    }

    pub fn msg_type(&self) -> &'static str {
        match self {
            Output::DisplayData(_) => "display_data",
            Output::UpdateDisplayData(_) => "update_display_data",
            Output::ExecuteResult(_) => "execute_result",
            Output::Error(_) => "error",
            Output::ClearOutput(_) => "clear_output",
            Output::Comm(CommKind::Open, _) => "comm_open",
            Output::Comm(CommKind::Msg, _) => "comm_msg",
            Output::Comm(CommKind::Close, _) => "comm_close",
        }
    }
}

impl Serialize for Output {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Output::DisplayData(content) | Output::UpdateDisplayData(content) => content.serialize(serializer),
            Output::ExecuteResult(content) => content.serialize(serializer),
            Output::Error(content) => content.serialize(serializer),
            Output::ClearOutput(content) => content.serialize(serializer),
            Output::Comm(_, content) => content.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn replies_serialize_as_jupyter_clients_expect() {
        let error = ExecuteReply::error(3, ErrorContent::new("LaneError", "no such lane"));
        assert_eq!(
            error.to_value(),
            json!({"status": "error", "execution_count": 3, "ename": "LaneError", "evalue": "no such lane",
                   "traceback": ["LaneError: no such lane"], "user_expressions": {}, "payload": []})
        );
        assert!(error.is_error());
        assert_eq!(
            ExecuteReply::aborted(4).to_value(),
            json!({"status": "aborted", "execution_count": 4, "user_expressions": {}, "payload": []})
        );
        let ok: ExecuteReply = serde_json::from_value(json!({"status": "ok", "execution_count": 1,
            "user_expressions": {"x": {"status": "ok"}}, "payload": []})).unwrap();
        assert!(!ok.is_error());
        assert_eq!(ok.to_value()["user_expressions"]["x"]["status"], "ok");
        assert_eq!(
            ErrorContent::new("BadRequest", "no").reply(),
            json!({"status": "error", "ename": "BadRequest", "evalue": "no", "traceback": ["BadRequest: no"]})
        );
    }

    #[test]
    fn outputs_are_typed_by_their_message_type_and_pass_bundles_through() {
        let bundle = br#"{"data": {"text/plain": "5", "application/x": [1, {"a": null}]}, "metadata": {}, "transient": {"display_id": "d"}}"#;
        let output = Output::parse("update_display_data", bundle).unwrap();
        assert_eq!(output.msg_type(), "update_display_data");
        let value = serde_json::to_value(&output).unwrap();
        assert_eq!(value, serde_json::from_slice::<Value>(bundle).unwrap(), "a bundle passes through as sent");
        let result = Output::parse("execute_result", br#"{"execution_count": 2, "data": {"text/plain": "1"}, "metadata": {}}"#).unwrap();
        assert!(matches!(result, Output::ExecuteResult(ExecuteResult { execution_count: Some(2), .. })));
        assert!(Output::parse("status", b"{}").unwrap_err().contains("not an output"));
        assert!(Output::parse("error", b"{\"ename\": 1}").unwrap_err().contains("error content"));
        let comm = Output::parse("comm_open", br#"{"comm_id": "c", "target_name": "t", "data": {}}"#).unwrap();
        assert_eq!(comm.msg_type(), "comm_open");
    }
}
