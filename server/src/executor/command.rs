//! Turning a `Step` into a ready-to-spawn `Command`.
//!
//! Owns the step environment (scrubbed host env plus allowlist, job env, step
//! env), shell selection, working directory resolution, rlimits and sandbox
//! wrapping. Separate from `process` so that *what* runs is decided in one
//! place and *how it is supervised* in another. It must not spawn or wait.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use tokio::process::Command;

use crate::executor::error::ExecError;
use crate::executor::process::apply_limits;
use crate::executor::sandbox::{DEFAULT_PATH, bwrap_args, find_bwrap};
use crate::executor::{ExecSpec, Sandbox, Step};

/// Host variables a step may inherit. Everything else in the orchestrator's
/// environment (tokens, cloud credentials, ...) is withheld.
const PASSTHROUGH: &[&str] = &["LANG", "LC_ALL", "TZ"];

/// The environment every process of an attempt starts from, before job and
/// step variables are layered on top.
pub(crate) fn base_env(workspace: &Path, attempt_id: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let path = std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.to_owned());
    env.insert("PATH".to_owned(), path);
    for name in PASSTHROUGH {
        if let Ok(value) = std::env::var(name) {
            env.insert((*name).to_owned(), value);
        }
    }
    let ws = workspace.display().to_string();
    env.insert("HOME".to_owned(), ws.clone());
    env.insert("TMPDIR".to_owned(), "/tmp".to_owned());
    env.insert("CI".to_owned(), "true".to_owned());
    env.insert("GANTRY".to_owned(), "true".to_owned());
    env.insert("GANTRY_WORKSPACE".to_owned(), ws);
    env.insert("GANTRY_ATTEMPT_ID".to_owned(), attempt_id.to_owned());
    env
}

/// argv for running `script` with the step's shell.
pub(crate) fn shell_argv(shell: Option<&str>, script: &str) -> Vec<String> {
    let shell = shell.map(str::trim).filter(|s| !s.is_empty());
    let mut argv: Vec<String> = match shell {
        None | Some("sh") => vec!["sh".into(), "-e".into()],
        // pipefail is what makes `cmd | tee log` fail when cmd fails.
        Some("bash") => vec!["bash".into(), "-e".into(), "-o".into(), "pipefail".into()],
        // Anything else is a program (possibly with fixed arguments, e.g.
        // `python3 -u`) that takes the script after -c.
        Some(other) => other.split_whitespace().map(str::to_owned).collect(),
    };
    argv.push("-c".into());
    argv.push(script.to_owned());
    argv
}

/// `relative` joined below `workspace`, refusing anything that could point
/// outside it.
pub(crate) fn within_workspace(workspace: &Path, relative: &str) -> Result<PathBuf, ExecError> {
    let rel = Path::new(relative);
    let mut out = workspace.to_path_buf();
    for component in rel.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ExecError::InvalidSpec(format!(
                    "path {relative:?} must be relative and stay inside the workspace"
                )));
            }
        }
    }
    Ok(out)
}

/// Builds the command for a run step.
pub(crate) fn step_command(
    spec: &ExecSpec,
    step: &Step,
    workspace: &Path,
) -> Result<Command, ExecError> {
    let cwd = match &step.working_directory {
        Some(dir) => within_workspace(workspace, dir)?,
        None => workspace.to_path_buf(),
    };
    let argv = shell_argv(step.shell.as_deref(), &step.script);

    let mut cmd = match spec.sandbox {
        Sandbox::None => {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]).current_dir(&cwd);
            cmd
        }
        Sandbox::Bwrap => {
            let bwrap = find_bwrap().ok_or(ExecError::SandboxUnavailable)?;
            let mut cmd = Command::new(bwrap);
            cmd.args(bwrap_args(workspace, &cwd, &argv));
            // bwrap itself starts in the workspace too, so a missing working
            // directory is reported by bwrap rather than as a spawn error.
            cmd.current_dir(workspace);
            cmd
        }
    };

    cmd.env_clear();
    cmd.envs(base_env(workspace, &spec.attempt_id));
    cmd.envs(&spec.env);
    cmd.envs(&step.env);
    apply_limits(&mut cmd, &spec.limits);
    Ok(cmd)
}
