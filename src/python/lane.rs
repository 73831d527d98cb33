//! One lane's interpreter and shell: loads the embedded shell helper into the interpreter whose
//! thread state is attached, and runs jobs and queries through it. The main lane uses it on the
//! process's main thread; subinterpreter lanes on their own threads (see `lanes`).

use std::ffi::CStr;
use std::sync::Arc;

use serde_json::{json, Value};

use super::ffi::{AsyncException, Gil, InterpreterHandle, Owned, PythonException};
use super::PythonError;
use crate::lanes::{ErrorContent, Event, ExecuteJob, ExecuteReply, Job, Lane, Output, Query};
use crate::native::{self, LaneState};

/// The shell helper, a Python package shipped inside the binary and imported in every lane as
/// `_parakernel_shell`: each part's name and source. Nothing of it is read from disk.
const SHELL_PARTS: &[(&str, &str)] = &[
    ("__init__", include_str!("shell/__init__.py")),
    ("entry", include_str!("shell/entry.py")),
    ("lane", include_str!("shell/lane.py")),
    ("messages", include_str!("shell/messages.py")),
    ("streams", include_str!("shell/streams.py")),
    ("wakeable", include_str!("shell/wakeable.py")),
    ("subinterpreter", include_str!("shell/subinterpreter.py")),
    ("magics", include_str!("shell/magics.py")),
    ("shell", include_str!("shell/shell.py")),
    ("libraries", include_str!("shell/libraries.py")),
    ("queries", include_str!("shell/queries.py")),
    ("fresh", include_str!("shell/fresh.py")),
    ("pool", include_str!("shell/pool.py")),
    // Not a part of the shell: the `parakernel` module cells import (see `loader.PUBLIC`).
    ("parakernel", include_str!("shell/parakernel.py")),
];
/// Runs first, as `_parakernel_shell.loader`: makes the parts importable (see the file).
const SHELL_LOADER: &str = include_str!("shell/loader.py");
const SHELL_MODULE: &CStr = c"_parakernel_shell";

/// A lane's loaded shell, bound to the interpreter whose GIL `'py` stands for.
pub(crate) struct LaneRuntime<'py> {
    gil: Gil<'py>,
    state: Arc<LaneState>,
    interpreter: InterpreterHandle,
    execute: Owned<'py>,
    comm: Owned<'py>,
    stop: Owned<'py>,
    other_threads: Owned<'py>,
    restore: Owned<'py>,
}

impl<'py> LaneRuntime<'py> {
    /// Binds `_parakernel` in the current interpreter to `state`, loads the shell helper and
    /// creates the lane's shell (an `IPython` `InteractiveShell`), or with `shell_on_demand`
    /// leaves the shell to the first job that needs it (`PythonOptions::on_demand`).
    pub(crate) fn start(
        gil: Gil<'py>,
        state: Arc<LaneState>,
        shell_on_demand: bool,
    ) -> Result<Self, PythonError> {
        let interpreter = InterpreterHandle::current(gil);
        native::register(interpreter.id(), Arc::clone(&state));
        let runtime = Self::load(gil, state, interpreter, shell_on_demand);
        if runtime.is_err() {
            native::unregister(interpreter.id());
        }
        runtime
    }

    fn load(
        gil: Gil<'py>,
        state: Arc<LaneState>,
        interpreter: InterpreterHandle,
        shell_on_demand: bool,
    ) -> Result<Self, PythonError> {
        let setup =
            |context: &'static str| move |exception| PythonError::Setup { context, exception };
        gil.import(native::MODULE_NAME)
            .map_err(setup("import _parakernel"))?;
        let module = load_shell(gil).map_err(setup("load the shell helper"))?;
        // The main interpreter gets signals, the inline plot backend and startup files; a fresh
        // lane runs each cell in a new context and is restored after it.
        let options = json!({
            "main": matches!(state.lane(), Lane::Main),
            "fresh": matches!(state.lane(), Lane::Fresh(_)),
            "lane": state.lane().name(),
            "shell_on_demand": shell_on_demand,
        });
        let options = gil
            .str(&options.to_string())
            .map_err(setup("start the shell"))?;
        module
            .getattr(c"start")
            .and_then(|start| start.call(&[&options]))
            .map_err(setup("start the IPython shell"))?;
        let function = |name: &'static CStr| {
            module
                .getattr(name)
                .map_err(setup("find the shell's entry points"))
        };
        Ok(LaneRuntime {
            gil,
            execute: function(c"execute")?,
            comm: function(c"comm")?,
            stop: function(c"stop")?,
            other_threads: function(c"other_threads")?,
            restore: function(c"restore")?,
            state,
            interpreter,
        })
    }

    /// Runs one job of the lane, counting its CPU time; returns the reply content
    /// (`execute_reply` for an execute job, none for a comm job).
    pub(crate) fn run(&self, job: &Job) -> Option<ExecuteReply> {
        self.state.begin_job();
        let reply = match job {
            Job::Execute(execute) => {
                self.state.set_allow_stdin(execute.allow_stdin);
                let reply = self.execute(execute);
                self.state.set_allow_stdin(false);
                Some(reply)
            }
            Job::Comm { msg_type, content, metadata, buffers, parent_header, .. } => {
                let message = json!({ "content": content, "metadata": metadata, "header": parent_header });
                self.comm(msg_type, &message, buffers);
                None
            }
        };
        self.state.end_job();
        reply
    }

    /// Runs one `execute_request`; returns the `execute_reply` content.
    fn execute(&self, job: &ExecuteJob) -> ExecuteReply {
        // The code goes as a `str` of its own, made once from the job's text (the one copy
        // Python needs), never inside the JSON of the rest: IPython keeps that very object as
        // the cell's input (`In`, `_i`).
        let request = json!({
            "silent": job.silent,
            "store_history": job.store_history,
            "user_expressions": job.user_expressions,
            "execution_count": job.execution_count,
            "parent_header": job.parent_header,
            "transfer": job.transfer,
        })
        .to_string();
        let reply = self
            .gil
            .str(&request)
            .and_then(|request| {
                let code = self.gil.str(&job.code)?;
                self.execute.call(&[&request, &code])
            })
            .and_then(|reply| reply.text());
        match reply.map(|text| serde_json::from_str::<ExecuteReply>(&text)) {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => self.internal_error(
                job,
                &PythonException {
                    name: "ValueError".into(),
                    message: format!("the shell's reply is not an execute_reply: {error}"),
                    traceback: Vec::new(),
                },
            ),
            Err(exception) => self.internal_error(job, &exception),
        }
    }

    /// The shell itself failed (not the user's code): show it in the cell, answer `error`.
    fn internal_error(&self, job: &ExecuteJob, exception: &PythonException) -> ExecuteReply {
        tracing::error!(
            request = job.request,
            "the lane's shell failed: {exception}\n{}",
            exception.traceback.concat()
        );
        let error = ErrorContent {
            ename: exception.name.clone(),
            evalue: exception.message.clone(),
            traceback: exception.traceback.clone(),
        };
        self.state.send(Event::Output {
            request: self.state.request(),
            output: Output::Error(error.clone()),
            metadata: serde_json::Map::new(),
            buffers: Vec::new(),
        });
        ExecuteReply::error(job.execution_count, error)
    }

    /// Feeds a `comm_open` / `comm_msg` / `comm_close` (with its metadata, buffers and header)
    /// to the lane's comm manager.
    fn comm(&self, msg_type: &str, message: &Value, buffers: &[Vec<u8>]) {
        let result = self.gil.str(msg_type).and_then(|msg_type| {
            let message = self.gil.str(&message.to_string())?;
            let buffers = self.gil.bytes_list(buffers)?;
            self.comm.call(&[&msg_type, &message, &buffers])
        });
        if let Err(exception) = result {
            tracing::warn!(
                "{msg_type} failed in the lane: {exception}\n{}",
                exception.traceback.concat()
            );
        }
    }

    /// Waits up to `timeout_seconds` for the threads cells started; true when none is left that
    /// would make interpreter teardown wait.
    pub(crate) fn stop(&self, timeout_seconds: f64) -> bool {
        let timeout = self.gil.float(timeout_seconds);
        match timeout
            .and_then(|timeout| self.stop.call(&[&timeout]))
            .and_then(|done| done.is_true())
        {
            Ok(done) => done,
            Err(exception) => {
                tracing::warn!("stopping the lane's threads failed: {exception}");
                false
            }
        }
    }

    /// Before a subinterpreter ends: raises `SystemExit` in the threads its cells started (and
    /// wakes those in `time.sleep`, `input()` or a lane call), then waits for them as
    /// [`Self::stop`] does. `Py_EndInterpreter` would otherwise wait for them forever.
    pub(crate) fn end_threads(&self, timeout_seconds: f64) -> bool {
        self.state.close_waits();
        let threads = self
            .other_threads
            .call(&[])
            .and_then(|threads| threads.text())
            .map(|text| serde_json::from_str::<Vec<u64>>(&text).unwrap_or_default());
        match threads {
            Ok(threads) => {
                for thread in threads {
                    self.gil.set_async_exc(thread, AsyncException::SystemExit);
                }
            }
            Err(exception) => tracing::warn!("listing the lane's threads failed: {exception}"),
        }
        self.stop(timeout_seconds)
    }

    /// Puts a fresh lane back in its warm state (user globals, modules imported since, ...).
    /// False when that cannot be trusted (a thread the cell started still runs, or the restore
    /// failed): the interpreter must then be replaced.
    pub(crate) fn restore(&self) -> bool {
        match self.restore.call(&[]).and_then(|trusted| trusted.is_true()) {
            Ok(trusted) => trusted,
            Err(exception) => {
                tracing::warn!(
                    "restoring a fresh lane failed: {exception}\n{}",
                    exception.traceback.concat()
                );
                false
            }
        }
    }
}

/// Loads the shell helper into the interpreter whose GIL `gil` stands for: runs its loader, hands
/// it every part, and imports the package (which imports its parts).
fn load_shell(gil: Gil<'_>) -> Result<Owned<'_>, PythonException> {
    let loader = gil.exec_module(
        c"_parakernel_shell.loader",
        c"<parakernel shell/loader.py>",
        SHELL_LOADER,
    )?;
    let add = loader.getattr(c"add")?;
    for (part, source) in SHELL_PARTS {
        add.call(&[&gil.str(part)?, &gil.str(source)?])?;
    }
    gil.import(SHELL_MODULE)
}

impl Drop for LaneRuntime<'_> {
    fn drop(&mut self) {
        native::unregister(self.interpreter.id());
    }
}

/// Answers a query with the shell of the interpreter attached to this thread (any thread of
/// that interpreter: it finds the shell helper in `sys.modules`).
pub(crate) fn answer(gil: Gil<'_>, query: &Query) -> Value {
    let request = serde_json::to_string(query).expect("a query is plain JSON");
    let reply = gil
        .import(SHELL_MODULE)
        .and_then(|module| module.getattr(c"query"))
        .and_then(|function| function.call(&[&gil.str(&request.to_string())?]))
        .and_then(|reply| reply.text());
    match reply.map(|text| serde_json::from_str::<Value>(&text)) {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => ErrorContent::new("ValueError", &format!("the shell's answer is not JSON: {error}")).reply(),
        Err(exception) => {
            tracing::warn!(
                "query failed: {exception}\n{}",
                exception.traceback.concat()
            );
            ErrorContent { ename: exception.name, evalue: exception.message, traceback: exception.traceback }.reply()
        }
    }
}
