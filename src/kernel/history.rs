//! The kernel-wide input history (one record in request order), answering `history_request`.
//! Lane shells keep no history of their own.

use serde_json::{json, Value};

use crate::lanes::CellCode;
use crate::wire::{HistoryAccess, HistoryRequest};

/// The session number this kernel's entries carry (IPython numbers sessions from 1).
const SESSION: i64 = 1;

#[derive(Debug)]
struct Entry {
    line: u64,
    /// Shared with the cell's job and echo: the history holds no copy of its own.
    input: CellCode,
    output: Option<String>,
}

#[derive(Debug, Default)]
pub struct History {
    entries: Vec<Entry>,
}

impl History {
    pub fn record(&mut self, line: u64, input: CellCode) {
        self.entries.push(Entry { line, input, output: None });
    }

    /// Keeps the `text/plain` result of line `line` for `output=True` requests.
    pub fn record_output(&mut self, line: u64, output: &str) {
        if let Some(entry) = self.entries.iter_mut().rev().find(|entry| entry.line == line) {
            entry.output = Some(output.to_owned());
        }
    }

    /// The `history_reply` content.
    pub fn reply(&self, request: &HistoryRequest) -> Value {
        let chosen: Vec<&Entry> = match request.hist_access_type {
            HistoryAccess::Tail => last(self.entries.iter().collect(), request.n),
            HistoryAccess::Range => {
                let current = matches!(request.session, None | Some(0) | Some(SESSION));
                let start = request.start.unwrap_or(1);
                let stop = request.stop.filter(|stop| *stop > 0);
                self.entries
                    .iter()
                    .filter(|_| current)
                    .filter(|e| line_i64(e.line) >= start && stop.is_none_or(|stop| line_i64(e.line) < stop))
                    .collect()
            }
            HistoryAccess::Search => {
                let pattern = request.pattern.as_deref().unwrap_or("*");
                let mut found: Vec<&Entry> =
                    self.entries.iter().filter(|e| glob_match(pattern, &e.input)).collect();
                if request.unique {
                    let mut seen = std::collections::HashSet::new();
                    found.reverse();
                    found.retain(|e| seen.insert(e.input.as_str()));
                    found.reverse();
                }
                last(found, request.n)
            }
        };
        let history: Vec<Value> = chosen
            .into_iter()
            .map(|e| {
                if request.output {
                    json!([SESSION, e.line, [e.input.as_str(), e.output]])
                } else {
                    json!([SESSION, e.line, e.input.as_str()])
                }
            })
            .collect();
        json!({"status": "ok", "history": history})
    }
}

fn line_i64(line: u64) -> i64 {
    i64::try_from(line).unwrap_or(i64::MAX)
}

fn last(mut entries: Vec<&Entry>, n: Option<usize>) -> Vec<&Entry> {
    if let Some(n) = n {
        let skip = entries.len().saturating_sub(n);
        entries.drain(..skip);
    }
    entries
}

/// SQLite GLOB semantics as IPython's history search uses them: `*` and `?`, case-sensitive.
fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(value: Value) -> HistoryRequest {
        serde_json::from_value(value).unwrap()
    }

    fn filled() -> History {
        let mut history = History::default();
        for (line, input) in [(1, "a = 1"), (2, "print(a)"), (3, "a = 1"), (4, "b = 2")] {
            history.record(line, input.into());
        }
        history.record_output(2, "1");
        history
    }

    #[test]
    fn tail_gives_the_last_n() {
        let reply = filled().reply(&request(json!({"hist_access_type": "tail", "n": 2})));
        assert_eq!(reply["history"], json!([[1, 3, "a = 1"], [1, 4, "b = 2"]]));
    }

    #[test]
    fn range_stops_before_stop_and_can_include_output() {
        let reply = filled().reply(&request(
            json!({"hist_access_type": "range", "session": 0, "start": 2, "stop": 4, "output": true}),
        ));
        assert_eq!(reply["history"], json!([[1, 2, ["print(a)", "1"]], [1, 3, ["a = 1", null]]]));
        let other_session = filled().reply(&request(json!({"hist_access_type": "range", "session": 7})));
        assert_eq!(other_session["history"], json!([]));
    }

    #[test]
    fn search_globs_and_can_be_unique() {
        let all = filled().reply(&request(json!({"hist_access_type": "search", "pattern": "a*"})));
        assert_eq!(all["history"], json!([[1, 1, "a = 1"], [1, 3, "a = 1"]]));
        let unique = filled()
            .reply(&request(json!({"hist_access_type": "search", "pattern": "*", "unique": true})));
        assert_eq!(unique["history"], json!([[1, 2, "print(a)"], [1, 3, "a = 1"], [1, 4, "b = 2"]]));
    }

    #[test]
    fn glob_rules() {
        assert!(glob_match("pr?nt*", "print(a)"));
        assert!(glob_match("*a*", "xay"));
        assert!(!glob_match("a*", "ba"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "x"));
    }
}
