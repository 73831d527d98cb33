//! Everything read and checked before a run starts: the notebooks (once per run of a sweep,
//! parameters injected), where each is written, and the files' sizes.

use std::path::{Path, PathBuf};

use super::{params, Notebook, NotebookError, RunArgs};

/// Where a notebook's outputs go; a sweep's runs carry their parameters in the name.
fn output_path(args: &RunArgs, path: &Path, run: Option<&str>) -> PathBuf {
    if args.inplace {
        return path.to_owned();
    }
    let mut stem = path.file_stem().map_or_else(|| "notebook".into(), |stem| stem.to_string_lossy().into_owned());
    if let Some(run) = run {
        stem = format!("{stem}[{}]", run.replace('/', "_"));
    }
    match &args.output_dir {
        Some(dir) => dir.join(format!("{stem}.ipynb")),
        None => path.with_file_name(format!("{stem}.out.ipynb")),
    }
}

/// The longest output file name (bytes).
const MAX_OUTPUT_NAME: usize = 200;

/// Refuses, before anything runs, an output that would be lost or would destroy something: one
/// another run of this command writes too (the same notebook given twice, two folders' notebooks
/// of one name in one `--output-dir`, grid values that give one file name), the input itself
/// without `--inplace`, or a file name longer than file systems take.
fn check_output(output: &Path, input: &Path, inputs: &[PathBuf], inplace: bool, earlier: &[Notebook]) -> anyhow::Result<()> {
    let same = |a: &Path, b: &Path| a == b || (std::fs::canonicalize(a).is_ok() && std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok());
    let canonical_parent = |path: &Path| path.parent().and_then(|parent| std::fs::canonicalize(if parent.as_os_str().is_empty() { Path::new(".") } else { parent }).ok()).map(|parent| parent.join(path.file_name().unwrap_or_default()));
    let key = canonical_parent(output).unwrap_or_else(|| output.to_owned());
    if let Some(other) = earlier.iter().find(|other| canonical_parent(&other.output).unwrap_or_else(|| other.output.clone()) == key) {
        anyhow::bail!(
            "{} and {} would both be written to {}: give each notebook once, or run them into different --output-dir folders, or give --grid values that differ",
            other.path.display(), input.display(), output.display()
        );
    }
    if !inplace && same(output, input) {
        anyhow::bail!("{} would be written over itself: use --inplace to mean it, or another --output-dir", input.display());
    }
    if let Some(other) = inputs.iter().find(|other| !same(other, input) && same(output, other)) {
        anyhow::bail!("{}'s run would be written over {}, another notebook of this run: use --output-dir", input.display(), other.display());
    }
    // File systems take 255 bytes; the temporary file written first adds a few dozen.
    if output.file_name().is_some_and(|name| name.len() > MAX_OUTPUT_NAME) {
        anyhow::bail!("the output file name for {} is longer than {MAX_OUTPUT_NAME} bytes ({}): give shorter --grid values", input.display(), output.display());
    }
    Ok(())
}

/// A session name for the `index`th notebook: its file's stem as a lane name, numbered.
fn session_name(path: &Path, index: usize) -> String {
    let stem = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
    let kept: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' }).take(40).collect();
    format!("nb{}-{kept}", index + 1)
}

/// Reads every notebook, once per run of the sweep, with its parameters injected (all or
/// nothing: a notebook or a parameter that cannot be read is reported before anything runs).
pub fn prepare(args: &RunArgs) -> anyhow::Result<Vec<Notebook>> {
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).map_err(|source| NotebookError::Write { path: dir.display().to_string(), error: source })?;
    }
    let mut common = match &args.parameters_file {
        Some(file) => params::from_file(file)?,
        None => Vec::new(),
    };
    common.extend(params::from_pairs(&args.parameters)?);
    let runs = params::grid(&args.grid)?;
    let on_main = |path: &Path| args.main.iter().any(|main| main == path || std::fs::canonicalize(main).ok() == std::fs::canonicalize(path).ok());
    let mut all: Vec<PathBuf> = args.notebooks.clone();
    all.extend(args.main.iter().filter(|main| !args.notebooks.contains(main)).cloned());
    let mut notebooks = Vec::new();
    for path in &all {
        for run in &runs {
            let mut parameters = common.clone();
            for (name, value) in run {
                parameters.retain(|(known, _)| known != name);
                parameters.push((name.clone(), value.clone()));
            }
            let label = (!args.grid.is_empty()).then(|| params::label(run));
            let output = output_path(args, path, label.as_deref());
            check_output(&output, path, &all, args.inplace, &notebooks)?;
            let mut notebook = Notebook::read(path, output, session_name(path, notebooks.len()), on_main(path))?;
            notebook.inject(&parameters);
            notebook.label = params::label(&parameters);
            notebooks.push(notebook);
        }
    }
    Ok(notebooks)
}

/// Reads a UTF-8 text file of at most `cap` bytes (its size is checked before it decides how
/// much is allocated), without a byte order mark; a larger one is an error that says so, and
/// `advice`.
pub(super) fn read_capped(path: &Path, cap: u64, advice: &str) -> std::io::Result<String> {
    use std::io::Read;
    let too_large = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("it is larger than {} MiB, the most parakernel run reads ({advice})", cap >> 20));
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() > cap {
        return Err(too_large());
    }
    let mut text = String::new();
    file.take(cap + 1).read_to_string(&mut text)?;
    if text.len() as u64 > cap {
        return Err(too_large());
    }
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

