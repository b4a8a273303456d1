//! Operations: which pipelines a webhook delivery starts (`on:` filters), and the
//! deployment manifests.

use gantry_tests::{Backend, Server, ServerOptions, backends};
use serde_json::{Value, json};

async fn idle_server(backend: Backend) -> Server {
    let mut o = ServerOptions::new(backend);
    o.workers = 0;
    Server::start(o).await
}

fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(s: &Server, event: &str, delivery: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let res = reqwest::Client::new()
        .post(format!("{}/webhooks/github", s.url))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sign("whsec", body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn pipelines_of_runs(s: &Server, ids: &[(String, &str)]) -> Vec<(String, String)> {
    let d = s
        .data(
            "{ runs { edges { node { ref pipeline { id } } } } }",
            json!({}),
        )
        .await;
    let mut out: Vec<(String, String)> = d["runs"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let id = e["node"]["pipeline"]["id"].as_str().unwrap_or_default();
            let name = ids
                .iter()
                .find(|(i, _)| i == id)
                .map_or("?", |(_, n)| *n)
                .to_owned();
            (
                name,
                e["node"]["ref"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn push_and_pull_request_filters_pick_the_pipelines() {
    let files = [
        ("main-only", "on: {push: {branches: [main]}}\n"),
        ("releases", "on: {push: {branches: ['release/*']}}\n"),
        (
            "everything",
            "on: {push: {branches: ['**']}, pull_request: {}}\n",
        ),
        (
            "not-features",
            "on: {push: {branches-ignore: ['feature/**']}}\n",
        ),
        ("prs-to-main", "on: {pull_request: {branches: [main]}}\n"),
        ("nightly", "on: {schedule: [{cron: '0 3 * * *'}]}\n"),
        ("no-on", ""),
    ];
    for backend in backends().await {
        let s = idle_server(backend).await;
        let mut ids = Vec::new();
        for (name, on) in files {
            let file = format!("{on}jobs:\n  build:\n    steps:\n      - run: echo hi\n");
            let d = s
                .data(
                    "mutation($n: String!, $f: String!) { createPipeline(input: {name: $n, provider: GITHUB, repository: \"acme/app\", file: $f, webhookSecret: \"whsec\"}) { id } }",
                    json!({ "n": name, "f": file }),
                )
                .await;
            ids.push((d["createPipeline"]["id"].as_str().unwrap().to_owned(), name));
        }
        let push = |r: &str| {
            json!({
                "ref": r, "after": "0123456789abcdef0123456789abcdef01234567",
                "repository": { "full_name": "acme/app", "html_url": "https://github.com/acme/app" }
            })
        };

        let (status, res) = deliver(&s, "push", "p-main", &push("refs/heads/main")).await;
        assert_eq!(status, 202, "{res}");
        let (status, res) = deliver(&s, "push", "p-feat", &push("refs/heads/feature/x")).await;
        assert_eq!(status, 202, "{res}");
        let runs = pipelines_of_runs(&s, &ids).await;
        let expect = |v: &[(&str, &str)]| {
            let mut v: Vec<(String, String)> = v
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            runs,
            expect(&[
                ("main-only", "refs/heads/main"),
                ("everything", "refs/heads/main"),
                ("not-features", "refs/heads/main"),
                ("no-on", "refs/heads/main"),
                ("everything", "refs/heads/feature/x"),
                ("no-on", "refs/heads/feature/x"),
            ])
        );

        // A pull request into main: the pipelines that take pull requests to main.
        let pr = json!({
            "action": "opened", "number": 7,
            "pull_request": { "head": { "sha": "abcdef0123456" }, "base": { "ref": "main" } },
            "repository": { "full_name": "acme/app", "html_url": "https://github.com/acme/app" }
        });
        let (status, res) = deliver(&s, "pull_request", "pr-7", &pr).await;
        assert_eq!(status, 202, "{res}");
        let prs: Vec<(String, String)> = pipelines_of_runs(&s, &ids)
            .await
            .into_iter()
            .filter(|(_, r)| r.starts_with("refs/pull/"))
            .collect();
        assert_eq!(
            prs,
            expect(&[
                ("everything", "refs/pull/7/head"),
                ("no-on", "refs/pull/7/head"),
                ("prs-to-main", "refs/pull/7/head"),
            ])
        );
    }
}

fn manifests() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn kubernetes_manifests_have_the_reference_layout() {
    let mut kinds: Vec<(String, String)> = Vec::new();
    for f in manifests() {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in text.split("\n---\n") {
            let field = |key: &str, indent: &str| {
                doc.lines()
                    .find_map(|l| l.strip_prefix(&format!("{indent}{key}: ")))
                    .map(|v| v.trim().to_owned())
            };
            let kind =
                field("kind", "").unwrap_or_else(|| panic!("{f:?}: a document without kind"));
            let name = field("name", "  ").unwrap_or_else(|| panic!("{f:?}: {kind} without name"));
            kinds.push((kind, name));
        }
    }
    for want in [
        ("Deployment", "gantry-server"),
        ("Service", "gantry"),
        ("Deployment", "gantry-agent"),
        ("HorizontalPodAutoscaler", "gantry-agent"),
        ("Job", "gantry-migrate"),
    ] {
        assert!(
            kinds.iter().any(|(k, n)| k == want.0 && n == want.1),
            "missing {want:?} in {kinds:?}"
        );
    }
}

/// Validates the manifests against the Kubernetes schemas with `kubernetes-validate`
/// (`pip install kubernetes-validate`); skipped when it is not installed, except in CI.
#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let out = match std::process::Command::new("kubernetes-validate")
        .arg("--strict")
        .args(manifests())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "kubernetes-validate is required in CI: {e}"
            );
            eprintln!(
                "SKIP: kubernetes-validate not installed ({e}); pip install kubernetes-validate"
            );
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--log-format json` (or `GANTRY_LOG_FORMAT=json`) writes one JSON object per log line.
#[test]
fn json_log_format_writes_one_object_per_line() {
    for (flag, env) in [(true, None), (false, Some("json"))] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(gantry_tests::gantry_bin());
        cmd.arg("migrate")
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "info")
            .env_remove("GANTRY_LOG_FORMAT");
        if flag {
            cmd.args(["--log-format", "json"]);
        }
        if let Some(v) = env {
            cmd.env("GANTRY_LOG_FORMAT", v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(!lines.is_empty(), "no log lines");
        for line in lines {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert!(
                v["level"].is_string() && v["timestamp"].is_string(),
                "{line}"
            );
        }
    }
}
