//! The documentation's examples are true: every example in `README.md` and `docs/*.md`
//! that can run, runs.
//!
//! Conventions of the Markdown, for whoever writes docs:
//! - A ```` ```yaml ```` block with a top-level `jobs:` key is a pipeline file: `gantry
//!   validate` must accept it. ```` ```yaml invalid ```` marks one that must be refused.
//!   Other YAML blocks (fragments, manifests) are not checked here.
//! - A ```` ```graphql ```` block is one operation, sent as the admin to a fresh server (one
//!   per Markdown file, blocks in the order of the file) and must answer without errors;
//!   ```` ```graphql error=CODE ```` must fail with `extensions.code` CODE. A subscription
//!   runs over WebSocket until its first message.
//! - Placeholders: `<repository>` and `<sha>` are a local git repository with one commit.
//!   Ids come from earlier blocks of the same file: after each block, the `id` of the first
//!   object under a field named in [`CAPTURES`] fills its placeholder (`triggerRun { id }`
//!   fills `<run-id>`, the first of `tasks { id }` fills `<task-id>`, …), and
//!   `createApiToken { token }` fills `<token>`. A placeholder nothing filled fails the test.
//! - `docs/examples/follow_run.py` (the bot of `docs/api.md`) runs against a server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_tests::{Backend, Server, ServerOptions, gantry_bin, git_repo, in_ci, repo_root, ws};
use serde_json::{Value, json};

/// Fields whose object's `id` fills a placeholder (the first element, for lists).
const CAPTURES: &[(&str, &str)] = &[
    ("createTenant", "tenant-id"),
    ("tenant", "tenant-id"),
    ("apiToken", "token-id"),
    ("createPipeline", "pipeline-id"),
    ("updatePipeline", "pipeline-id"),
    ("pipeline", "pipeline-id"),
    ("triggerRun", "run-id"),
    ("rerunFailed", "run-id"),
    ("cancelRun", "run-id"),
    ("run", "run-id"),
    ("retryTask", "task-id"),
    ("task", "task-id"),
    ("tasks", "task-id"),
    ("attempt", "attempt-id"),
    ("attempts", "attempt-id"),
    ("setSecret", "secret-id"),
];

/// One fenced block of a Markdown file.
#[derive(Debug)]
struct Block {
    file: PathBuf,
    /// 1-based line of the opening fence.
    line: usize,
    lang: String,
    attrs: Vec<String>,
    text: String,
}

impl Block {
    fn at(&self) -> String {
        let rel = self
            .file
            .strip_prefix(repo_root())
            .unwrap_or(&self.file)
            .display()
            .to_string();
        format!("{rel}:{}", self.line)
    }
}

/// `README.md` and `docs/*.md`, in a stable order.
fn markdown_files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files.insert(0, root.join("README.md"));
    files
}

/// A fence opened and not closed yet.
struct Open {
    line: usize,
    indent: usize,
    lang: String,
    attrs: Vec<String>,
    lines: Vec<String>,
}

/// The fenced blocks of a Markdown text; a fence may be indented (inside a list), and
/// its indentation is removed from the block's lines.
fn blocks(file: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(file).expect("read markdown");
    let mut out = Vec::new();
    let mut open: Option<Open> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.as_mut() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let mut words = info.split_whitespace().map(str::to_owned);
                    open = Some(Open {
                        line: i + 1,
                        indent: line.len() - trimmed.len(),
                        lang: words.next().unwrap_or_default(),
                        attrs: words.collect(),
                        lines: Vec::new(),
                    });
                }
            }
            Some(o) if trimmed.starts_with("```") => {
                out.push(Block {
                    file: file.to_path_buf(),
                    line: o.line,
                    lang: std::mem::take(&mut o.lang),
                    attrs: std::mem::take(&mut o.attrs),
                    text: o.lines.join("\n") + "\n",
                });
                open = None;
            }
            Some(o) => {
                let cut = line
                    .char_indices()
                    .take_while(|(j, c)| *j < o.indent && c.is_whitespace())
                    .count();
                o.lines.push(line[cut..].to_owned());
            }
        }
    }
    assert!(
        open.is_none(),
        "{}: a code fence is never closed",
        file.display()
    );
    out
}

fn is_pipeline(block: &Block) -> bool {
    block.lang == "yaml" && block.text.lines().any(|l| l.starts_with("jobs:"))
}

#[test]
fn docs_pipeline_examples_validate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in markdown_files() {
        for block in blocks(&file).into_iter().filter(is_pipeline) {
            let path = dir.path().join(format!("example-{checked}.yml"));
            std::fs::write(&path, &block.text).expect("write example");
            let out = std::process::Command::new(gantry_bin())
                .arg("validate")
                .arg(&path)
                .output()
                .expect("run gantry validate");
            let must_fail = block.attrs.iter().any(|a| a == "invalid");
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() == must_fail {
                failures.push(format!(
                    "{}: expected the example to be {}, gantry validate said:\n{stderr}",
                    block.at(),
                    if must_fail { "refused" } else { "valid" }
                ));
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The pipeline reference alone has more than twenty.
    assert!(checked > 20, "only {checked} pipeline examples found");
    eprintln!("{checked} pipeline examples checked");
}

/// Replaces every `<name>` placeholder; an unknown one is an error naming it.
fn substitute(text: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c == '-'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        if name.is_empty() || !after[name_len..].starts_with('>') {
            out.push('<');
            rest = after;
            continue;
        }
        let value = values
            .get(name)
            .ok_or_else(|| format!("placeholder <{name}> is not filled by an earlier block"))?;
        out.push_str(value);
        rest = &after[name_len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Fills placeholders from a response, as [`CAPTURES`] says; the first occurrence in a
/// response wins.
fn capture(data: &Value, values: &mut BTreeMap<String, String>, seen: &mut Vec<&'static str>) {
    match data {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "createApiToken"
                    && let Some(token) = v["token"].as_str()
                    && !seen.contains(&"token")
                {
                    seen.push("token");
                    values.insert("token".into(), token.to_owned());
                }
                if let Some((_, name)) = CAPTURES.iter().find(|(field, _)| field == key) {
                    let object = match v {
                        Value::Array(items) => items.first().unwrap_or(&Value::Null),
                        other => other,
                    };
                    if let Some(id) = object["id"].as_str()
                        && !seen.contains(name)
                    {
                        seen.push(name);
                        values.insert((*name).to_owned(), id.to_owned());
                    }
                }
                capture(v, values, seen);
            }
        }
        Value::Array(items) => {
            for item in items {
                capture(item, values, seen);
            }
        }
        _ => {}
    }
}

/// Runs one file's GraphQL blocks in order against `server`; returns the problems.
async fn run_graphql_blocks(
    server: &Server,
    blocks: &[Block],
    repository: &str,
    sha: &str,
) -> Vec<String> {
    let mut values = BTreeMap::from([
        ("repository".to_owned(), repository.to_owned()),
        ("sha".to_owned(), sha.to_owned()),
    ]);
    let mut problems = Vec::new();
    for block in blocks {
        let query = match substitute(&block.text, &values) {
            Ok(q) => q,
            Err(e) => {
                problems.push(format!("{}: {e}", block.at()));
                continue;
            }
        };
        let expected_error = block
            .attrs
            .iter()
            .find_map(|a| a.strip_prefix("error="))
            .map(str::to_owned);
        let is_subscription = query.trim_start().starts_with("subscription");
        let started = std::time::Instant::now();
        let response = if is_subscription {
            let data =
                ws::first_match(server, &query, json!({}), Duration::from_secs(60), |_| true).await;
            json!({ "data": data })
        } else {
            server.gql(&query, json!({})).await
        };
        eprintln!("{}: {:?}", block.at(), started.elapsed());
        let code = response["errors"][0]["extensions"]["code"].as_str();
        match (&expected_error, code) {
            (None, None) => {}
            (None, Some(_)) => problems.push(format!(
                "{}: the example failed: {}",
                block.at(),
                response["errors"]
            )),
            (Some(want), got) if Some(want.as_str()) != got => problems.push(format!(
                "{}: expected error {want}, got {response}",
                block.at()
            )),
            (Some(_), _) => {}
        }
        let mut seen = Vec::new();
        capture(&response["data"], &mut values, &mut seen);
    }
    problems
}

#[tokio::test]
async fn docs_graphql_examples_run() {
    let (repo, sha) = git_repo(&[("README", "docs example repository\n")]);
    let repository = repo.path().display().to_string();
    let mut ran = 0;
    let mut problems = Vec::new();
    for file in markdown_files() {
        let graphql: Vec<Block> = blocks(&file)
            .into_iter()
            .filter(|b| b.lang == "graphql")
            .collect();
        if graphql.is_empty() {
            continue;
        }
        // A fresh server per file: each file's examples build on each other only.
        let server = Server::start(ServerOptions::new(Backend::Sqlite)).await;
        problems.extend(run_graphql_blocks(&server, &graphql, &repository, &sha).await);
        ran += graphql.len();
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(ran >= 15, "only {ran} GraphQL examples found");
    eprintln!("{ran} GraphQL examples ran");
}

/// Whether the bot's interpreter and client library are here; in CI they must be.
fn bot_runtime() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import gql, websockets"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !in_ci(),
            "python3 with gql[websockets] is required in CI (scripts/test installs it)"
        );
        eprintln!("skipping: python3 with the gql[websockets] package is not installed");
    }
    ok
}

/// Runs the bot of `docs/api.md` to the end of a run; returns its exit code and output.
async fn run_bot(server: &Server, pipeline: &str, sha: &str) -> (i32, String, String) {
    let script = repo_root().join("docs/examples/follow_run.py");
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--url", &server.url, "--token", gantry_tests::ADMIN_TOKEN])
        .args(["--pipeline", pipeline, "--sha", sha])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("the bot did not finish within 120 s")
        .expect("run python3");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn docs_bot_follows_a_run_to_its_end() {
    if !bot_runtime() {
        return;
    }
    let server = Server::start(ServerOptions::new(Backend::Sqlite)).await;
    let (repo, sha) = git_repo(&[("README", "bot\n")]);
    let repository = repo.path().display().to_string();
    let ok = server
        .create_pipeline(
            "bot",
            &repository,
            "jobs:\n  build:\n    steps:\n      - run: echo built\n  test:\n    needs: build\n    strategy: {matrix: {shard: [1, 2]}}\n    steps:\n      - run: echo shard ${{ matrix.shard }}\n",
        )
        .await;
    let (code, stdout, stderr) = run_bot(&server, &ok, &sha).await;
    assert_eq!(code, 0, "the bot failed:\n{stdout}\n{stderr}");
    assert!(stdout.trim_end().ends_with("SUCCEEDED"), "{stdout}");
    // Every event of the run was printed once, in order.
    let run_id = stdout
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(2))
        .expect("the first line names the run")
        .to_owned();
    let run = server.run(&run_id).await;
    let seqs: Vec<&str> = run["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["seq"].as_str())
        .collect();
    let printed: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(printed, seqs, "{stdout}");
    for task in ["build", "test (shard=1)", "test (shard=2)"] {
        assert!(stdout.contains(task), "{task} missing:\n{stdout}");
    }

    let failing = server
        .create_pipeline(
            "bot-failing",
            &repository,
            "jobs:\n  build:\n    steps:\n      - run: exit 3\n",
        )
        .await;
    let (code, stdout, stderr) = run_bot(&server, &failing, &sha).await;
    assert_eq!(code, 1, "a failed run exits 1:\n{stdout}\n{stderr}");
    assert!(stdout.trim_end().ends_with("FAILED"), "{stdout}");

    let (code, _, stderr) = run_bot(&server, "no-such-pipeline", &sha).await;
    assert_eq!(code, 2, "a refused trigger exits 2: {stderr}");
    assert!(stderr.contains("NOT_FOUND"), "{stderr}");
}
