//! Bringing the job's repository into the workspace.
//!
//! Owns the git invocations for a checkout step: clone (or fetch into an
//! already populated workspace), then a detached checkout of the requested
//! commit or ref, fetching it explicitly when a plain clone did not bring it.
//! Separate so the git protocol details stay out of the step loop. It runs
//! git on the host, outside any sandbox, because fetching needs the network;
//! it must therefore never run job-provided scripts.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use tokio::process::Command;

use crate::executor::Checkout;
use crate::executor::Halt;
use crate::executor::command::base_env;
use crate::executor::error::ExecError;
use crate::executor::process::{RunContext, Termination, run_process};

/// Performs the checkout of `source` into `workspace`.
pub(crate) async fn checkout(
    source: &Checkout,
    workspace: &Path,
    attempt_id: &str,
    ctx: &RunContext<'_>,
) -> Result<(), Halt> {
    // Both values end up as git arguments; a leading dash would be parsed as
    // an option (e.g. --upload-pack=...), which is an injection vector.
    if source.repository.starts_with('-') || source.sha.starts_with('-') || source.sha.is_empty() {
        return Err(ExecError::InvalidSpec(format!(
            "invalid checkout source {:?} at {:?}",
            source.repository, source.sha
        ))
        .into());
    }
    let mut env = base_env(workspace, attempt_id);
    // Never wait for a credential prompt nobody can answer.
    env.insert("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned());
    let git = Git {
        workspace,
        env: &env,
        ctx,
    };
    let ws = workspace.as_os_str().to_owned();

    if workspace.join(".git").exists() {
        // A second checkout step: reuse the clone, just refresh it.
        git.require(&[
            "-C".into(),
            ws.clone(),
            "fetch".into(),
            "--quiet".into(),
            "origin".into(),
        ])
        .await?;
    } else if is_empty_dir(workspace) {
        git.require(&[
            "clone".into(),
            "--quiet".into(),
            "--".into(),
            source.repository.as_str().into(),
            ws.clone(),
        ])
        .await?;
    } else {
        // Earlier steps already wrote files, and `git clone` refuses a
        // non-empty directory; init + fetch gives the same result around them.
        git.require(&["-C".into(), ws.clone(), "init".into(), "--quiet".into()])
            .await?;
        git.require(&[
            "-C".into(),
            ws.clone(),
            "remote".into(),
            "add".into(),
            "origin".into(),
            source.repository.as_str().into(),
        ])
        .await?;
        git.require(&[
            "-C".into(),
            ws.clone(),
            "fetch".into(),
            "--quiet".into(),
            "origin".into(),
        ])
        .await?;
    }

    // A sha on any branch (or a tag) is already present after the clone. Ask
    // quietly first so the common case logs no misleading error.
    let commit = format!("{}^{{commit}}", source.sha);
    let present = git
        .succeeds(&[
            "-C".into(),
            ws.clone(),
            "rev-parse".into(),
            "--verify".into(),
            "--quiet".into(),
            commit.into(),
        ])
        .await?;
    let target: OsString = if present {
        source.sha.as_str().into()
    } else {
        // Commits only reachable from non-branch refs, and remote branch
        // names, have to be fetched explicitly.
        git.require(&[
            "-C".into(),
            ws.clone(),
            "fetch".into(),
            "--quiet".into(),
            "origin".into(),
            source.sha.as_str().into(),
        ])
        .await?;
        "FETCH_HEAD".into()
    };
    git.require(&[
        "-C".into(),
        ws,
        "checkout".into(),
        "--quiet".into(),
        "--detach".into(),
        target,
    ])
    .await
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

struct Git<'a> {
    workspace: &'a Path,
    env: &'a BTreeMap<String, String>,
    ctx: &'a RunContext<'a>,
}

impl Git<'_> {
    /// Runs git; `Ok(false)` for a non-zero exit.
    async fn succeeds(&self, args: &[OsString]) -> Result<bool, Halt> {
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(self.workspace)
            .env_clear()
            .envs(self.env);
        let end = run_process(cmd, "git", self.ctx).await?;
        if let Some(interruption) = end.interrupted {
            return Err(Halt::Interrupted(interruption));
        }
        Ok(end.termination == Termination::Exited(0))
    }

    /// Runs git and turns a non-zero exit into a checkout failure.
    async fn require(&self, args: &[OsString]) -> Result<(), Halt> {
        if self.succeeds(args).await? {
            return Ok(());
        }
        let shown: Vec<String> = args
            .iter()
            .filter(|a| a.as_os_str() != self.workspace.as_os_str() && a.as_os_str() != "-C")
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        Err(ExecError::Checkout(format!("`git {}` failed", shown.join(" "))).into())
    }
}
