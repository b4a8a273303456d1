//! Dedup and cache: a commit is never built twice — cache hits at planning, single flight
//! between runs triggered together, `rerunFailed`, keys that follow their inputs, TTL.
//!
//! Steps count their executions by appending a line to a file outside the workspace, so
//! "ran no step" is a side effect the test can read.

use std::path::Path;
use std::time::Duration;

use gantry_tests::{Backend, Server, ServerOptions, backends};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

/// Lines in a counter file: how many times the steps writing to it ran.
fn count(dir: &Path, name: &str) -> usize {
    std::fs::read_to_string(dir.join(name))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// A two-job pipeline whose steps count their runs in `dir`.
fn counting_pipeline(dir: &Path, extra: &str) -> String {
    let d = dir.display();
    format!(
        r#"
name: ci
{extra}
jobs:
  build:
    steps:
      - run: echo build >> {d}/build
  test:
    needs: build
    strategy: {{ matrix: {{ shard: [1, 2] }} }}
    steps:
      - run: echo test >> {d}/test
"#
    )
}

fn states(run: &Value) -> Vec<String> {
    run["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn task<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("task {name} in {run}"))
}

async fn server(backend: Backend) -> Server {
    Server::start(ServerOptions::new(backend)).await
}

async fn trigger_with(s: &Server, pipeline: &str, sha: &str, no_cache: bool) -> String {
    let d = s
        .data(
            "mutation($p: ID!, $s: String!, $n: Boolean!) { triggerRun(input: {pipeline: $p, sha: $s, ref: \"refs/heads/main\", noCache: $n}) { id } }",
            json!({ "p": pipeline, "s": sha, "n": no_cache }),
        )
        .await;
    d["triggerRun"]["id"].as_str().expect("run id").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_commit_triggered_twice_is_all_cached_and_runs_no_step() {
    for backend in backends().await {
        let s = server(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let p = s
            .create_pipeline("ci", "/src/app", &counting_pipeline(dir.path(), ""))
            .await;
        let first = s.trigger(&p, "abc123").await;
        let first = s.wait_run(&first, WAIT).await;
        assert_eq!(first["state"], "SUCCEEDED", "{backend:?}: {first:#}");
        assert_eq!(
            (count(dir.path(), "build"), count(dir.path(), "test")),
            (1, 2)
        );

        let second = s.trigger(&p, "abc123").await;
        let second = s.wait_run(&second, WAIT).await;
        assert_eq!(second["state"], "SUCCEEDED", "{backend:?}");
        assert_eq!(
            states(&second),
            vec!["CACHED"; 3],
            "{backend:?}: {second:#}"
        );
        for t in second["tasks"].as_array().unwrap() {
            assert_eq!(t["attempts"], json!([]), "a cached task has no attempt");
            assert_eq!(
                t["cacheKey"],
                task(&first, t["name"].as_str().unwrap())["cacheKey"],
                "same inputs, same key"
            );
        }
        assert_eq!(
            (count(dir.path(), "build"), count(dir.path(), "test")),
            (1, 2),
            "{backend:?}: the second run ran no step"
        );

        // noCache ignores the hits and builds again.
        let third = trigger_with(&s, &p, "abc123", true).await;
        let third = s.wait_run(&third, WAIT).await;
        assert_eq!(states(&third), vec!["SUCCEEDED"; 3], "{backend:?}");
        assert_eq!(
            (count(dir.path(), "build"), count(dir.path(), "test")),
            (2, 4)
        );

        // Another commit is another build.
        let other = s.trigger(&p, "def456").await;
        let other = s.wait_run(&other, WAIT).await;
        assert_eq!(states(&other), vec!["SUCCEEDED"; 3], "{backend:?}");
        assert_eq!(count(dir.path(), "build"), 3);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runs_of_the_same_commit_triggered_together_run_each_step_once() {
    for backend in backends().await {
        let s = server(backend).await;
        let dir = tempfile::tempdir().unwrap();
        // The build is slow enough that the second run is planned while it runs.
        let d = dir.path().display();
        let file = format!(
            r#"
name: ci
jobs:
  build:
    steps:
      - run: echo build >> {d}/build; sleep 1
  test:
    needs: build
    steps:
      - run: echo test >> {d}/test
"#
        );
        let p = s.create_pipeline("ci", "/src/app", &file).await;
        let (a, b) = tokio::join!(s.trigger(&p, "abc123"), s.trigger(&p, "abc123"));
        let (a, b) = tokio::join!(s.wait_run(&a, WAIT), s.wait_run(&b, WAIT));
        assert_eq!(a["state"], "SUCCEEDED", "{backend:?}: {a:#}");
        assert_eq!(b["state"], "SUCCEEDED", "{backend:?}: {b:#}");
        assert_eq!(
            (count(dir.path(), "build"), count(dir.path(), "test")),
            (1, 1),
            "{backend:?}: each step ran once"
        );
        let mut all: Vec<String> = states(&a);
        all.extend(states(&b));
        all.sort();
        assert_eq!(all, vec!["CACHED", "CACHED", "SUCCEEDED", "SUCCEEDED"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_task_runs_itself_when_the_build_it_waits_for_fails() {
    for backend in backends().await {
        let s = server(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        // The first execution fails, later ones succeed.
        let file = format!(
            r#"
name: ci
jobs:
  build:
    steps:
      - run: echo build >> {d}/build; sleep 1; if [ ! -e {d}/failed ]; then touch {d}/failed; exit 3; fi
"#
        );
        let p = s.create_pipeline("ci", "/src/app", &file).await;
        let (a, b) = tokio::join!(s.trigger(&p, "abc123"), s.trigger(&p, "abc123"));
        let (a, b) = tokio::join!(s.wait_run(&a, WAIT), s.wait_run(&b, WAIT));
        let mut ends = vec![
            a["state"].as_str().unwrap().to_owned(),
            b["state"].as_str().unwrap().to_owned(),
        ];
        ends.sort();
        assert_eq!(
            ends,
            vec!["FAILED", "SUCCEEDED"],
            "{backend:?}: {a:#} {b:#}"
        );
        assert_eq!(count(dir.path(), "build"), 2, "{backend:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rerun_failed_re_executes_only_the_failed_job_and_its_dependents() {
    for backend in backends().await {
        let s = server(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let file = format!(
            r#"
name: ci
jobs:
  lint:
    steps:
      - run: echo lint >> {d}/lint
  build:
    steps:
      - run: echo build >> {d}/build
  flaky:
    needs: build
    steps:
      - run: echo flaky >> {d}/flaky; if [ ! -e {d}/failed ]; then touch {d}/failed; exit 1; fi
  deploy:
    needs: flaky
    steps:
      - run: echo deploy >> {d}/deploy
  docs:
    needs: build
    cache: false
    steps:
      - run: echo docs >> {d}/docs
"#
        );
        let p = s.create_pipeline("ci", "/src/app", &file).await;
        let first = s.trigger(&p, "abc123").await;
        let first = s.wait_run(&first, WAIT).await;
        assert_eq!(first["state"], "FAILED", "{backend:?}");
        assert_eq!(task(&first, "deploy")["state"], "SKIPPED");

        let d = s
            .data(
                "mutation($r: ID!) { rerunFailed(run: $r) { id number sha ref } }",
                json!({ "r": first["id"] }),
            )
            .await;
        let rerun = &d["rerunFailed"];
        assert_ne!(rerun["id"], first["id"]);
        assert_eq!(rerun["sha"], "abc123");
        let second = s.wait_run(rerun["id"].as_str().unwrap(), WAIT).await;
        assert_eq!(second["state"], "SUCCEEDED", "{backend:?}: {second:#}");
        for (name, state) in [
            ("lint", "CACHED"),
            ("build", "CACHED"),
            ("docs", "CACHED"),
            ("flaky", "SUCCEEDED"),
            ("deploy", "SUCCEEDED"),
        ] {
            assert_eq!(task(&second, name)["state"], state, "{backend:?} {name}");
        }
        let runs: Vec<usize> = ["lint", "build", "docs", "flaky", "deploy"]
            .iter()
            .map(|n| count(dir.path(), n))
            .collect();
        assert_eq!(runs, vec![1, 1, 1, 2, 1], "{backend:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_step_or_env_changes_the_key_and_builds_again() {
    for backend in backends().await {
        let s = server(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let p = s
            .create_pipeline("ci", "/src/app", &counting_pipeline(dir.path(), ""))
            .await;
        let first = s.trigger(&p, "abc123").await;
        let first = s.wait_run(&first, WAIT).await;

        // A new top-level env changes every key.
        let file = counting_pipeline(dir.path(), "env: { MODE: release }");
        s.data(
            "mutation($id: ID!, $f: String!) { updatePipeline(input: {id: $id, file: $f}) { id } }",
            json!({ "id": p, "f": file }),
        )
        .await;
        let second = s.trigger(&p, "abc123").await;
        let second = s.wait_run(&second, WAIT).await;
        assert_eq!(states(&second), vec!["SUCCEEDED"; 3], "{backend:?}");
        assert_ne!(
            task(&first, "build")["cacheKey"],
            task(&second, "build")["cacheKey"]
        );
        assert_eq!(
            (count(dir.path(), "build"), count(dir.path(), "test")),
            (2, 4)
        );

        // A changed step of `test` rebuilds `test` only.
        let file = counting_pipeline(dir.path(), "env: { MODE: release }")
            .replace("echo test", "echo changed-test");
        s.data(
            "mutation($id: ID!, $f: String!) { updatePipeline(input: {id: $id, file: $f}) { id } }",
            json!({ "id": p, "f": file }),
        )
        .await;
        let third = s.trigger(&p, "abc123").await;
        let third = s.wait_run(&third, WAIT).await;
        assert_eq!(task(&third, "build")["state"], "CACHED", "{backend:?}");
        assert_eq!(task(&third, "test (shard=1)")["state"], "SUCCEEDED");
        assert_eq!(
            (count(dir.path(), "build"), count(dir.path(), "test")),
            (2, 6)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_entry_is_rebuilt() {
    for backend in backends().await {
        let s = server(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let p = s
            .create_pipeline(
                "ci",
                "/src/app",
                &counting_pipeline(dir.path(), "cache: { ttl: 1ms }"),
            )
            .await;
        let first = s.trigger(&p, "abc123").await;
        s.wait_run(&first, WAIT).await;
        let second = s.trigger(&p, "abc123").await;
        let second = s.wait_run(&second, WAIT).await;
        assert_eq!(states(&second), vec!["SUCCEEDED"; 3], "{backend:?}");
        assert_eq!(
            (count(dir.path(), "build"), count(dir.path(), "test")),
            (2, 4)
        );
    }
}

/// A pipeline of 1,000 jobs in 10 layers of 100; each job after the first layer needs
/// one job of the layer before.
fn thousand_jobs(extra: &str) -> String {
    let mut f = format!("name: wide\n{extra}\njobs:\n");
    for layer in 0..10 {
        for k in 0..100 {
            f.push_str(&format!("  j{layer}_{k}:\n"));
            if layer > 0 {
                f.push_str(&format!("    needs: j{}_{k}\n", layer - 1));
            }
            f.push_str("    steps:\n      - run: \"true\"\n");
        }
    }
    f
}

async fn timed_trigger(s: &Server, pipeline: &str, sha: &str) -> (String, Duration) {
    let started = std::time::Instant::now();
    let id = s.trigger(pipeline, sha).await;
    (id, started.elapsed())
}

/// Prints the time to plan a fully cached 1,000-job pipeline (the `triggerRun` round
/// trip, which includes planning in one transaction) and the overhead of a cache hit per
/// task against planning the same pipeline without cache. Figures, not assertions: run
/// by hand with `--ignored`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run by hand"]
async fn bench_planning_a_fully_cached_1000_job_pipeline() {
    let mut o = ServerOptions::new(Backend::Sqlite);
    o.workers = 4;
    let s = Server::start(o).await;
    let p = s
        .create_pipeline("wide", "/src/app", &thousand_jobs(""))
        .await;
    let built = std::time::Instant::now();
    let (first, _) = timed_trigger(&s, &p, "abc123").await;
    let first = s.wait_run(&first, Duration::from_secs(900)).await;
    assert_eq!(first["state"], "SUCCEEDED");
    println!(
        "building 1,000 trivial jobs with 4 workers: {:.1} s",
        built.elapsed().as_secs_f64()
    );

    let mut cached = Vec::new();
    for _ in 0..5 {
        let (id, took) = timed_trigger(&s, &p, "abc123").await;
        let run = s.run(&id).await;
        assert_eq!(
            run["state"], "SUCCEEDED",
            "a fully cached run is done when planned"
        );
        assert!(states(&run).iter().all(|t| t == "CACHED"));
        cached.push(took);
    }

    // The same file without cache, on a server without workers: planning only.
    let mut o = ServerOptions::new(Backend::Sqlite);
    o.workers = 0;
    let bare = Server::start(o).await;
    let q = bare
        .create_pipeline("wide", "/src/app", &thousand_jobs("cache: false"))
        .await;
    let mut uncached = Vec::new();
    for i in 0..5 {
        let (_, took) = timed_trigger(&bare, &q, &format!("sha{i}")).await;
        uncached.push(took);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let c = median(&mut cached);
    let u = median(&mut uncached);
    println!(
        "planning 1,000 jobs (triggerRun round trip, median of 5): fully cached {:.1} ms, without cache {:.1} ms; cache-hit overhead {:.1} µs per task",
        c.as_secs_f64() * 1e3,
        u.as_secs_f64() * 1e3,
        (c.as_secs_f64() - u.as_secs_f64()) * 1e6 / 1000.0
    );
}
