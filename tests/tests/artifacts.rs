//! Artifacts: uploaded after a successful attempt as content-addressed blobs, listed
//! through the API, downloadable at `GET /artifacts/{id}`, placed into the workspace of
//! the jobs that need them, linked by cache hits — the same suite on the filesystem store
//! and on an S3-compatible server — and streamed through a remote agent with bounded
//! memory.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use gantry_tests::s3::S3Server;
use gantry_tests::{ADMIN_TOKEN, Backend, Server, ServerOptions, backends, gantry_bin};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(180);

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn task<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("task {name} in {run}"))
}

/// Names of the blob files below `dir` (each is a sha256).
fn blobs_below(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str())
                && name.len() == 64
                && name.bytes().all(|b| b.is_ascii_hexdigit())
            {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

async fn artifacts_of(s: &Server, task_id: &str) -> Vec<Value> {
    s.data(
        "query($id: ID!) { task(id: $id) { artifacts { id name size sha256 url } } }",
        json!({ "id": task_id }),
    )
    .await["task"]["artifacts"]
        .as_array()
        .expect("artifacts")
        .clone()
}

/// The suite every store must pass. `blob_root` is where the store keeps its files.
async fn artifact_suite(s: &Server, blob_root: &Path, label: &str) {
    let file = r#"
name: ci
jobs:
  build:
    steps:
      - run: |
          mkdir -p out dist
          echo hello > out/app.txt
          echo hello > dist/copy.txt
          echo other > dist/other.txt
    artifacts: [out/app.txt, dist]
  check:
    needs: build
    cache: false
    steps:
      - uses: actions/download-artifact@v4
      - run: |
          test "$(cat out/app.txt)" = hello
          test "$(cat dist/copy.txt)" = hello
          test "$(cat dist/other.txt)" = other
"#;
    let p = s.create_pipeline("ci", "/src/app", file).await;
    let run = s.trigger(&p, "abc123").await;
    let run = s.wait_run(&run, WAIT).await;
    assert_eq!(run["state"], "SUCCEEDED", "{label}: {run:#}");

    // Listed through the API, with the digests of their content.
    let build = task(&run, "build");
    let listed = artifacts_of(s, build["id"].as_str().unwrap()).await;
    let names: Vec<&str> = listed.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        vec!["dist/copy.txt", "dist/other.txt", "out/app.txt"],
        "{label}"
    );
    let hello = sha256_hex(b"hello\n");
    let app = listed.iter().find(|a| a["name"] == "out/app.txt").unwrap();
    assert_eq!(app["sha256"], hello.as_str());
    assert_eq!(app["size"], 6.0);

    // The same content is stored once.
    let blobs = blobs_below(blob_root);
    assert_eq!(
        blobs,
        BTreeSet::from([hello.clone(), sha256_hex(b"other\n")]),
        "{label}"
    );

    // Downloads stream the content to the tenant, and to no one else.
    let url = format!("{}{}", s.url, app["url"].as_str().unwrap());
    let http = reqwest::Client::new();
    let res = http
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{label}");
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"hello\n");
    let res = http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 401, "{label}: no token");
    let stranger = stranger_token(s).await;
    let res = http.get(&url).bearer_auth(&stranger).send().await.unwrap();
    assert_eq!(
        res.status(),
        404,
        "{label}: another tenant's artifact does not exist"
    );
    let res = http
        .get(format!("{}/artifacts/nope", s.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // An upload needs the attempt's live lease.
    let res = http
        .put(format!(
            "{}/artifacts?attempt={}&name=x",
            s.url,
            build["attempts"][0]["id"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-gantry-lease-token", "forged")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        409,
        "{label}: a finished attempt takes no upload"
    );

    // A cache hit links the artifacts it reuses, and a job that needs it receives them.
    let again = s.trigger(&p, "abc123").await;
    let again = s.wait_run(&again, WAIT).await;
    assert_eq!(again["state"], "SUCCEEDED", "{label}: {again:#}");
    assert_eq!(task(&again, "build")["state"], "CACHED");
    assert_eq!(task(&again, "check")["state"], "SUCCEEDED");
    let linked = artifacts_of(s, task(&again, "build")["id"].as_str().unwrap()).await;
    let digests = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|a| a["sha256"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(digests(&linked), digests(&listed), "{label}");
    assert_eq!(
        blobs_below(blob_root).len(),
        2,
        "{label}: nothing stored twice"
    );
}

async fn stranger_token(s: &Server) -> String {
    s.data(
        r#"mutation { createTenant(input: {name: "stranger", weight: 1, maxRunning: 1, triggerRate: 1, triggerBurst: 1}) { id } }"#,
        json!({}),
    )
    .await;
    let d = s
        .data(
            r#"mutation { createApiToken(input: {tenant: "stranger", name: "t", scopes: [READ]}) { token } }"#,
            json!({}),
        )
        .await;
    d["createApiToken"]["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_filesystem_store_passes_the_artifact_suite() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let root = s.data_dir.path().join("artifacts");
        artifact_suite(&s, &root, &format!("filesystem/{backend:?}")).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_s3_store_passes_the_artifact_suite() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    for (i, backend) in backends().await.into_iter().enumerate() {
        let mut o = ServerOptions::new(backend);
        let prefix = format!("run{i}");
        o.extra_env = s3.server_env(&prefix);
        let s = Server::start(o).await;
        let root = s3.root.path().join(gantry_tests::s3::BUCKET).join(&prefix);
        artifact_suite(&s, &root, &format!("s3/{backend:?}")).await;
        assert!(
            blobs_below(&s.data_dir.path().join("artifacts")).is_empty(),
            "nothing went to the filesystem store"
        );
    }
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200_mb_artifact_streams_through_an_agent_with_bounded_memory() {
    let mut o = ServerOptions::new(Backend::Sqlite);
    o.workers = 0;
    let s = Server::start(o).await;
    let workspace = tempfile::tempdir().unwrap();
    let mut agent = tokio::process::Command::new(gantry_bin())
        .arg("agent")
        .arg("--server")
        .arg(&s.url)
        .arg("--token")
        .arg(ADMIN_TOKEN)
        .arg("--workspace")
        .arg(workspace.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn agent");
    let pid = agent.id().expect("agent pid");
    let file = r#"
name: big
jobs:
  make:
    cache: false
    steps:
      - run: head -c 209715200 /dev/urandom > big.bin; sha256sum big.bin | cut -d' ' -f1 > big.sha
    artifacts: [big.bin, big.sha]
  use:
    needs: make
    cache: false
    steps:
      - run: test "$(sha256sum big.bin | cut -d' ' -f1)" = "$(cat big.sha)" && test "$(stat -c %s big.bin)" = 209715200
"#;
    let p = s.create_pipeline("big", "/src/app", file).await;
    let started = Instant::now();
    let run = s.trigger(&p, "abc123").await;
    let run = s.wait_run(&run, WAIT).await;
    let took = started.elapsed();
    assert_eq!(run["state"], "SUCCEEDED", "{run:#}");
    let make = task(&run, "make");
    let listed = artifacts_of(&s, make["id"].as_str().unwrap()).await;
    let big = listed.iter().find(|a| a["name"] == "big.bin").unwrap();
    assert_eq!(big["size"], 209715200.0);

    let agent_peak = peak_rss_kib(pid);
    let server_peak = s.pid().map(peak_rss_kib).unwrap_or(0);
    println!(
        "200 MiB artifact through an agent (upload + download): {:.1} s; peak RSS agent {} MiB, server {} MiB",
        took.as_secs_f64(),
        agent_peak / 1024,
        server_peak / 1024
    );
    assert!(
        agent_peak < 100 * 1024,
        "the agent's peak RSS ({agent_peak} KiB) must stay well below the artifact's size"
    );
    let _ = agent.start_kill();
    let _ = agent.wait().await;
}

/// Only the succeeding attempt's artifacts are the task's: what an earlier attempt of the
/// task uploaded before it failed is not listed and not handed on.
#[tokio::test(flavor = "multi_thread")]
async fn a_retried_task_keeps_only_the_artifacts_of_its_succeeding_attempt() {
    for backend in backends().await {
        let mut o = ServerOptions::new(backend);
        o.workers = 0;
        let s = Server::start(o).await;
        let p = s
            .create_pipeline(
                "retried",
                "/tmp",
                "jobs:\n  a:\n    retry: { max-attempts: 2, on: exit, backoff: { initial: 10ms } }\n    steps: [{run: \"true\"}]\n",
            )
            .await;
        let run = s.trigger(&p, "abc").await;
        let w = s.register_worker("w", "default").await;
        let complete = "mutation($a: ID!, $t: String!, $k: ErrorKind, $c: Int) { completeAttempt(input: {attempt: $a, leaseToken: $t, errorKind: $k, exitCode: $c}) { state } }";

        let (attempt, token) = s.lease(&w, "default").await;
        let (attempt, token) = (attempt.as_str().unwrap(), token.as_str().unwrap());
        let res = reqwest::Client::new()
            .put(format!(
                "{}/artifacts?attempt={attempt}&name=first.txt",
                s.url
            ))
            .bearer_auth(ADMIN_TOKEN)
            .header("x-gantry-lease-token", token)
            .body("from the failed attempt")
            .send()
            .await
            .unwrap();
        assert!(
            res.status().is_success(),
            "{backend:?}: upload {}",
            res.status()
        );
        let failed = s
            .data(
                complete,
                json!({ "a": attempt, "t": token, "k": "EXIT", "c": 1 }),
            )
            .await;
        assert_eq!(failed["completeAttempt"]["state"], "FAILED", "{backend:?}");

        let (second, second_token) = s.lease(&w, "default").await;
        assert_ne!(second, attempt, "{backend:?}");
        let done = s
            .data(complete, json!({ "a": second, "t": second_token }))
            .await;
        assert_eq!(done["completeAttempt"]["state"], "SUCCEEDED", "{backend:?}");

        let finished = s.wait_run(&run, WAIT).await;
        assert_eq!(finished["state"], "SUCCEEDED", "{backend:?}: {finished:#}");
        let a = task(&finished, "a");
        assert_eq!(
            artifacts_of(&s, a["id"].as_str().unwrap()).await,
            Vec::<Value>::new(),
            "{backend:?}: the failed attempt's upload is not the task's"
        );
    }
}
