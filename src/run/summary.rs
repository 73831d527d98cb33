//! How a run ended: each notebook's outcome, the summary table printed at the end, and the
//! process's exit code.

use std::path::PathBuf;
use std::time::Instant;

use super::{ctrl_c, params, Notebook, Status};

/// How one notebook ended, for the summary.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    /// `name=value,...` of the run's parameters.
    pub parameters: String,
    /// What the notebook recorded (`parakernel.record`).
    pub records: Vec<(String, serde_json::Value)>,
    pub status: Status,
    pub cells_done: usize,
    pub cells: usize,
    pub seconds: f64,
    pub output: PathBuf,
}

pub(super) fn outcome_of(notebook: &Notebook, started: Option<&Instant>) -> Outcome {
    Outcome {
        name: notebook.name(),
        parameters: notebook.label.clone(),
        records: notebook.records(),
        status: notebook.status.clone(),
        cells_done: notebook.cells_done(),
        cells: notebook.code_cell_count(),
        seconds: started.map_or(0.0, |at| at.elapsed().as_secs_f64()),
        output: notebook.output.clone(),
    }
}

/// The process's exit code for these outcomes: 143 after a SIGTERM and 130 after Ctrl-C (as a
/// shell reports those signals), 1 when a notebook failed or timed out, else 0.
pub fn exit_code(outcomes: &[Outcome]) -> i32 {
    if ctrl_c::terminated() {
        143
    } else if outcomes.iter().any(|o| matches!(o.status, Status::Interrupted | Status::NotRun)) {
        130
    } else if outcomes.iter().any(|o| o.status != Status::Ok) {
        1
    } else {
        0
    }
}

pub(super) fn describe(status: &Status) -> String {
    match status {
        Status::Ok => "ok".to_owned(),
        Status::Failed(error) => format!("failed ({error})"),
        Status::TimedOut(what) => format!("timed out ({what})"),
        Status::Interrupted => format!("interrupted ({})", signal_name()),
        Status::NotRun => format!("not run ({} came first)", signal_name()),
    }
}

/// What stopped the run: a SIGTERM, else Ctrl-C.
fn signal_name() -> &'static str {
    if ctrl_c::terminated() { "SIGTERM" } else { "Ctrl-C" }
}

/// A table cell's text, cut to [`SUMMARY_CELL`] characters.
fn clip(text: &str) -> String {
    if text.chars().count() <= SUMMARY_CELL {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(SUMMARY_CELL - 1).collect();
    clipped.push('…');
    clipped
}

/// The widest a summary cell's parameters or records are shown (the file has them whole).
const SUMMARY_CELL: usize = 80;

/// The table printed at the end: notebook, status, cells, time, output file.
pub fn summary(outcomes: &[Outcome]) -> String {
    let with_parameters = outcomes.iter().any(|o| !o.parameters.is_empty());
    let with_records = outcomes.iter().any(|o| !o.records.is_empty());
    let mut titles = vec!["notebook"];
    if with_parameters {
        titles.push("parameters");
    }
    titles.extend(["status", "cells", "time"]);
    if with_records {
        titles.push("recorded");
    }
    titles.push("output");
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let status = match &o.status {
                Status::Ok => "ok",
                Status::Failed(_) => "failed",
                Status::TimedOut(_) => "timed out",
                Status::Interrupted => "interrupted",
                Status::NotRun => "not run",
            };
            let mut row = vec![clip(&o.name)];
            if with_parameters {
                row.push(clip(&o.parameters));
            }
            row.extend([status.to_owned(), format!("{}/{}", o.cells_done, o.cells), format!("{:.1} s", o.seconds)]);
            if with_records {
                let shown: Vec<String> = o.records.iter().map(|(name, value)| format!("{name}={}", params::python_literal(value))).collect();
                row.push(clip(&shown.join(", ")));
            }
            // A notebook that never started is not written.
            row.push(if o.status == Status::NotRun { "-".to_owned() } else { o.output.display().to_string() });
            row
        })
        .collect();
    let widths: Vec<usize> = (0..titles.len()).map(|i| rows.iter().map(|row| row[i].chars().count()).chain([titles[i].len()]).max().unwrap_or(0)).collect();
    let line = |cells: &[String]| cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned();
    let mut text = line(&titles.iter().map(|title| (*title).to_owned()).collect::<Vec<_>>());
    text.push('\n');
    text.push_str(&line(&widths.iter().map(|width| "-".repeat(*width)).collect::<Vec<_>>()));
    for row in &rows {
        text.push('\n');
        text.push_str(&line(row));
    }
    for outcome in outcomes {
        if outcome.status != Status::Ok {
            text.push_str(&format!("\n{}: {}", outcome.name, describe(&outcome.status)));
        }
    }
    text
}

