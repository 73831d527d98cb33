//! Notebook parameters as papermill gives them (`-p NAME VALUE`, `-f params.yaml|json`) and
//! `--grid NAME=V1,V2` sweeps: values typed as papermill types them, written into a cell tagged
//! `injected-parameters` as Python literals.

use serde_json::{Map, Value};

/// One run's parameters, in the order given.
pub type Parameters = Vec<(String, Value)>;

#[derive(Debug, thiserror::Error)]
pub enum ParameterError {
    #[error("cannot read the parameters file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("the parameters file {path} is not a mapping of names to values in YAML or JSON: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{0:?} is not a Python variable name (a keyword, or not an identifier)")]
    BadName(String),
    #[error("--grid takes NAME=V1,V2,... (e.g. --grid lr=0.01,0.1), not {0:?}")]
    BadGrid(String),
}

/// A command-line value typed as papermill types `-p` values: an int, a float, `True` /
/// `False`, `None`, else the text itself.
pub fn typed(text: &str) -> Value {
    if let Ok(int) = text.parse::<i64>() {
        return Value::from(int);
    }
    if let Ok(float) = text.parse::<f64>() {
        if float.is_finite() {
            return Value::from(float);
        }
    }
    match text {
        "True" => Value::Bool(true),
        "False" => Value::Bool(false),
        "None" => Value::Null,
        _ => Value::String(text.to_owned()),
    }
}

fn checked(name: &str) -> Result<String, ParameterError> {
    if crate::kernel::routing::identifier(name) { Ok(name.to_owned()) } else { Err(ParameterError::BadName(name.to_owned())) }
}

/// `-p NAME VALUE` pairs (clap gives them flat).
pub fn from_pairs(flat: &[String]) -> Result<Parameters, ParameterError> {
    flat.chunks(2).filter(|pair| pair.len() == 2).map(|pair| Ok((checked(&pair[0])?, typed(&pair[1])))).collect()
}

/// The largest parameters file read (a mapping of names to values, not data).
const MAX_PARAMETERS_FILE: u64 = 16 << 20;

/// A YAML (or JSON, which is YAML) file mapping names to values.
pub fn from_file(path: &std::path::Path) -> Result<Parameters, ParameterError> {
    let shown = path.display().to_string();
    let text = super::read_capped(path, MAX_PARAMETERS_FILE, "it should map parameter names to values").map_err(|source| ParameterError::Read { path: shown.clone(), error: source })?;
    let value: Value = serde_norway::from_str(&text).map_err(|error| ParameterError::Invalid { path: shown.clone(), reason: error.to_string() })?;
    let Value::Object(map) = value else {
        return Err(ParameterError::Invalid { path: shown, reason: "the top level is not a mapping".into() });
    };
    map.into_iter().map(|(name, value)| Ok((checked(&name)?, value))).collect()
}

/// The runs of a `--grid` sweep: every combination of the values given, the first name
/// varying slowest. No `--grid`: one run with no parameters.
pub fn grid(specs: &[String]) -> Result<Vec<Parameters>, ParameterError> {
    let mut runs: Vec<Parameters> = vec![Vec::new()];
    for spec in specs {
        let (name, values) = spec.split_once('=').ok_or_else(|| ParameterError::BadGrid(spec.clone()))?;
        let name = checked(name.trim())?;
        let values: Vec<Value> = values.split(',').map(str::trim).filter(|value| !value.is_empty()).map(typed).collect();
        if values.is_empty() {
            return Err(ParameterError::BadGrid(spec.clone()));
        }
        let mut next_runs = Vec::with_capacity(runs.len() * values.len());
        for run in &runs {
            for value in &values {
                let mut next = run.clone();
                next.push((name.clone(), value.clone()));
                next_runs.push(next);
            }
        }
        runs = next_runs;
    }
    Ok(runs)
}

/// `value` as a Python literal.
pub fn python_literal(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        // A JSON string or number is a Python literal of the same value.
        Value::Number(_) | Value::String(_) => value.to_string(),
        Value::Array(items) => format!("[{}]", items.iter().map(python_literal).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => format!("{{{}}}", literal_items(map)),
    }
}

fn literal_items(map: &Map<String, Value>) -> String {
    map.iter().map(|(key, value)| format!("{}: {}", Value::String(key.clone()), python_literal(value))).collect::<Vec<_>>().join(", ")
}

/// `name=value,...` as a run is labelled (file names, the summary).
pub fn label(parameters: &Parameters) -> String {
    parameters
        .iter()
        .map(|(name, value)| match value {
            Value::String(text) => format!("{name}={text}"),
            other => format!("{name}={}", python_literal(other)),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_typed_as_papermill_types_them() {
        assert_eq!(typed("3"), json!(3));
        assert_eq!(typed("0.1"), json!(0.1));
        assert_eq!(typed("True"), json!(true));
        assert_eq!(typed("None"), Value::Null);
        assert_eq!(typed("adam"), json!("adam"));
        assert_eq!(typed("nan"), json!("nan"));
    }

    #[test]
    fn a_grid_is_every_combination() {
        let runs = grid(&["lr=0.01,0.1,0.3".into(), "seed=1,2".into()]).unwrap();
        assert_eq!(runs.len(), 6);
        assert_eq!(label(&runs[0]), "lr=0.01,seed=1");
        assert_eq!(label(&runs[5]), "lr=0.3,seed=2");
        assert!(grid(&["lr".into()]).is_err() && grid(&["lr=".into()]).is_err() && grid(&["2x=1".into()]).is_err());
        assert!(grid(&["class=1".into()]).is_err() && from_pairs(&["None".into(), "1".into()]).is_err(), "keywords cannot be assigned");
        assert_eq!(grid(&[]).unwrap(), vec![Vec::new()]);
    }

    #[test]
    fn a_parameters_file_is_read_up_to_its_cap_without_a_byte_order_mark() {
        let directory = std::env::temp_dir().join(format!("parakernel-params-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let small = directory.join("small.yaml");
        std::fs::write(&small, "\u{feff}lr: 0.1\n").unwrap();
        assert_eq!(from_file(&small).unwrap(), vec![("lr".to_owned(), json!(0.1))]);
        let large = directory.join("large.yaml");
        std::fs::write(&large, "x".repeat(MAX_PARAMETERS_FILE as usize + 1)).unwrap();
        let error = from_file(&large).unwrap_err().to_string();
        assert!(error.contains("larger than 16 MiB"), "{error}");
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn literals_are_python() {
        let value = json!({"a": [1, 2.5, "x\"y", null, true], "b": {"c": false}});
        assert_eq!(python_literal(&value), r#"{"a": [1, 2.5, "x\"y", None, True], "b": {"c": False}}"#);
    }
}
