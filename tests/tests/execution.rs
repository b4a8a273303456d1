//! Execution end to end with real processes: DAG order, retries, cancellation of process
//! trees, timeouts, fencing, concurrency groups, and a remote agent beside in-process
//! workers — on SQLite and PostgreSQL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use gantry_tests::{ADMIN_TOKEN, Backend, Server, ServerOptions, backends, ws};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(90);

fn ts(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("timestamp expected, got {v}"))
        .parse()
        .unwrap()
}

fn task<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {run:#}"))
}

fn code(res: &Value) -> &str {
    res["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("<no error>")
}

#[tokio::test(flavor = "multi_thread")]
async fn no_task_starts_before_all_its_needs_succeeded() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let file = r#"
jobs:
  a: { steps: [{run: "sleep 0.2"}] }
  b: { needs: a, steps: [{run: "true"}] }
  c: { needs: a, steps: [{run: "sleep 0.1"}] }
  d: { needs: [b, c], steps: [{run: "true"}] }
  e: { needs: d, strategy: { matrix: { n: [1, 2, 3] } }, steps: [{run: "true"}] }
  f: { needs: e, steps: [{run: "true"}] }
"#;
        let p = s.create_pipeline("dag", "/tmp", file).await;
        let run_id = s.trigger(&p, "abc").await;
        let run = s.wait_run(&run_id, WITHIN).await;
        assert_eq!(run["state"], "SUCCEEDED", "{backend:?}: {run:#}");
        for t in run["tasks"].as_array().unwrap() {
            assert_eq!(t["state"], "SUCCEEDED", "{t}");
            let started = ts(&t["startedAt"]);
            for need in t["needs"].as_array().unwrap() {
                let n = task(&run, need.as_str().unwrap());
                assert!(
                    ts(&n["finishedAt"]) <= started,
                    "{} started before its need {} finished",
                    t["name"],
                    n["name"]
                );
            }
        }
        // The run's last event is its terminal one.
        let events = run["events"].as_array().unwrap();
        assert_eq!(events.last().unwrap()["entity"], "RUN");
        assert_eq!(events.last().unwrap()["to"], "SUCCEEDED");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flaky_step_is_retried_as_a_new_attempt_with_its_error_recorded() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let marker = tempfile::tempdir().unwrap();
        let mark = marker.path().join("tried");
        let file = format!(
            r#"
jobs:
  flaky:
    retry: {{ max-attempts: 3, on: [exit], backoff: {{ initial: 200ms, factor: 2, max: 1s }} }}
    steps:
      - run: |
          if [ -f {m} ]; then echo second try; exit 0; fi
          touch {m}; echo first try; exit 7
  never:
    retry: {{ max-attempts: 2, on: [exit] }}
    steps: [{{run: "exit 4"}}]
  after:
    needs: flaky
    steps: [{{run: "true"}}]
"#,
            m = mark.display()
        );
        let p = s.create_pipeline("flaky", "/tmp", &file).await;
        let run_id = s.trigger(&p, "abc").await;
        let run = s.wait_run(&run_id, WITHIN).await;
        assert_eq!(run["state"], "FAILED", "one task fails for good: {run:#}");

        let flaky = task(&run, "flaky");
        assert_eq!(flaky["state"], "SUCCEEDED");
        let attempts = flaky["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{attempts:#?}");
        assert_eq!(attempts[0]["index"], 1);
        assert_eq!(attempts[0]["state"], "FAILED");
        assert_eq!(attempts[0]["errorKind"], "EXIT");
        assert_eq!(attempts[0]["exitCode"], 7);
        assert!(attempts[0]["log"].as_str().unwrap().contains("first try"));
        assert_eq!(attempts[1]["index"], 2);
        assert_eq!(attempts[1]["state"], "SUCCEEDED");
        let backoff = attempts[1]["backoffMs"].as_i64().unwrap();
        assert!(
            (0..=200).contains(&backoff),
            "full jitter within the first backoff: {backoff}"
        );
        assert!(ts(&attempts[1]["scheduledAt"]) >= ts(&attempts[0]["finishedAt"]));
        assert!(ts(&attempts[1]["startedAt"]) >= ts(&attempts[1]["scheduledAt"]));

        // One event for the failure and one for the scheduled retry, naming policy and time.
        let events = run["events"].as_array().unwrap();
        let retry = events
            .iter()
            .find(|e| e["attempt"] == attempts[1]["id"] && e["from"].is_null())
            .expect("retry scheduled event");
        assert_eq!(retry["to"], "SCHEDULED");
        assert_eq!(retry["details"]["errorKind"], "exit");
        assert_eq!(retry["details"]["exitCode"], 7);
        assert_eq!(retry["details"]["policy"]["maxAttempts"], 3);
        assert!(retry["details"]["nextAt"].is_string());
        let failure = events
            .iter()
            .find(|e| e["attempt"] == attempts[0]["id"] && e["to"] == "FAILED")
            .expect("failure event");
        assert_eq!(failure["details"]["exitCode"], 7);

        // max-attempts counts attempts: two tries, then the task fails for good.
        let never = task(&run, "never");
        assert_eq!(never["state"], "FAILED");
        assert_eq!(never["attempts"].as_array().unwrap().len(), 2);
        assert_eq!(task(&run, "after")["state"], "SUCCEEDED");
    }
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_a_step_that_ignores_sigterm_and_its_children() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let file = format!(
            r#"
jobs:
  stubborn:
    steps:
      - run: |
          trap '' TERM
          sh -c 'trap "" TERM; sleep 300' &
          echo $! > {pids}
          echo $$ >> {pids}
          echo ready
          sleep 300
  later:
    needs: stubborn
    steps: [{{run: "true"}}]
"#,
            pids = pids.display()
        );
        let p = s.create_pipeline("cancel", "/tmp", &file).await;
        let run_id = s.trigger(&p, "abc").await;
        let started = ws::wait_event(&s, &run_id, WITHIN, |e| {
            e["entity"] == "ATTEMPT" && e["to"] == "RUNNING"
        })
        .await;
        let attempt = started["entityId"].as_str().unwrap().to_owned();
        ws::wait_log(&s, &attempt, "ready", WITHIN).await;
        let recorded: Vec<i32> = std::fs::read_to_string(&pids)
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(recorded.len(), 2);
        assert!(recorded.iter().all(|p| alive(*p)));

        let res = s
            .gql(
                "mutation($r: ID!) { cancelRun(id: $r) { state } }",
                json!({ "r": run_id }),
            )
            .await;
        assert!(res.get("errors").is_none(), "{res}");
        let run = s.wait_run(&run_id, WITHIN).await;
        assert_eq!(run["state"], "CANCELLED", "{backend:?}: {run:#}");
        assert_eq!(task(&run, "stubborn")["state"], "CANCELLED");
        assert_eq!(task(&run, "later")["state"], "CANCELLED");
        let a = &task(&run, "stubborn")["attempts"][0];
        assert_eq!(a["state"], "CANCELLED");
        assert_eq!(a["errorKind"], "CANCELLED");
        for pid in recorded {
            assert!(!alive(pid), "process {pid} of the cancelled step survived");
        }
        let again = s
            .gql(
                "mutation($r: ID!) { cancelRun(id: $r) { state } }",
                json!({ "r": run_id }),
            )
            .await;
        assert_eq!(code(&again), "INVALID_TRANSITION");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_past_its_timeout_is_timed_out() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let file = "jobs:\n  slow:\n    timeout-minutes: 0.01\n    steps: [{run: \"sleep 60\"}]\n";
        let p = s.create_pipeline("timeout", "/tmp", file).await;
        let run_id = s.trigger(&p, "abc").await;
        let run = s.wait_run(&run_id, WITHIN).await;
        assert_eq!(run["state"], "FAILED", "{backend:?}");
        let t = task(&run, "slow");
        assert_eq!(t["state"], "FAILED");
        let attempts = t["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "timeouts are not retried by default");
        assert_eq!(attempts[0]["state"], "TIMED_OUT");
        assert_eq!(attempts[0]["errorKind"], "TIMEOUT");
        let took = ts(&attempts[0]["finishedAt"]) - ts(&attempts[0]["startedAt"]);
        assert!(
            took.num_seconds() < 30,
            "stopped at its timeout, not at the end of the step"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_lease_token_is_refused() {
    for backend in backends().await {
        let mut o = ServerOptions::new(backend);
        o.workers = 0;
        let s = Server::start(o).await;
        let p = s
            .create_pipeline(
                "fence",
                "/tmp",
                "jobs:\n  a:\n    steps: [{run: \"true\"}]\n",
            )
            .await;
        s.trigger(&p, "abc").await;
        let w = s
            .data(
                "mutation { registerWorker(input: {name: \"w\", queues: [\"default\"]}) { id } }",
                json!({}),
            )
            .await["registerWorker"]["id"]
            .clone();
        let lease = s
            .data(
                "mutation($w: ID!) { leaseAttempt(worker: $w, queue: \"default\", waitMs: 5000) { leaseToken attempt { id state } } }",
                json!({ "w": w }),
            )
            .await["leaseAttempt"]
            .clone();
        assert_eq!(lease["attempt"]["state"], "RUNNING");
        let attempt = lease["attempt"]["id"].clone();
        let token = lease["leaseToken"].clone();
        let hb =
            "mutation($a: ID!, $t: String!) { heartbeat(attempt: $a, leaseToken: $t) { cancel } }";
        let forged = s.gql(hb, json!({ "a": attempt, "t": "forged" })).await;
        assert_eq!(code(&forged), "CONFLICT", "{backend:?}");
        assert!(
            s.gql(hb, json!({ "a": attempt, "t": token }))
                .await
                .get("errors")
                .is_none()
        );

        let complete = "mutation($a: ID!, $t: String!) { completeAttempt(input: {attempt: $a, leaseToken: $t}) { state } }";
        let done = s.data(complete, json!({ "a": attempt, "t": token })).await;
        assert_eq!(done["completeAttempt"]["state"], "SUCCEEDED");
        for q in [hb, complete] {
            let late = s.gql(q, json!({ "a": attempt, "t": token })).await;
            assert_eq!(
                code(&late),
                "CONFLICT",
                "a call with the old token after the decision: {late}"
            );
        }
        let log = s
            .gql(
                "mutation($a: ID!, $t: String!) { appendLog(attempt: $a, leaseToken: $t, chunks: [{stream: \"stdout\", data: \"late\"}]) }",
                json!({ "a": attempt, "t": token }),
            )
            .await;
        assert_eq!(code(&log), "CONFLICT");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_groups_cancel_in_progress_or_queue_without_dropping() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("gate");
        let wait_gate = format!("while [ ! -f {} ]; do sleep 0.05; done", gate.display());

        // cancel-in-progress: the newer run cancels the older one.
        let cancelling = format!(
            "concurrency: {{ group: \"deploy-${{{{ ref }}}}\", cancel-in-progress: true }}\njobs:\n  a:\n    steps: [{{run: \"echo started; {wait_gate}\"}}]\n"
        );
        let p = s.create_pipeline("cip", "/tmp", &cancelling).await;
        let first = s.trigger(&p, "one").await;
        ws::wait_event(&s, &first, WITHIN, |e| {
            e["entity"] == "ATTEMPT" && e["to"] == "RUNNING"
        })
        .await;
        let second = s.trigger(&p, "two").await;
        let r1 = s.wait_run(&first, WITHIN).await;
        assert_eq!(r1["state"], "CANCELLED", "{backend:?}");
        std::fs::write(&gate, "").unwrap();
        let r2 = s.wait_run(&second, WITHIN).await;
        assert_eq!(r2["state"], "SUCCEEDED");
        std::fs::remove_file(&gate).unwrap();

        // Without it: a strict queue; no waiting run is dropped, order kept.
        let queued = format!(
            "concurrency: {{ group: \"release\" }}\njobs:\n  a:\n    steps: [{{run: \"{wait_gate}\"}}]\n"
        );
        let q = s.create_pipeline("queue", "/tmp", &queued).await;
        let runs: Vec<String> = futures_ids(&s, &q, 3).await;
        ws::wait_event(&s, &runs[0], WITHIN, |e| {
            e["entity"] == "ATTEMPT" && e["to"] == "RUNNING"
        })
        .await;
        for held in &runs[1..] {
            let r = s.run(held).await;
            assert_eq!(r["state"], "QUEUED");
            let reason = r["tasks"][0]["waitingReason"].as_str().unwrap().to_owned();
            assert!(reason.contains("concurrency group"), "{reason}");
        }
        std::fs::write(&gate, "").unwrap();
        let mut finished = Vec::new();
        for id in &runs {
            let r = s.wait_run(id, WITHIN).await;
            assert_eq!(r["state"], "SUCCEEDED", "{r:#}");
            finished.push(r);
        }
        for pair in finished.windows(2) {
            assert!(
                ts(&pair[0]["finishedAt"]) <= ts(&pair[1]["startedAt"]),
                "runs of one group never overlap and keep their order"
            );
        }
    }
}

async fn futures_ids(s: &Server, pipeline: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(s.trigger(pipeline, &format!("sha{i}")).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_agent_runs_its_queue_while_in_process_workers_run_others() {
    let backend = Backend::Sqlite;
    let s = Server::start(ServerOptions::new(backend)).await;
    let workspace = tempfile::tempdir().unwrap();
    let mut agent = tokio::process::Command::new(gantry_tests::gantry_bin())
        .args([
            "agent",
            "--server",
            &s.url,
            "--token",
            ADMIN_TOKEN,
            "--queue",
            "remote",
            "--name",
            "agent-1",
        ])
        .arg("--workspace")
        .arg(workspace.path())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn agent");
    let (repo, sha) = gantry_tests::git_repo(&[("hello.txt", "from the repository\n")]);
    let file = r#"
jobs:
  local:
    steps: [{run: "echo local"}]
  remote:
    runs-on: remote
    needs: local
    steps:
      - uses: actions/checkout@v4
      - run: cat hello.txt
"#;
    let p = s
        .create_pipeline("mixed", repo.path().to_str().unwrap(), file)
        .await;
    let run_id = s.trigger(&p, &sha).await;
    let run = s.wait_run(&run_id, WITHIN).await;
    assert_eq!(run["state"], "SUCCEEDED", "{run:#}");
    let workers = s
        .data("{ workers { id name kind queues } }", json!({}))
        .await["workers"]
        .clone();
    let worker_of = |t: &str| {
        let id = task(&run, t)["attempts"][0]["worker"].clone();
        workers
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(worker_of("remote")["kind"], "agent");
    assert_eq!(worker_of("remote")["name"], "agent-1");
    assert_eq!(worker_of("local")["kind"], "in_process");
    let log = task(&run, "remote")["attempts"][0]["log"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(log.contains("from the repository"), "{log}");
    let _ = agent.start_kill();
    let _ = agent.wait().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_task_by_hand_adds_an_attempt_and_replans_what_was_skipped() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let marker = tempfile::tempdir().unwrap();
        let mark = marker.path().join("fixed");
        let file = format!(
            "jobs:\n  build:\n    steps: [{{run: \"test -f {m}\"}}]\n  deploy:\n    needs: build\n    steps: [{{run: \"true\"}}]\n",
            m = mark.display()
        );
        let p = s.create_pipeline("manual", "/tmp", &file).await;
        let run_id = s.trigger(&p, "abc").await;
        let run = s.wait_run(&run_id, WITHIN).await;
        assert_eq!(run["state"], "FAILED", "{backend:?}");
        assert_eq!(task(&run, "deploy")["state"], "SKIPPED");
        let build = task(&run, "build")["id"].clone();

        let last_seq = run["events"].as_array().unwrap().last().unwrap()["seq"]
            .as_str()
            .unwrap()
            .to_owned();
        std::fs::write(&mark, "").unwrap();
        let retried = s
            .data(
                "mutation($t: ID!) { retryTask(id: $t) { state attempts { index state } } }",
                json!({ "t": build }),
            )
            .await;
        assert_eq!(retried["retryTask"]["attempts"][1]["index"], 2);
        let run = s.wait_run_after(&run_id, Some(&last_seq), WITHIN).await;
        assert_eq!(run["state"], "SUCCEEDED", "{run:#}");
        assert_eq!(task(&run, "build")["attempts"][1]["state"], "SUCCEEDED");
        assert_eq!(task(&run, "deploy")["state"], "SUCCEEDED");

        let again = s
            .gql(
                "mutation($t: ID!) { retryTask(id: $t) { state } }",
                json!({ "t": build }),
            )
            .await;
        assert_eq!(
            code(&again),
            "INVALID_TRANSITION",
            "only a failed task can be retried"
        );
    }
}
