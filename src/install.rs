//! `parakernel install`: writes the kernelspec (`kernel.json` and the logos) so Jupyter clients
//! offer "Python (parakernel)". The kernel runs the Python environment recorded here.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

const LOGO_32: &[u8] = include_bytes!("../kernelspec/logo-32x32.png");
const LOGO_64: &[u8] = include_bytes!("../kernelspec/logo-64x64.png");

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Install for the current user (the default).
    #[arg(long, group = "place")]
    pub user: bool,
    /// Install into the Python environment's prefix (`<sys.prefix>/share/jupyter/kernels`).
    #[arg(long, group = "place")]
    pub sys_prefix: bool,
    /// Install into `<DIR>/share/jupyter/kernels`.
    #[arg(long, group = "place", value_name = "DIR")]
    pub prefix: Option<PathBuf>,
    /// The kernelspec's directory name (default `parakernel`, or `parakernel-lanes` with
    /// `--lane-per-session`).
    #[arg(long)]
    pub name: Option<String>,
    /// The name clients show (default "Python (parakernel)", or "Python (parakernel, one lane
    /// per notebook)" with `--lane-per-session`).
    #[arg(long)]
    pub display_name: Option<String>,
    /// The kernel gives every client session (each notebook attached to it) a lane of its own
    /// for the cells that name no lane: several notebooks share one process, each isolated.
    #[arg(long)]
    pub lane_per_session: bool,
    /// The Python environment the kernel runs (its `python` executable). Default: the active
    /// virtual environment, else the interpreter parakernel was built against.
    #[arg(long, value_name = "PYTHON")]
    pub python: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("kernel name {0:?} may contain only letters, digits, '.', '_' and '-'")]
    BadName(String),
    #[error("cannot run {python} to ask for its prefix")]
    RunPython {
        python: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{python} is not a usable Python: {detail}")]
    NotPython { python: String, detail: String },
    #[error("no home directory: use --sys-prefix or --prefix")]
    NoHome,
    #[error("cannot find the parakernel executable")]
    CurrentExe(#[source] std::io::Error),
    #[error("cannot write the kernelspec into {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Writes the kernelspec and returns its directory.
impl InstallArgs {
    /// The kernelspec's directory name.
    pub fn kernel_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| if self.lane_per_session { "parakernel-lanes" } else { "parakernel" }.to_owned())
    }

    fn shown_name(&self) -> String {
        self.display_name.clone().unwrap_or_else(|| {
            if self.lane_per_session { "Python (parakernel, one lane per notebook)" } else { "Python (parakernel)" }.to_owned()
        })
    }
}

pub fn install(args: &InstallArgs) -> Result<PathBuf, InstallError> {
    let name = args.kernel_name();
    let valid_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid_name {
        return Err(InstallError::BadName(name));
    }
    let python = environment_python(args.python.as_deref());
    let kernels = if args.sys_prefix {
        python_prefix(&python)?.join("share/jupyter/kernels")
    } else if let Some(prefix) = &args.prefix {
        prefix.join("share/jupyter/kernels")
    } else {
        user_data_dir()?.join("kernels")
    };
    let directory = kernels.join(&name);
    let executable = std::env::current_exe().map_err(InstallError::CurrentExe)?;
    let mut argv = vec![json!(executable), json!("kernel"), json!("--python"), json!(python)];
    if args.lane_per_session {
        argv.push(json!("--lane-per-session"));
    }
    argv.extend([json!("-f"), json!("{connection_file}")]);
    let spec = json!({
        "argv": argv,
        "display_name": args.shown_name(),
        "language": "python",
        "interrupt_mode": "message",
        "kernel_protocol_version": crate::wire::PROTOCOL_VERSION,
        // jupyter_client 8.10 provisions CurveZMQ keys (`transport_encryption="auto"`) only
        // for kernels that declare it.
        "metadata": {"debugger": false, "supported_encryption": "curve"},
    });
    let write = |name: &str, bytes: &[u8]| {
        let path = directory.join(name);
        std::fs::write(&path, bytes)
            .map_err(|source| InstallError::Write { path: path.display().to_string(), source })
    };
    std::fs::create_dir_all(&directory)
        .map_err(|source| InstallError::Write { path: directory.display().to_string(), source })?;
    write("kernel.json", serde_json::to_string_pretty(&spec).expect("plain JSON").as_bytes())?;
    write("logo-32x32.png", LOGO_32)?;
    write("logo-64x64.png", LOGO_64)?;
    Ok(directory)
}

/// The environment's interpreter, as an absolute path that keeps the virtual environment's
/// symlink (resolving it would lose the environment).
pub fn environment_python(explicit: Option<&Path>) -> PathBuf {
    let chosen = explicit.map(Path::to_path_buf).unwrap_or_else(|| {
        std::env::var_os("VIRTUAL_ENV")
            .map(|venv| PathBuf::from(venv).join("bin/python"))
            .unwrap_or_else(|| PathBuf::from(env!("PARAKERNEL_BUILD_PYTHON")))
    });
    std::path::absolute(&chosen).unwrap_or(chosen)
}

fn python_prefix(python: &Path) -> Result<PathBuf, InstallError> {
    let shown = python.display().to_string();
    let output = Command::new(python)
        .args(["-c", "import sys; print(sys.prefix)"])
        .output()
        .map_err(|source| InstallError::RunPython { python: shown.clone(), source })?;
    if !output.status.success() {
        let detail = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(InstallError::NotPython { python: shown, detail });
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

/// Jupyter's user data directory: `$JUPYTER_DATA_DIR`, else `$XDG_DATA_HOME/jupyter`, else
/// `~/.local/share/jupyter`.
fn user_data_dir() -> Result<PathBuf, InstallError> {
    if let Some(dir) = std::env::var_os("JUPYTER_DATA_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return Ok(PathBuf::from(dir).join("jupyter"));
    }
    let home = std::env::var_os("HOME").ok_or(InstallError::NoHome)?;
    Ok(PathBuf::from(home).join(".local/share/jupyter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_kernelspec_under_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let args = InstallArgs {
            user: false,
            sys_prefix: false,
            prefix: Some(dir.path().to_path_buf()),
            name: Some("pk-test".into()),
            display_name: None,
            python: Some(PathBuf::from("/some/env/bin/python")),
            lane_per_session: false,
        };
        let written = install(&args).unwrap();
        assert_eq!(written, dir.path().join("share/jupyter/kernels/pk-test"));
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(written.join("kernel.json")).unwrap()).unwrap();
        assert_eq!(spec["interrupt_mode"], "message");
        assert_eq!(spec["language"], "python");
        assert_eq!(spec["metadata"]["supported_encryption"], "curve");
        let argv: Vec<&str> = spec["argv"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(&argv[1..], ["kernel", "--python", "/some/env/bin/python", "-f", "{connection_file}"]);
        assert!(written.join("logo-64x64.png").exists());
        assert_eq!(spec["display_name"], "Python (parakernel)");
        // The second kernelspec: one lane per notebook.
        let lanes = InstallArgs { name: None, lane_per_session: true, ..args };
        let written = install(&lanes).unwrap();
        assert_eq!(written, dir.path().join("share/jupyter/kernels/parakernel-lanes"));
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(written.join("kernel.json")).unwrap()).unwrap();
        assert_eq!(spec["display_name"], "Python (parakernel, one lane per notebook)");
        let argv: Vec<&str> = spec["argv"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(&argv[1..], ["kernel", "--python", "/some/env/bin/python", "--lane-per-session", "-f", "{connection_file}"]);
    }

    #[test]
    fn refuses_names_jupyter_cannot_use() {
        let args = InstallArgs {
            user: true,
            sys_prefix: false,
            prefix: None,
            name: Some("bad name/..".into()),
            display_name: None,
            python: None,
            lane_per_session: false,
        };
        assert!(matches!(install(&args), Err(InstallError::BadName(_))));
    }
}
