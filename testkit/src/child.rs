//! Child processes a test owns: each runs in a process group of its own, so that a SIGKILL
//! reaches everything it started (the broker's shell wrapper, `beam.smp` and its helpers), and
//! a guard kills the group when it is dropped, whether the test passed, failed or panicked.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rustix::process::{Pid, Signal, kill_process_group};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not start {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        source: std::io::Error,
    },
    #[error("could not open the log file {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    NotListening(#[from] crate::ports::NotListening),
}

/// How to start one process: program, arguments, environment and where its output goes.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// stdout and stderr are appended here, across restarts.
    pub log: PathBuf,
}

/// A process (group) that is killed when this is dropped.
pub struct Proc {
    spec: Spec,
    child: Option<Child>,
    /// How often it was started.
    pub starts: u32,
}

impl Proc {
    pub fn new(spec: Spec) -> Self {
        Self {
            spec,
            child: None,
            starts: 0,
        }
    }

    /// Starts the process in a new process group. A running one is killed first.
    pub fn start(&mut self) -> Result<(), ProcessError> {
        self.kill();
        let log = |path: &Path| {
            File::options()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| ProcessError::Log {
                    path: path.display().to_string(),
                    source,
                })
        };
        let out = log(&self.spec.log)?;
        let err = out.try_clone().map_err(|source| ProcessError::Log {
            path: self.spec.log.display().to_string(),
            source,
        })?;
        let child = Command::new(&self.spec.program)
            .args(&self.spec.args)
            .envs(&self.spec.env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                name: self.spec.name.clone(),
                program: self.spec.program.display().to_string(),
                source,
            })?;
        info!(process = %self.spec.name, pid = child.id(), "started");
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// SIGKILLs the whole process group and reaps the leader. Does nothing if not running.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
            // The group id is the leader's pid (process_group(0)).
            if let Err(e) = kill_process_group(pid, Signal::KILL) {
                warn!(process = %self.spec.name, error = %e, "could not signal the process group");
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        info!(process = %self.spec.name, "killed (SIGKILL to its process group)");
    }

    /// Whether the leader is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
