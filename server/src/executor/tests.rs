//! End-to-end tests of `execute` with real processes.

use std::path::Path;
use std::process::Command as StdCommand;
use std::sync::Once;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;

static HOST_ENV: Once = Once::new();

/// Every test calls this first, so the one environment mutation happens
/// before any test reads the environment.
fn host_env() {
    HOST_ENV.call_once(|| {
        // SAFETY: all tests synchronise on this Once before touching the
        // environment, so no other thread reads it concurrently.
        unsafe { std::env::set_var("GANTRY_TEST_LEAK", "1") };
    });
}

fn spec(root: &Path, steps: Vec<Step>) -> ExecSpec {
    host_env();
    let mut spec = ExecSpec::new("attempt-1", root, steps);
    spec.timeout = Duration::from_secs(60);
    spec.kill_grace = Duration::from_millis(200);
    spec
}

async fn run(spec: ExecSpec) -> (ExecResult, Vec<LogChunk>) {
    run_with(spec, CancellationToken::new()).await
}

async fn run_with(spec: ExecSpec, cancel: CancellationToken) -> (ExecResult, Vec<LogChunk>) {
    let (tx, mut rx) = mpsc::channel(64);
    let handle = tokio::spawn(execute(spec, tx, cancel));
    let mut chunks = Vec::new();
    while let Some(chunk) = rx.recv().await {
        chunks.push(chunk);
    }
    (handle.await.expect("execute panicked"), chunks)
}

fn text(chunks: &[LogChunk]) -> String {
    chunks.iter().map(|c| c.data.as_str()).collect()
}

fn stream_text(chunks: &[LogChunk], stream: LogStream) -> String {
    chunks
        .iter()
        .filter(|c| c.stream == stream)
        .map(|c| c.data.as_str())
        .collect()
}

fn failure(result: &ExecResult) -> (FailureKind, Option<i32>, String) {
    match &result.outcome {
        Outcome::Failed {
            kind,
            exit_code,
            message,
        } => (*kind, *exit_code, message.clone()),
        Outcome::Succeeded => panic!("expected failure, got success"),
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Non-zombie processes whose process group is `pgid`.
fn live_group_members(pgid: i32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state ppid pgrp ...
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            found.push(stat);
        }
    }
    found
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = StdCommand::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {:?}", out);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn two_steps_stream_output_and_markers_in_order() {
    let root = tempfile::tempdir().unwrap();
    let (result, chunks) = run(spec(
        root.path(),
        vec![
            Step::run("first", "echo one"),
            Step::run("second", "echo two >&2"),
        ],
    ))
    .await;
    assert_eq!(result.outcome, Outcome::Succeeded);
    assert_eq!(
        text(&chunks),
        "##[step] first\none\n##[exit] 0\n##[step] second\ntwo\n##[exit] 0\n"
    );
    assert_eq!(stream_text(&chunks, LogStream::Stdout), "one\n");
    assert_eq!(stream_text(&chunks, LogStream::Stderr), "two\n");
    assert!(!root.path().join("attempt-1").exists(), "workspace removed");
}

#[tokio::test]
async fn environment_is_scrubbed_and_layered() {
    let root = tempfile::tempdir().unwrap();
    let mut step = Step::run(
        "env",
        "echo leak=${GANTRY_TEST_LEAK:-unset}; echo home=$HOME; echo path=$PATH; \
         echo ci=$CI gantry=$GANTRY id=$GANTRY_ATTEMPT_ID; echo ws=$GANTRY_WORKSPACE; \
         echo job=$JOB_ONLY over=$OVERRIDDEN step=$STEP_ONLY",
    );
    step.env.insert("STEP_ONLY".into(), "s".into());
    step.env.insert("OVERRIDDEN".into(), "by-step".into());
    let mut spec = spec(root.path(), vec![step]);
    spec.env.insert("JOB_ONLY".into(), "j".into());
    spec.env.insert("OVERRIDDEN".into(), "by-job".into());
    let (result, chunks) = run(spec).await;
    assert_eq!(result.outcome, Outcome::Succeeded);
    assert_eq!(std::env::var("GANTRY_TEST_LEAK").as_deref(), Ok("1"));
    let out = stream_text(&chunks, LogStream::Stdout);
    let ws = root.path().join("attempt-1").display().to_string();
    assert!(out.contains("leak=unset\n"), "{out}");
    assert!(out.contains(&format!("home={ws}\n")), "{out}");
    assert!(out.contains(&format!("ws={ws}\n")), "{out}");
    assert!(out.contains("path=/"), "{out}");
    assert!(out.contains("ci=true gantry=true id=attempt-1\n"), "{out}");
    assert!(out.contains("job=j over=by-step step=s\n"), "{out}");
}

#[tokio::test]
async fn failing_step_reports_exit_code_and_skips_the_rest() {
    let root = tempfile::tempdir().unwrap();
    let (result, chunks) = run(spec(
        root.path(),
        vec![
            Step::run("fails", "echo before; exit 3"),
            Step::run("skipped", "echo after"),
        ],
    ))
    .await;
    let (kind, code, _) = failure(&result);
    assert_eq!((kind, code), (FailureKind::Exit, Some(3)));
    let log = text(&chunks);
    assert!(log.contains("before\n##[exit] 3\n"), "{log}");
    assert!(!log.contains("after") && !log.contains("skipped"), "{log}");
}

#[tokio::test]
async fn bash_shell_uses_pipefail_and_working_directory_applies() {
    let root = tempfile::tempdir().unwrap();
    let mut in_sub = Step::run("pwd", "pwd");
    in_sub.working_directory = Some("sub/dir".into());
    let mut piped = Step::run("pipe", "false | true");
    piped.shell = Some("bash".into());
    let (result, chunks) = run(spec(
        root.path(),
        vec![Step::run("mk", "mkdir -p sub/dir"), in_sub, piped],
    ))
    .await;
    let (kind, code, _) = failure(&result);
    assert_eq!((kind, code), (FailureKind::Exit, Some(1)));
    let out = stream_text(&chunks, LogStream::Stdout);
    assert!(out.ends_with("/attempt-1/sub/dir\n"), "{out}");
}

#[tokio::test]
async fn timeout_kills_the_step() {
    let root = tempfile::tempdir().unwrap();
    let mut spec = spec(root.path(), vec![Step::run("slow", "sleep 30")]);
    spec.timeout = Duration::from_millis(300);
    let (result, chunks) = run(spec).await;
    let (kind, _, _) = failure(&result);
    assert_eq!(kind, FailureKind::Timeout);
    assert!(result.duration < Duration::from_secs(10), "{result:?}");
    assert!(text(&chunks).contains("##[signal] 15\n"), "{chunks:?}");
}

#[tokio::test]
async fn cancel_kills_whole_group_even_when_sigterm_is_ignored() {
    let root = tempfile::tempdir().unwrap();
    let script = "trap '' TERM; echo pgid=$$; sleep 100 & sleep 100";
    let spec = spec(root.path(), vec![Step::run("stubborn", script)]);
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(64);
    let handle = tokio::spawn(execute(spec, tx, cancel.clone()));

    let mut pgid = None;
    while let Some(chunk) = rx.recv().await {
        if let Some(rest) = chunk.data.strip_prefix("pgid=") {
            pgid = Some(rest.trim().parse::<i32>().expect("pgid"));
            break;
        }
    }
    let pgid = pgid.expect("step printed its pgid");
    assert!(
        !live_group_members(pgid).is_empty(),
        "group running before cancel"
    );
    cancel.cancel();
    while rx.recv().await.is_some() {}
    let result = handle.await.expect("execute panicked");

    let (kind, _, _) = failure(&result);
    assert_eq!(kind, FailureKind::Cancelled);
    assert_eq!(live_group_members(pgid), Vec::<String>::new());
    // The ignored SIGTERM means we waited the grace, then used SIGKILL.
    assert!(result.duration >= Duration::from_millis(200), "{result:?}");
    assert!(result.duration < Duration::from_secs(10), "{result:?}");
}

#[tokio::test]
async fn background_processes_do_not_outlive_their_step() {
    let root = tempfile::tempdir().unwrap();
    let (result, chunks) = run(spec(
        root.path(),
        vec![Step::run("bg", "sleep 100 & echo started")],
    ))
    .await;
    assert_eq!(result.outcome, Outcome::Succeeded);
    assert!(result.duration < Duration::from_secs(10), "{result:?}");
    assert!(text(&chunks).contains("##[warning]"), "{chunks:?}");
}

#[tokio::test]
async fn cancelled_before_start_runs_nothing() {
    let root = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let (result, chunks) = run_with(
        spec(root.path(), vec![Step::run("never", "echo ran")]),
        cancel,
    )
    .await;
    assert_eq!(failure(&result).0, FailureKind::Cancelled);
    assert!(!text(&chunks).contains("ran"));
}

#[tokio::test]
async fn checkout_step_checks_out_the_requested_commit() {
    let repo = tempfile::tempdir().unwrap();
    let r = repo.path();
    git(r, &["init", "-q", "-b", "main"]);
    std::fs::write(r.join("hello.txt"), "v1\n").unwrap();
    git(r, &["add", "hello.txt"]);
    git(r, &["commit", "-q", "-m", "one"]);
    let first = git(r, &["rev-parse", "HEAD"]);
    std::fs::write(r.join("hello.txt"), "v2\n").unwrap();
    git(r, &["commit", "-q", "-am", "two"]);
    git(r, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(r.join("hello.txt"), "v3\n").unwrap();
    git(r, &["commit", "-q", "-am", "three"]);
    git(r, &["checkout", "-q", "main"]);

    let root = tempfile::tempdir().unwrap();
    for (rev, expected) in [(first.as_str(), "v1\n"), ("feature", "v3\n")] {
        let mut spec = spec(
            root.path(),
            vec![
                Step::run("pre", "echo pre > pre.txt"),
                Step::checkout("checkout"),
                Step::run("show", "cat hello.txt"),
            ],
        );
        spec.checkout = Some(Checkout {
            repository: r.display().to_string(),
            sha: rev.to_owned(),
        });
        let (result, chunks) = run(spec).await;
        assert_eq!(result.outcome, Outcome::Succeeded, "{chunks:?}");
        assert!(
            stream_text(&chunks, LogStream::Stdout).ends_with(expected),
            "{rev}: {chunks:?}"
        );
    }
}

#[tokio::test]
async fn checkout_only_happens_where_a_step_asks_for_it() {
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(repo.path().join("hello.txt"), "v1\n").unwrap();
    git(repo.path(), &["add", "hello.txt"]);
    git(repo.path(), &["commit", "-q", "-m", "one"]);

    let root = tempfile::tempdir().unwrap();
    let mut spec = spec(root.path(), vec![Step::run("look", "test ! -e hello.txt")]);
    spec.checkout = Some(Checkout {
        repository: repo.path().display().to_string(),
        sha: "main".into(),
    });
    let (result, _) = run(spec).await;
    assert_eq!(result.outcome, Outcome::Succeeded);
}

#[tokio::test]
async fn failed_checkout_is_an_infra_failure() {
    let root = tempfile::tempdir().unwrap();
    let mut spec = spec(
        root.path(),
        vec![Step::checkout("checkout"), Step::run("after", "echo after")],
    );
    spec.checkout = Some(Checkout {
        repository: root.path().join("no-such-repo").display().to_string(),
        sha: "main".into(),
    });
    let (result, chunks) = run(spec).await;
    let (kind, _, message) = failure(&result);
    assert_eq!(kind, FailureKind::Infra);
    assert!(message.contains("checkout failed"), "{message}");
    assert!(!text(&chunks).contains("after\n"));
}

#[tokio::test]
async fn artifacts_are_copied_out_and_hashed() {
    let root = tempfile::tempdir().unwrap();
    let mut spec = spec(
        root.path(),
        vec![Step::run(
            "build",
            "mkdir -p out/sub; printf hello > out/a.txt; printf world > out/sub/b.txt; \
             printf report > report.xml; printf x > one.log; printf y > two.log",
        )],
    );
    spec.artifacts = vec!["out".into(), "./report.xml".into(), "*.log".into()];
    let (result, chunks) = run(spec).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{chunks:?}");
    let got: Vec<(&str, u64, &str)> = result
        .artifacts
        .iter()
        .map(|a| (a.name.as_str(), a.size, a.sha256.as_str()))
        .collect();
    let (h_hello, h_world, h_report) = (
        sha256_hex(b"hello"),
        sha256_hex(b"world"),
        sha256_hex(b"report"),
    );
    let (h_x, h_y) = (sha256_hex(b"x"), sha256_hex(b"y"));
    assert_eq!(
        got,
        vec![
            ("./report.xml", 6, h_report.as_str()),
            ("one.log", 1, h_x.as_str()),
            ("out/a.txt", 5, h_hello.as_str()),
            ("out/sub/b.txt", 5, h_world.as_str()),
            ("two.log", 1, h_y.as_str()),
        ]
    );
    assert_eq!(
        h_hello,
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert!(!root.path().join("attempt-1").exists(), "workspace removed");
    for artifact in &result.artifacts {
        assert!(
            artifact
                .path
                .starts_with(root.path().join("attempt-1.artifacts"))
        );
        let data = std::fs::read(&artifact.path).unwrap();
        assert_eq!(sha256_hex(&data), artifact.sha256);
    }
}

#[tokio::test]
async fn missing_artifact_is_an_infra_failure() {
    let root = tempfile::tempdir().unwrap();
    let mut spec = spec(root.path(), vec![Step::run("noop", "true")]);
    spec.artifacts = vec!["nope".into()];
    let (result, _) = run(spec).await;
    let (kind, _, message) = failure(&result);
    assert_eq!(kind, FailureKind::Infra);
    assert_eq!(message, "artifact path not found: nope");
}

#[tokio::test]
async fn artifacts_cannot_leave_the_workspace() {
    let root = tempfile::tempdir().unwrap();
    let mut spec = spec(
        root.path(),
        vec![Step::run("link", "ln -s /etc/hostname h")],
    );
    spec.artifacts = vec!["h".into()];
    let (result, _) = run(spec).await;
    assert_eq!(failure(&result).0, FailureKind::Infra);
}

#[tokio::test]
async fn secrets_are_masked_even_when_split_across_reads() {
    let root = tempfile::tempdir().unwrap();
    let mut step = Step::run(
        "leaky",
        "printf 'token=super'; sleep 0.3; printf 'secret done\\n'; echo \"$S\" >&2",
    );
    step.env.insert("S".into(), "supersecret".into());
    step.name = "uses supersecret".into();
    let mut spec = spec(root.path(), vec![step]);
    spec.masks = vec!["supersecret".into()];
    let (result, chunks) = run(spec).await;
    assert_eq!(result.outcome, Outcome::Succeeded);
    let log = text(&chunks);
    assert!(!log.contains("supersecret"), "{log}");
    assert!(
        !chunks
            .iter()
            .any(|c| c.data.contains("secret done") && !c.data.contains("***"))
    );
    assert_eq!(stream_text(&chunks, LogStream::Stdout), "token=*** done\n");
    assert_eq!(stream_text(&chunks, LogStream::Stderr), "***\n");
    assert!(log.starts_with("##[step] uses ***\n"), "{log}");
}

#[tokio::test]
async fn file_size_limit_is_enforced() {
    let root = tempfile::tempdir().unwrap();
    let mut spec = spec(
        root.path(),
        vec![Step::run(
            "big",
            "head -c 1000 /dev/zero > small; echo small-ok; head -c 10000000 /dev/zero > f",
        )],
    );
    spec.limits.file_size_bytes = Some(1_000_000);
    let (result, chunks) = run(spec).await;
    let (kind, code, _) = failure(&result);
    assert_eq!(kind, FailureKind::Exit);
    assert_ne!(code, Some(0));
    assert!(stream_text(&chunks, LogStream::Stdout).contains("small-ok"));
}

#[tokio::test]
async fn invalid_attempt_id_is_rejected() {
    let root = tempfile::tempdir().unwrap();
    let mut spec = spec(root.path(), vec![Step::run("x", "true")]);
    spec.attempt_id = "../escape".into();
    let (result, _) = run(spec).await;
    assert_eq!(failure(&result).0, FailureKind::Infra);
}

/// bwrap may be installed but unusable (e.g. no user namespaces in a container).
fn bwrap_usable() -> Result<(), String> {
    if !bwrap_available() {
        return Err("bwrap not found on PATH".into());
    }
    let probe = StdCommand::new("bwrap")
        .args([
            "--unshare-all",
            "--die-with-parent",
            "--ro-bind",
            "/",
            "/",
            "true",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if probe.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&probe.stderr).into_owned())
    }
}

#[tokio::test]
async fn bwrap_sandbox_isolates_the_step() {
    host_env();
    if let Err(reason) = bwrap_usable() {
        eprintln!("skipping bwrap test: {reason}");
        let root = tempfile::tempdir().unwrap();
        let mut spec = spec(root.path(), vec![Step::run("x", "true")]);
        spec.sandbox = Sandbox::Bwrap;
        if !bwrap_available() {
            let (result, _) = run(spec).await;
            assert_eq!(
                failure(&result),
                (
                    FailureKind::Infra,
                    None,
                    "sandbox requested but bwrap not found".to_owned()
                )
            );
        }
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let script = "echo inside > ws.txt; cat ws.txt; \
                  if touch /usr/gantry-probe 2>/dev/null; then echo rootfs-writable; exit 1; fi; \
                  echo ifaces=$(tail -n +3 /proc/net/dev | grep -vc '^ *lo:'); \
                  echo pid=$$; echo leak=${GANTRY_TEST_LEAK:-unset}";
    let mut spec = spec(root.path(), vec![Step::run("sandboxed", script)]);
    spec.sandbox = Sandbox::Bwrap;
    let (result, chunks) = run(spec).await;
    assert_eq!(result.outcome, Outcome::Succeeded, "{chunks:?}");
    let out = stream_text(&chunks, LogStream::Stdout);
    assert!(out.contains("inside\n"), "{out}");
    assert!(out.contains("ifaces=0\n"), "network must be off: {out}");
    assert!(out.contains("leak=unset\n"), "{out}");
    // In a fresh PID namespace the shell is one of the first processes.
    let pid: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .expect("pid line");
    assert!(pid < 10, "{out}");
}

#[tokio::test]
async fn bwrap_timeout_kills_the_sandbox() {
    host_env();
    if let Err(reason) = bwrap_usable() {
        eprintln!("skipping bwrap timeout test: {reason}");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut spec = spec(
        root.path(),
        vec![Step::run(
            "escape",
            "setsid sleep 100 & trap '' TERM; sleep 100",
        )],
    );
    spec.sandbox = Sandbox::Bwrap;
    spec.timeout = Duration::from_millis(500);
    let (result, _) = run(spec).await;
    assert_eq!(failure(&result).0, FailureKind::Timeout);
    assert!(result.duration < Duration::from_secs(10), "{result:?}");
}
