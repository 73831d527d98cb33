//! A notebook's file text as Python's `nbformat.write` lays it out, so that a file `parakernel
//! run` writes diffs against one nbclient or papermill wrote only where the run differs: keys
//! sorted, an indent of one space, text not escaped to ASCII, multi-line strings split into
//! lists of lines (sources, stream text, text-like mime data) where Python's
//! `str.splitlines(True)` splits them, and the values nbformat never stores (`trusted`,
//! `orig_nbformat`, `signature`) left out.
//!
//! The document stays a `serde_json::Value`, which keeps every field a notebook has: the
//! `nbformat` crate was evaluated and drops or refuses what the schema allows (README).

use serde::Serialize;
use serde_json::Value;

/// Mime types that are not `text/*` but whose strings nbformat splits into lines.
const SPLIT_MIMES: [&str; 2] = ["application/javascript", "image/svg+xml"];

/// The file text of `document` (a final newline included).
pub fn file_text(document: &Value) -> serde_json::Result<String> {
    let mut document = document.clone();
    split_lines(&mut document);
    strip_transient(&mut document);
    let mut bytes = Vec::new();
    let mut writer = serde_json::Serializer::with_formatter(&mut bytes, serde_json::ser::PrettyFormatter::with_indent(b" "));
    document.serialize(&mut writer)?;
    let mut text = String::from_utf8(bytes).expect("serde_json writes UTF-8");
    text.push('\n');
    Ok(text)
}

/// `nbformat.v4.rwbase.split_lines`.
fn split_lines(document: &mut Value) {
    let Some(cells) = document.get_mut("cells").and_then(Value::as_array_mut) else { return };
    for cell in cells {
        split_string(cell.get_mut("source"));
        if let Some(attachments) = cell.get_mut("attachments").and_then(Value::as_object_mut) {
            attachments.values_mut().for_each(split_mimebundle);
        }
        let Some(outputs) = cell.get_mut("outputs").and_then(Value::as_array_mut) else { continue };
        for output in outputs {
            match output.get("output_type").and_then(Value::as_str) {
                Some("execute_result" | "display_data") => {
                    if let Some(data) = output.get_mut("data") {
                        split_mimebundle(data);
                    }
                }
                Some("stream") => split_string(output.get_mut("text")),
                _ => {}
            }
        }
    }
}

fn split_mimebundle(bundle: &mut Value) {
    let Some(bundle) = bundle.as_object_mut() else { return };
    for (mime, value) in bundle.iter_mut() {
        if mime.starts_with("text/") || SPLIT_MIMES.contains(&mime.as_str()) {
            split_string(Some(value));
        }
    }
}

/// A string becomes the list of its lines; anything else stays.
fn split_string(value: Option<&mut Value>) {
    if let Some(value) = value {
        if let Value::String(text) = value {
            *value = Value::Array(lines_keeping_ends(text).into_iter().map(|line| Value::String(line.to_owned())).collect());
        }
    }
}

/// Python's `str.splitlines(True)`: lines end at `\n`, `\r`, `\r\n`, `\v`, `\f`, `\x1c`,
/// `\x1d`, `\x1e`, `\x85`, `\u2028` and `\u2029`, each kept with its line; no empty last line.
fn lines_keeping_ends(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let end = match c {
            '\r' => match chars.peek() {
                Some(&(next, '\n')) => {
                    chars.next();
                    next + 1
                }
                _ => at + 1,
            },
            '\n' | '\u{0b}' | '\u{0c}' | '\u{1c}' | '\u{1d}' | '\u{1e}' | '\u{85}' | '\u{2028}' | '\u{2029}' => at + c.len_utf8(),
            _ => continue,
        };
        lines.push(&text[start..end]);
        start = end;
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// `nbformat.v4.rwbase.strip_transient`.
fn strip_transient(document: &mut Value) {
    if let Some(metadata) = document.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in ["orig_nbformat", "orig_nbformat_minor", "signature"] {
            metadata.remove(key);
        }
    }
    let Some(cells) = document.get_mut("cells").and_then(Value::as_array_mut) else { return };
    for cell in cells {
        if let Some(metadata) = cell.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("trusted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_split_where_python_splits_them() {
        assert_eq!(lines_keeping_ends(""), Vec::<&str>::new());
        assert_eq!(lines_keeping_ends("a\nb"), ["a\n", "b"]);
        assert_eq!(lines_keeping_ends("0%\r50%\r100%\n"), ["0%\r", "50%\r", "100%\n"]);
        assert_eq!(lines_keeping_ends("x\r\ny\u{2028}z\u{85}"), ["x\r\n", "y\u{2028}", "z\u{85}"]);
        assert_eq!(lines_keeping_ends("\n\n"), ["\n", "\n"]);
    }

    #[test]
    fn the_file_is_laid_out_as_nbformat_writes_it() {
        let document = json!({
            "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"signature": "x", "zeta": 1, "alpha": "é"},
            "cells": [{
                "cell_type": "code", "id": "a", "execution_count": 1, "source": "a = 1\nb = 2",
                "metadata": {"trusted": true, "scrolled": "auto"},
                "outputs": [
                    {"output_type": "stream", "name": "stdout", "text": "one\ntwo\n"},
                    {"output_type": "display_data", "metadata": {}, "data": {
                        "text/plain": "x\ny", "application/json": {"k": "v\nw"}, "application/vnd.custom+json": "s\nt",
                        "image/png": "iVBOR\nw0", "image/svg+xml": "<svg>\n</svg>"}},
                ],
            }],
        });
        let text = file_text(&document).unwrap();
        let expected = "{\n \"cells\": [\n  {\n   \"cell_type\": \"code\",\n   \"execution_count\": 1,\n   \"id\": \"a\",\n   \"metadata\": {\n    \"scrolled\": \"auto\"\n   },\n   \"outputs\": [\n    {\n     \"name\": \"stdout\",\n     \"output_type\": \"stream\",\n     \"text\": [\n      \"one\\n\",\n      \"two\\n\"\n     ]\n    },\n    {\n     \"data\": {\n      \"application/json\": {\n       \"k\": \"v\\nw\"\n      },\n      \"application/vnd.custom+json\": \"s\\nt\",\n      \"image/png\": \"iVBOR\\nw0\",\n      \"image/svg+xml\": [\n       \"<svg>\\n\",\n       \"</svg>\"\n      ],\n      \"text/plain\": [\n       \"x\\n\",\n       \"y\"\n      ]\n     },\n     \"metadata\": {},\n     \"output_type\": \"display_data\"\n    }\n   ],\n   \"source\": [\n    \"a = 1\\n\",\n    \"b = 2\"\n   ]\n  }\n ],\n \"metadata\": {\n  \"alpha\": \"é\",\n  \"zeta\": 1\n },\n \"nbformat\": 4,\n \"nbformat_minor\": 5\n}\n";
        assert_eq!(text, expected);
    }
}
