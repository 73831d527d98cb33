//! How a string that came from a peer (message type, identity, `msg_id`, session, lane name)
//! appears in a log line: quoted, escaped, and cut to a bounded length.

use std::fmt;

/// How many characters of a peer's string a log line shows.
pub const QUOTED_CHARS: usize = 64;

/// A peer's string as a log line shows it: in quotes with Rust's escapes (a newline in it cannot
/// fake a log line), cut after [`QUOTED_CHARS`] characters with an ellipsis and the original
/// length, as in `"aaaa…" (10240 bytes)`. Build it with [`quoted`]; log it with `%`.
#[derive(Clone, Copy)]
pub struct Quoted<'a> {
    text: &'a str,
    limit: usize,
}

/// `text` as a log line shows a string from a peer: see [`Quoted`].
pub fn quoted(text: &str) -> Quoted<'_> {
    Quoted { text, limit: QUOTED_CHARS }
}

impl Quoted<'_> {
    /// Shows up to `chars` characters (for one of our messages that quotes a peer's value).
    #[must_use]
    pub fn limit(self, chars: usize) -> Self {
        Quoted { limit: chars, ..self }
    }
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        let mut chars = self.text.chars();
        for c in chars.by_ref().take(self.limit) {
            write!(f, "{}", c.escape_debug())?;
        }
        if chars.next().is_some() {
            write!(f, "…\" ({} bytes)", self.text.len())
        } else {
            f.write_str("\"")
        }
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::{quoted, QUOTED_CHARS};

    #[test]
    fn a_long_string_is_cut_with_its_length() {
        let long = "x".repeat(10_240);
        let shown = quoted(&long).to_string();
        assert_eq!(shown, format!("\"{}…\" (10240 bytes)", "x".repeat(QUOTED_CHARS)));
        assert_eq!(quoted(&long).limit(3).to_string(), "\"xxx…\" (10240 bytes)");
    }

    #[test]
    fn a_short_string_is_quoted_whole_and_escaped() {
        assert_eq!(quoted("execute_request").to_string(), "\"execute_request\"");
        assert_eq!(quoted("a\"b\nc").to_string(), r#""a\"b\nc""#);
        let exact = "é".repeat(QUOTED_CHARS);
        assert_eq!(quoted(&exact).to_string(), format!("\"{exact}\""));
    }
}
