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

    let mut env = base_env(workspace, &spec.attempt_id);
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));

    let mut cmd = match spec.sandbox {
        Sandbox::None => {
            let program = resolve_program(&argv[0], env.get("PATH").map(String::as_str));
            let mut cmd = Command::new(program);
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
    cmd.envs(&env);
    apply_limits(&mut cmd, &spec.limits);
    Ok(cmd)
}

/// The program's path, looked up in the step's own `PATH` as the shell would. Spawning
/// by path lets the standard library use `posix_spawn` (a bare name with a changed `PATH`
/// makes it fork the whole server instead, which costs more than the step). A name not
/// found is returned as is: spawning it then fails with the usual error.
fn resolve_program(name: &str, path: Option<&str>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if name.contains('/') {
        return PathBuf::from(name);
    }
    for dir in path.unwrap_or_default().split(':') {
        if !dir.starts_with('/') {
            // An empty or relative entry is relative to the step's directory: leave the
            // search to the spawn, which does it in the child.
            return PathBuf::from(name);
        }
        let candidate = Path::new(dir).join(name);
        let runnable = std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if runnable {
            return candidate;
        }
    }
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_in_the_steps_path_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first");
        let second = dir.path().join("second");
        for d in [&first, &second] {
            std::fs::create_dir(d).unwrap();
        }
        let tool = |d: &Path, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let p = d.join("tool");
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        tool(&first, 0o644);
        let runnable = tool(&second, 0o755);
        let path = format!("{}:{}", first.display(), second.display());
        assert_eq!(resolve_program("tool", Some(&path)), runnable);
        assert_eq!(
            resolve_program("missing", Some(&path)),
            PathBuf::from("missing")
        );
        assert_eq!(
            resolve_program("./tool", Some(&path)),
            PathBuf::from("./tool")
        );
        let relative_first = format!("bin:{}", second.display());
        assert_eq!(
            resolve_program("tool", Some(&relative_first)),
            PathBuf::from("tool")
        );
    }
}
