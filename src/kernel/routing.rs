//! How a cell finds its lane (DESIGN.md): the cell's first line (`%%lane NAME`, `%%lane main`,
//! `%%lane --fresh`, `%%parallel`), else its tags (`lane:NAME`, `lane=NAME`, `parallel`), else
//! the main lane. A bad name or option is an error that says what is allowed.

/// Where a cell goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Main,
    /// No magic line and no lane tag: the default lane of the request's session (one lane per
    /// session), else the main lane.
    Default,
    Named(String),
    /// Any lane of the warm pool; it keeps nothing of the cell.
    Fresh,
}

/// A routed cell: where it runs, the names it moves (`--in` / `--out`) and its code without the
/// magic line (a suffix of the cell's code, borrowed: the kernel shares the cell's text with the
/// job instead of copying it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<'a> {
    pub route: Route,
    pub transfer: Transfer,
    pub code: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{0:?} is not a Python variable name (a keyword, or not an identifier): `--in` and `--out` take names separated by commas, e.g. %%lane fit --in data,lr --out model")]
    BadVariable(String),
    #[error("{0} needs names: e.g. %%lane fit --in data,lr --out model")]
    MissingVariables(&'static str),
    #[error("--in and --out copy values between the main lane and another lane; a cell that runs in the main lane has them already")]
    TransferInMain,
    #[error("{0:?} is not a lane name: use 1-64 letters, digits, '_' or '-' (e.g. %%lane sweep_1)")]
    BadName(String),
    #[error("{0:?} is the kernel's own name for one of its fresh lanes (`%%parallel` cells); choose another name, e.g. %%lane my-{0}")]
    Reserved(String),
    #[error("%%lane needs a lane: write `%%lane NAME`, `%%lane main` or `%%lane --fresh`")]
    MissingName,
    #[error("unknown option {0:?}: write `%%lane NAME`, `%%lane main`, `%%lane --fresh` or `%%parallel`")]
    UnknownOption(String),
    #[error("the cell's tags name two lanes ({0} and {1}); a cell runs in one lane: keep one `lane:NAME` or `parallel` tag")]
    ConflictingTags(String, String),
}

const MAX_NAME: usize = 64;

pub use crate::lanes::Transfer;

/// Whether `name` is a Python identifier (as `str.isidentifier`, for the letters Rust knows)
/// and not a keyword: a name a cell can assign.
pub fn identifier(name: &str) -> bool {
    const KEYWORDS: &[&str] = &[
        "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del", "elif", "else",
        "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise",
        "return", "try", "while", "with", "yield",
    ];
    if KEYWORDS.contains(&name) {
        return false;
    }
    let mut chars = name.chars();
    chars.next().is_some_and(|first| first == '_' || first.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
        && name.len() <= 256
}

/// Reads `--in a,b` / `--out c` options (repeatable) after the lane on the magic line.
fn transfer<'w>(words: impl Iterator<Item = &'w str>) -> Result<Transfer, RouteError> {
    let mut transfer = Transfer::default();
    let mut words = words.peekable();
    while let Some(option) = words.next() {
        let (names, option) = match option {
            "--in" => (&mut transfer.inputs, "--in"),
            "--out" => (&mut transfer.outputs, "--out"),
            other => return Err(RouteError::UnknownOption(other.to_owned())),
        };
        let list = words.next().filter(|list| !list.starts_with("--")).ok_or(RouteError::MissingVariables(option))?;
        if list.split(',').all(str::is_empty) {
            return Err(RouteError::MissingVariables(option));
        }
        for name in list.split(',').filter(|name| !name.is_empty()) {
            if !identifier(name) {
                return Err(RouteError::BadVariable(name.to_owned()));
            }
            if !names.iter().any(|known| known == name) {
                names.push(name.to_owned());
            }
        }
    }
    Ok(transfer)
}

/// Whether `name` can name a lane.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether `name` is how the kernel names its fresh lanes (`fresh-N`): a user's lane of that
/// name could not be told apart from them in `%lanes` or `%lane restart`.
pub fn reserved_name(name: &str) -> bool {
    name.strip_prefix("fresh-").is_some_and(|slot| !slot.is_empty() && slot.bytes().all(|b| b.is_ascii_digit()))
}

fn named(name: &str) -> Result<Route, RouteError> {
    if name == "main" {
        Ok(Route::Main)
    } else if reserved_name(name) {
        Err(RouteError::Reserved(name.to_owned()))
    } else if valid_name(name) {
        Ok(Route::Named(name.to_owned()))
    } else {
        Err(RouteError::BadName(name.to_owned()))
    }
}

/// Chooses the lane of a cell from its code and its tags (`metadata.tags`).
pub fn route<'a>(code: &'a str, tags: &[String]) -> Result<Routed<'a>, RouteError> {
    let (first, rest) = code.split_once('\n').unwrap_or((code, ""));
    let mut words = first.split_whitespace();
    let magic = match words.next() {
        Some("%%lane") => {
            let route = match words.next() {
                None => return Err(RouteError::MissingName),
                Some("--fresh") => Route::Fresh,
                Some(option) if option.starts_with('-') => return Err(RouteError::UnknownOption(option.to_owned())),
                Some(name) => named(name)?,
            };
            Some(route)
        }
        Some("%%parallel") => Some(Route::Fresh),
        _ => None,
    };
    if let Some(route) = magic {
        let transfer = transfer(words)?;
        if route == Route::Main && !transfer.is_empty() {
            return Err(RouteError::TransferInMain);
        }
        return Ok(Routed { route, transfer, code: rest });
    }
    let mut chosen: Option<(Route, &str)> = None;
    for tag in tags {
        let route = if tag == "parallel" {
            Route::Fresh
        } else if let Some(name) = tag.strip_prefix("lane:").or_else(|| tag.strip_prefix("lane=")) {
            named(name)?
        } else {
            continue;
        };
        match &chosen {
            Some((existing, first_tag)) if *existing != route => {
                return Err(RouteError::ConflictingTags((*first_tag).to_owned(), tag.clone()))
            }
            Some(_) => {}
            None => chosen = Some((route, tag)),
        }
    }
    let route = chosen.map_or(Route::Default, |(route, _)| route);
    Ok(Routed { route, transfer: Transfer::default(), code })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|tag| (*tag).to_owned()).collect()
    }

    #[test]
    fn the_first_line_wins_and_is_removed() {
        let routed = route("%%lane sweep-1\nx = 1\ny = 2", &tags(&["lane:other"])).unwrap();
        assert_eq!(routed.route, Route::Named("sweep-1".into()));
        assert_eq!(routed.code, "x = 1\ny = 2");
        assert_eq!(route("%%lane main\nx", &[]).unwrap(), Routed { route: Route::Main, transfer: Transfer::default(), code: "x" });
        assert_eq!(route("%%parallel\nx", &[]).unwrap().route, Route::Fresh);
        assert_eq!(route("%%lane --fresh\nx", &[]).unwrap().route, Route::Fresh);
        assert_eq!(route("%%lane  a  ", &[]).unwrap(), Routed { route: Route::Named("a".into()), transfer: Transfer::default(), code: "" });
        // The code is the cell's own text after the magic line, not a copy of it.
        let cell = "%%lane a\nx = 1";
        assert!(std::ptr::eq(route(cell, &[]).unwrap().code.as_ptr(), cell[9..].as_ptr()));
        assert!(std::ptr::eq(route(cell.get(9..).unwrap(), &[]).unwrap().code.as_ptr(), cell[9..].as_ptr()));
    }

    #[test]
    fn tags_route_when_there_is_no_magic() {
        assert_eq!(route("x", &tags(&["lane:a"])).unwrap().route, Route::Named("a".into()));
        assert_eq!(route("x", &tags(&["lane=b", "other"])).unwrap().route, Route::Named("b".into()));
        assert_eq!(route("x", &tags(&["parallel"])).unwrap().route, Route::Fresh);
        assert_eq!(route("x", &tags(&["lane:main"])).unwrap().route, Route::Main);
        assert_eq!(route("x", &tags(&["lane:a", "lane=a"])).unwrap().route, Route::Named("a".into()));
        let plain = route("%lanes\nx", &tags(&["unrelated"])).unwrap();
        assert_eq!(plain, Routed { route: Route::Default, transfer: Transfer::default(), code: "%lanes\nx" });
    }

    #[test]
    fn bad_names_and_options_say_what_is_allowed() {
        assert_eq!(route("%%lane\nx", &[]), Err(RouteError::MissingName));
        assert_eq!(route("%%lane a/b\nx", &[]), Err(RouteError::BadName("a/b".into())));
        assert_eq!(route("%%lane --fast\nx", &[]), Err(RouteError::UnknownOption("--fast".into())));
        assert_eq!(route("%%lane a b\nx", &[]), Err(RouteError::UnknownOption("b".into())));
        assert_eq!(route("%%parallel now\nx", &[]), Err(RouteError::UnknownOption("now".into())));
        assert_eq!(route("x", &tags(&["lane:"])), Err(RouteError::BadName(String::new())));
        let long = "x".repeat(65);
        assert_eq!(route(&format!("%%lane {long}\n"), &[]), Err(RouteError::BadName(long)));
        assert!(matches!(route("x", &tags(&["lane:a", "parallel"])), Err(RouteError::ConflictingTags(..))));
        assert!(RouteError::BadName("a/b".into()).to_string().contains("1-64 letters"));
    }

    #[test]
    fn in_and_out_name_the_values_that_move() {
        let routed = route("%%lane fit --in data,lr --out model --in data,seed\nx", &[]).unwrap();
        assert_eq!(routed.route, Route::Named("fit".into()));
        assert_eq!(routed.transfer.inputs, ["data", "lr", "seed"]);
        assert_eq!(routed.transfer.outputs, ["model"]);
        assert_eq!(routed.code, "x");
        let parallel = route("%%parallel --out total\nx", &[]).unwrap();
        assert_eq!((parallel.route, parallel.transfer.outputs), (Route::Fresh, vec!["total".to_owned()]));
        assert_eq!(route("%%lane --fresh --in a\nx", &[]).unwrap().transfer.inputs, ["a"]);
        assert_eq!(route("%%lane a --in\nx", &[]), Err(RouteError::MissingVariables("--in")));
        assert_eq!(route("%%lane a --out --in b\nx", &[]), Err(RouteError::MissingVariables("--out")));
        assert_eq!(route("%%lane a --in 1x\nx", &[]), Err(RouteError::BadVariable("1x".into())));
        assert_eq!(route("%%lane a --in a.b\nx", &[]), Err(RouteError::BadVariable("a.b".into())));
        assert_eq!(route("%%lane main --in a\nx", &[]), Err(RouteError::TransferInMain));
        assert_eq!(route("%%lane a --fast b\nx", &[]), Err(RouteError::UnknownOption("--fast".into())));
        assert!(route("%%lane a --in données\nx", &[]).is_ok());
        assert_eq!(route("%%lane a --in class\nx", &[]), Err(RouteError::BadVariable("class".into())));
        assert_eq!(route("%%lane a --in ,\nx", &[]), Err(RouteError::MissingVariables("--in")));
    }

    #[test]
    fn names() {
        assert!(valid_name("a"));
        assert!(valid_name(&"x".repeat(64)));
        assert!(valid_name("Sweep_2-b"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("é"));
        assert!(reserved_name("fresh-0") && reserved_name("fresh-12"));
        assert!(!reserved_name("fresh-") && !reserved_name("fresh-a") && !reserved_name("fresh"));
        let refused = route("%%lane fresh-0\nx", &[]).unwrap_err().to_string();
        assert!(refused.contains("fresh lanes") && refused.contains("my-fresh-0"), "{refused}");
        assert!(route("x", &tags(&["lane:fresh-1"])).is_err());
    }
}
