//! One notebook of `parakernel run`: its code cells as requests, and the outputs written back as
//! nbclient writes them (streams merged, display updates applied, `clear_output` honoured,
//! `metadata.execution` timestamps from the kernel's message dates).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::wire::Message;

/// The display type `parakernel.record` writes (scrapbook's).
pub const RECORD_MIME: &str = "application/scrapbook.scrap.json+json";

/// The largest notebook file run: as large as the kernel's largest message (512 MiB) twice.
const MAX_NOTEBOOK: u64 = 1 << 30;

/// Why a notebook cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum NotebookError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path} is not a notebook: {reason}")]
    Invalid { path: String, reason: String },
    #[error("cannot write {path}: {error}")]
    Write { path: String, error: std::io::Error },
}

/// What became of a notebook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// A cell raised (its `ename: evalue`).
    Failed(String),
    /// A cell ran longer than `--timeout`.
    TimedOut(String),
    /// Ctrl-C: its running cell was interrupted, what ran is written.
    Interrupted,
    /// Ctrl-C came before it started.
    NotRun,
}

/// A notebook being run: its JSON (kept whole: what parakernel does not touch is written back
/// as it was read) and the state of each code cell.
#[derive(Debug)]
pub struct Notebook {
    pub path: PathBuf,
    pub output: PathBuf,
    /// The client session its requests carry: the kernel gives it a lane of its own.
    pub session: String,
    pub on_main: bool,
    /// Its parameters, `name=value,...` (empty: none).
    pub label: String,
    document: Value,
    /// Indexes of the code cells in `document["cells"]`.
    code_cells: Vec<usize>,
    cells: Vec<CellRun>,
    /// `display_id` -> (cell, output index) of the outputs an update replaces.
    displays: HashMap<String, Vec<(usize, usize)>>,
    pub status: Status,
}

#[derive(Debug, Default)]
struct CellRun {
    outputs: Vec<Value>,
    execution_count: Option<u64>,
    timing: Map<String, Value>,
    /// `clear_output(wait=True)`: clear at the next output.
    clear_pending: bool,
    replied: bool,
    idle: bool,
    /// Replied, and not `aborted`: the cell ran.
    ran: bool,
}

impl Notebook {
    /// Reads `path`; `output` is where it will be written.
    pub fn read(path: &Path, output: PathBuf, session: String, force_main: bool) -> Result<Notebook, NotebookError> {
        let shown = path.display().to_string();
        let text = super::read_capped(path, MAX_NOTEBOOK, "clear its outputs to make it smaller: jupyter nbconvert --clear-output --inplace NOTEBOOK").map_err(|source| NotebookError::Read { path: shown.clone(), error: source })?;
        let document: Value = serde_json::from_str(&text).map_err(|error| NotebookError::Invalid { path: shown.clone(), reason: error.to_string() })?;
        let invalid = |reason: &str| NotebookError::Invalid { path: shown.clone(), reason: reason.to_owned() };
        if document.get("nbformat").and_then(Value::as_u64) != Some(4) {
            return Err(invalid("only nbformat 4 notebooks can be run (open and save it in JupyterLab to upgrade it)"));
        }
        let cells = document.get("cells").and_then(Value::as_array).ok_or_else(|| invalid("it has no \"cells\" list"))?;
        if let Some(reason) = structure_error(&document, cells) {
            return Err(invalid(&reason));
        }
        let code_cells: Vec<usize> = cells.iter().enumerate().filter(|(_, cell)| cell["cell_type"] == "code").map(|(index, _)| index).collect();
        let on_main = force_main || document["metadata"]["parakernel"]["lane"] == "main";
        let runs = code_cells.iter().map(|_| CellRun::default()).collect();
        Ok(Notebook { path: path.to_owned(), output, session, on_main, label: String::new(), document, code_cells, cells: runs, displays: HashMap::new(), status: Status::Ok })
    }

    /// Papermill's way: a code cell tagged `injected-parameters` with `parameters` after the
    /// cell tagged `parameters` (first when there is none; an injected cell of an earlier run is
    /// replaced).
    pub fn inject(&mut self, parameters: &super::params::Parameters) {
        if parameters.is_empty() {
            return;
        }
        let tagged = |cell: &Value, tag: &str| cell["metadata"]["tags"].as_array().is_some_and(|tags| tags.iter().any(|t| t == tag));
        let mut source = String::from("# Parameters\n");
        for (name, value) in parameters {
            source.push_str(&format!("{name} = {}\n", super::params::python_literal(value)));
        }
        let mut cell = json!({
            "cell_type": "code", "execution_count": null,
            "metadata": {"tags": ["injected-parameters"]}, "outputs": [], "source": source,
        });
        // Cell ids exist from nbformat 4.5 on; an older notebook with one would not validate.
        if self.document["nbformat_minor"].as_u64().is_some_and(|minor| minor >= 5) {
            cell["id"] = json!("injected-parameters");
        }
        let Some(cells) = self.document["cells"].as_array_mut() else { return };
        cells.retain(|cell| !tagged(cell, "injected-parameters"));
        let at = cells.iter().position(|cell| tagged(cell, "parameters")).map_or(0, |index| index + 1);
        cells.insert(at, cell);
        self.code_cells = cells.iter().enumerate().filter(|(_, cell)| cell["cell_type"] == "code").map(|(index, _)| index).collect();
        self.cells = self.code_cells.iter().map(|_| CellRun::default()).collect();
    }

    /// What the notebook recorded with `parakernel.record(name, value)` (scrapbook's format, so
    /// scrapbook reads them too), the last value of each name.
    pub fn records(&self) -> Vec<(String, Value)> {
        let mut found: Vec<(String, Value)> = Vec::new();
        for cell in &self.document["cells"].as_array().cloned().unwrap_or_default() {
            for output in cell["outputs"].as_array().into_iter().flatten() {
                let scrap = &output["data"][RECORD_MIME];
                if let Some(name) = scrap["name"].as_str() {
                    found.retain(|(known, _)| known != name);
                    found.push((name.to_owned(), scrap["data"].clone()));
                }
            }
        }
        found
    }

    pub fn name(&self) -> String {
        self.path.file_name().map_or_else(|| self.path.display().to_string(), |name| name.to_string_lossy().into_owned())
    }

    pub fn code_cell_count(&self) -> usize {
        self.code_cells.len()
    }

    /// Whether a code cell has started (its `execute_input` came).
    pub fn started(&self) -> bool {
        self.cells.iter().any(|cell| cell.timing.contains_key("iopub.execute_input"))
    }

    /// How many code cells ran to their end (an aborted cell did not run).
    pub fn cells_done(&self) -> usize {
        self.cells.iter().filter(|cell| cell.ran && cell.idle).count()
    }

    pub fn finished(&self) -> bool {
        self.cells.iter().all(|cell| cell.replied && cell.idle)
    }

    /// The `index`th code cell's source, as one string.
    pub fn source(&self, index: usize) -> String {
        match &self.document["cells"][self.code_cells[index]]["source"] {
            Value::String(text) => text.clone(),
            Value::Array(lines) => lines.iter().filter_map(Value::as_str).collect(),
            _ => String::new(),
        }
    }

    /// The `index`th code cell's execute_request content and metadata, as JupyterLab's Run All
    /// sends it: the cell's tags in the metadata (a main-lane notebook's untagged cells are
    /// tagged `lane:main`), `stop_on_error` unless errors are allowed.
    pub fn request(&self, index: usize, allow_errors: bool) -> (Value, Map<String, Value>) {
        let cell = &self.document["cells"][self.code_cells[index]];
        let mut tags: Vec<Value> = cell["metadata"]["tags"].as_array().cloned().unwrap_or_default();
        let tagged = tags.iter().filter_map(Value::as_str).any(|tag| tag.starts_with("lane:") || tag.starts_with("lane=") || tag == "parallel");
        if self.on_main && !tagged {
            tags.push(json!("lane:main"));
        }
        let raises = tags.iter().any(|tag| tag == "raises-exception");
        let content = json!({
            "code": self.source(index), "silent": false, "store_history": true,
            "user_expressions": {}, "allow_stdin": false, "stop_on_error": !allow_errors && !raises,
        });
        let mut metadata = Map::new();
        metadata.insert("tags".into(), Value::Array(tags));
        metadata.insert("cellId".into(), cell.get("id").cloned().unwrap_or(Value::Null));
        (content, metadata)
    }

    /// Takes one message the kernel sent for the `index`th code cell. Returns whether the cell
    /// has now run to its end (reply and idle both in).
    pub fn take(&mut self, index: usize, message: &Message, allow_errors: bool) -> bool {
        let date = Value::String(message.header.date.clone());
        let content = &message.content;
        let cell = &mut self.cells[index];
        match message.msg_type() {
            "status" => match content["execution_state"].as_str() {
                Some("busy") => {
                    // The first: the kernel says busy again for a cell still running whenever
                    // another request ends (its indicator reads busy until the last is done).
                    cell.timing.entry("iopub.status.busy").or_insert(date);
                }
                Some("idle") => {
                    cell.timing.insert("iopub.status.idle".into(), date);
                    cell.idle = true;
                }
                _ => {}
            },
            "execute_input" => {
                cell.timing.insert("iopub.execute_input".into(), date);
                cell.execution_count = content["execution_count"].as_u64();
            }
            "execute_reply" => {
                cell.timing.insert("shell.execute_reply".into(), date);
                // A cell answered `aborted` never ran: nbclient leaves its count empty.
                if content["status"] == "aborted" {
                    cell.execution_count = None;
                    if self.status == Status::Ok {
                        // Not behind an error of its own notebook: its lane was stopped or
                        // restarted (`%lane stop`, a --timeout that interrupts could not end).
                        self.status = Status::Failed(format!("cell {} did not run: the kernel aborted it (its lane was stopped or restarted)", index + 1));
                    }
                } else if let Some(count) = content["execution_count"].as_u64() {
                    cell.execution_count.get_or_insert(count);
                }
                cell.replied = true;
                cell.ran = content["status"] != "aborted";
                if content["status"] == "error" && !allow_errors && self.status == Status::Ok {
                    let (ename, evalue) = (content["ename"].as_str().unwrap_or("Error"), content["evalue"].as_str().unwrap_or(""));
                    let mut error = format!("{ename}: {}", evalue.lines().next().unwrap_or(""));
                    if ename == "ImportError" && evalue.contains("main lane") {
                        // A module lanes refuse: the whole notebook can run on the main lane.
                        let name = self.name();
                        error.push_str(&format!(
                            "; run the notebook on the main lane: parakernel run --main {name}, or give it the metadata \"parakernel\": {{\"lane\": \"main\"}}"
                        ));
                    }
                    self.status = Status::Failed(error);
                }
            }
            "stream" => {
                let (name, text) = (content["name"].as_str().unwrap_or("stdout"), content["text"].as_str().unwrap_or(""));
                Self::clear_if_pending(cell);
                match cell.outputs.last_mut() {
                    Some(last) if last["output_type"] == "stream" && last["name"] == name => {
                        let joined = format!("{}{text}", last["text"].as_str().unwrap_or(""));
                        last["text"] = Value::String(joined);
                    }
                    _ => cell.outputs.push(json!({"output_type": "stream", "name": name, "text": text})),
                }
            }
            "display_data" | "execute_result" | "error" => {
                Self::clear_if_pending(cell);
                let mut output = content.clone();
                let display_id = output.get("transient").and_then(|t| t["display_id"].as_str()).map(str::to_owned);
                if let Some(map) = output.as_object_mut() {
                    map.remove("transient");
                    map.insert("output_type".into(), json!(message.msg_type()));
                }
                if let Some(id) = display_id {
                    self.displays.entry(id).or_default().push((index, cell.outputs.len()));
                }
                cell.outputs.push(output);
            }
            "update_display_data" => {
                if let Some(id) = content["transient"]["display_id"].as_str() {
                    for &(at, output) in self.displays.get(id).into_iter().flatten() {
                        if let Some(target) = self.cells[at].outputs.get_mut(output) {
                            target["data"] = content["data"].clone();
                            target["metadata"] = content["metadata"].clone();
                        }
                    }
                }
            }
            "clear_output" => {
                if content["wait"].as_bool() == Some(true) {
                    cell.clear_pending = true;
                } else {
                    cell.outputs.clear();
                    self.displays.values_mut().for_each(|places| places.retain(|(at, _)| *at != index));
                }
            }
            _ => {}
        }
        let cell = &self.cells[index];
        cell.replied && cell.idle
    }

    fn clear_if_pending(cell: &mut CellRun) {
        if std::mem::take(&mut cell.clear_pending) {
            cell.outputs.clear();
        }
    }

    /// A cell stopped by `--timeout`: an error output as nbclient's `CellTimeoutError` reads.
    pub fn timed_out(&mut self, index: usize, seconds: f64) {
        let message = format!("A cell timed out while it was being executed, after {seconds} seconds (--timeout); it was interrupted");
        self.cells[index].outputs.push(json!({
            "output_type": "error", "ename": "CellTimeoutError", "evalue": message, "traceback": [format!("CellTimeoutError: {message}")],
        }));
        if !matches!(self.status, Status::TimedOut(_)) {
            self.status = Status::TimedOut(format!("cell {} ran longer than {seconds} s", index + 1));
        }
    }

    /// Writes the notebook with every code cell's outputs, count and timing (cells that did not
    /// run are written without outputs and without a count, as nbclient leaves them).
    pub fn write(&mut self) -> Result<(), NotebookError> {
        for (index, &at) in self.code_cells.iter().enumerate() {
            let run = std::mem::take(&mut self.cells[index]);
            let cell = &mut self.document["cells"][at];
            cell["outputs"] = Value::Array(run.outputs);
            cell["execution_count"] = run.execution_count.map_or(Value::Null, Value::from);
            if !run.timing.is_empty() {
                if !cell["metadata"].is_object() {
                    cell["metadata"] = json!({});
                }
                cell["metadata"]["execution"] = Value::Object(run.timing);
            }
            self.cells[index] = CellRun { replied: run.replied, idle: run.idle, ran: run.ran, ..CellRun::default() };
        }
        let shown = self.output.display().to_string();
        let text = super::layout::file_text(&self.document).map_err(|error| NotebookError::Invalid { path: shown.clone(), reason: error.to_string() })?;
        // Written beside the file, then renamed over it: a run killed while writing (or a full
        // disk) never leaves a truncated notebook, `--inplace` included.
        let name = self.output.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        let partial = self.output.with_file_name(format!(".{name}.parakernel-{}.tmp", std::process::id()));
        let written = std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, &self.output));
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        written.map_err(|source| NotebookError::Write { path: shown, error: source })
    }
}

/// What makes `document` (with these `cells`) not an nbformat 4 notebook that can be run and
/// written back valid, if anything: the parts parakernel reads or writes must have their types.
fn structure_error(document: &Value, cells: &[Value]) -> Option<String> {
    if !document.get("metadata").is_some_and(Value::is_object) {
        return Some("its \"metadata\" is missing or not a mapping".into());
    }
    let text = |value: &Value| value.is_string() || value.as_array().is_some_and(|lines| lines.iter().all(Value::is_string));
    for (index, cell) in cells.iter().enumerate() {
        let number = index + 1;
        let Some(kind) = cell.get("cell_type").and_then(Value::as_str) else {
            return Some(format!("cell {number} is not a cell (a mapping with a \"cell_type\")"));
        };
        if !["code", "markdown", "raw"].contains(&kind) {
            return Some(format!("cell {number} has the unknown cell_type {kind:?} (code, markdown or raw)"));
        }
        if !cell.get("source").is_some_and(text) {
            return Some(format!("cell {number}'s \"source\" is not text (a string or a list of strings)"));
        }
        let metadata = cell.get("metadata");
        if !metadata.is_none_or(Value::is_object) {
            return Some(format!("cell {number}'s \"metadata\" is not a mapping"));
        }
        let tags = metadata.and_then(|metadata| metadata.get("tags"));
        if !tags.is_none_or(|tags| tags.as_array().is_some_and(|tags| tags.iter().all(Value::is_string))) {
            return Some(format!("cell {number}'s tags are not a list of strings"));
        }
    }
    None
}
