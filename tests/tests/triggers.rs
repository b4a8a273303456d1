//! Trigger jobs end to end: a job that starts a run of another pipeline, waits for it (or
//! not) and takes its result; the link between the two runs in the API; the depth limit
//! that stops a pipeline triggering itself; cancellation and restarts — on SQLite and
//! PostgreSQL.

use std::time::Duration;

use gantry_tests::{Server, ServerOptions, backends, ws};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(90);

fn task<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {run:#}"))
}

/// A trigger task with its child run and the child's link back.
async fn trigger_task(s: &Server, task_id: &str) -> Value {
    s.data(
        "query($id: ID!) { task(id: $id) { id state
           attempts { state errorKind errorMessage log }
           childRun { id state sha ref trigger triggerDepth pipeline { name }
             parentTask { id name run { id } } } } }",
        json!({ "id": task_id }),
    )
    .await["task"]
        .clone()
}

/// Waits until a task of `run` enters `state` (replaying the run's events from the start).
async fn wait_task_state(s: &Server, run: &str, task_id: &str, state: &str) {
    ws::wait_event(s, run, WITHIN, |e| {
        e["entity"] == "TASK" && e["entityId"] == task_id && e["to"] == state
    })
    .await;
}

const PARENT: &str = r#"
jobs:
  build:
    steps: [{run: "true"}]
  deploy:
    needs: build
    trigger: {pipeline: child}
  after:
    needs: deploy
    steps: [{run: "true"}]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_parent_job_waits_for_its_child_pipeline_and_succeeds_with_it() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        s.create_pipeline(
            "child",
            "/tmp",
            "jobs:\n  work:\n    steps: [{run: \"sleep 0.3\"}]\n",
        )
        .await;
        let p = s.create_pipeline("parent", "/tmp", PARENT).await;
        let run_id = s.trigger(&p, "abc123").await;
        let run = s.wait_run(&run_id, WITHIN).await;
        assert_eq!(run["state"], "SUCCEEDED", "{backend:?}: {run:#}");
        let deploy = task(&run, "deploy");
        assert_eq!(deploy["queue"], "gantry:trigger");
        let t = trigger_task(&s, deploy["id"].as_str().unwrap()).await;
        let child = &t["childRun"];
        assert_eq!(child["state"], "SUCCEEDED", "{t:#}");
        assert_eq!(child["pipeline"]["name"], "child");
        assert_eq!(
            child["sha"], "abc123",
            "the child builds the parent's commit"
        );
        assert_eq!(child["ref"], "refs/heads/main");
        assert_eq!(child["trigger"], "upstream");
        assert_eq!(child["triggerDepth"], 1);
        assert_eq!(
            child["parentTask"]["id"], deploy["id"],
            "child links to its parent task"
        );
        assert_eq!(child["parentTask"]["run"]["id"], run_id.as_str());
        let attempt = &t["attempts"][0];
        assert_eq!(attempt["state"], "SUCCEEDED");
        let log = attempt["log"].as_str().unwrap();
        assert!(
            log.contains(child["id"].as_str().unwrap()) && log.contains("succeeded"),
            "the attempt's log names the child run: {log}"
        );
        // The downstream job started only once the child run had finished.
        let child_run = s.run(child["id"].as_str().unwrap()).await;
        let child_done: chrono::DateTime<chrono::Utc> =
            child_run["finishedAt"].as_str().unwrap().parse().unwrap();
        let after_started: chrono::DateTime<chrono::Utc> = task(&run, "after")["startedAt"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(child_done <= after_started, "{child_run:#} {run:#}");
        // A root run has no parent task.
        let root = s
            .data(
                "query($id: ID!) { run(id: $id) { parentTask { id } triggerDepth } }",
                json!({ "id": run_id }),
            )
            .await;
        assert_eq!(
            root["run"],
            json!({ "parentTask": null, "triggerDepth": 0 })
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parent_job_fails_when_its_child_pipeline_fails() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        s.create_pipeline(
            "child",
            "/tmp",
            "jobs:\n  work:\n    steps: [{run: \"exit 3\"}]\n",
        )
        .await;
        let p = s.create_pipeline("parent", "/tmp", PARENT).await;
        let run_id = s.trigger(&p, "abc123").await;
        let run = s.wait_run(&run_id, WITHIN).await;
        assert_eq!(run["state"], "FAILED", "{backend:?}: {run:#}");
        assert_eq!(task(&run, "after")["state"], "SKIPPED");
        let deploy = task(&run, "deploy");
        assert_eq!(deploy["state"], "FAILED");
        let t = trigger_task(&s, deploy["id"].as_str().unwrap()).await;
        assert_eq!(t["childRun"]["state"], "FAILED");
        let attempts = t["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "a trigger job is tried once: {t:#}");
        assert_eq!(attempts[0]["state"], "FAILED");
        assert_eq!(attempts[0]["errorKind"], "EXIT");
        let message = attempts[0]["errorMessage"].as_str().unwrap();
        assert!(
            message.starts_with("TRIGGER_FAILED")
                && message.contains(t["childRun"]["id"].as_str().unwrap())
                && message.contains("child #1"),
            "{message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_does_not_wait_succeeds_once_its_child_run_is_accepted() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let gate = tempfile::tempdir().unwrap();
        let open = gate.path().join("open");
        let child_file = format!(
            "jobs:\n  work:\n    steps: [{{run: \"while [ ! -e {} ]; do sleep 0.05; done\"}}]\n",
            open.display()
        );
        s.create_pipeline("child", "/tmp", &child_file).await;
        let p = s
            .create_pipeline(
                "parent",
                "/tmp",
                "jobs:\n  kick:\n    trigger: {pipeline: child, ref: refs/heads/release, wait: false}\n",
            )
            .await;
        let run_id = s.trigger(&p, "abc123").await;
        let run = s.wait_run(&run_id, WITHIN).await;
        assert_eq!(run["state"], "SUCCEEDED", "{backend:?}: {run:#}");
        let t = trigger_task(&s, task(&run, "kick")["id"].as_str().unwrap()).await;
        let child = &t["childRun"];
        assert!(
            matches!(child["state"].as_str(), Some("QUEUED" | "RUNNING")),
            "the parent did not wait for its child: {t:#}"
        );
        assert_eq!(child["ref"], "refs/heads/release");
        std::fs::write(&open, "").unwrap();
        let child = s.wait_run(child["id"].as_str().unwrap(), WITHIN).await;
        assert_eq!(child["state"], "SUCCEEDED");
        let again = s.run(&run_id).await;
        assert_eq!(
            again["state"], "SUCCEEDED",
            "the parent is not touched again"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_that_triggers_itself_stops_at_the_depth_limit() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let p = s
            .create_pipeline(
                "loop",
                "/tmp",
                "jobs:\n  again:\n    trigger: {pipeline: loop}\n",
            )
            .await;
        let run_id = s.trigger(&p, "abc123").await;
        let run = s.wait_run(&run_id, WITHIN).await;
        assert_eq!(run["state"], "FAILED", "{backend:?}: {run:#}");
        let runs = s
            .data(
                "query($p: ID!) { runs(filter: {pipeline: $p}, first: 100) { edges { node {
                   id state triggerDepth tasks { state attempts { errorMessage } } } } } }",
                json!({ "p": p }),
            )
            .await;
        let mut nodes: Vec<Value> = runs["runs"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"].clone())
            .collect();
        nodes.sort_by_key(|n| n["triggerDepth"].as_i64());
        let depths: Vec<i64> = nodes
            .iter()
            .map(|n| n["triggerDepth"].as_i64().unwrap())
            .collect();
        assert_eq!(depths, [0, 1, 2, 3, 4, 5], "depth 5 is the default limit");
        for n in &nodes {
            assert_eq!(n["state"], "FAILED", "{n:#}");
        }
        let deepest = nodes.last().unwrap();
        let message = deepest["tasks"][0]["attempts"][0]["errorMessage"]
            .as_str()
            .unwrap();
        assert!(
            message.starts_with("TRIGGER_DEPTH") && message.contains("limit of 5"),
            "{message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_naming_an_unknown_pipeline_is_refused_when_the_pipeline_is_stored() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let res = s
            .gql(
                "mutation($f: String!) { createPipeline(input: {name: \"parent\", provider: GIT, repository: \"/tmp\", file: $f}) { id } }",
                json!({ "f": "jobs:\n  a:\n    trigger: {pipeline: nope}\n" }),
            )
            .await;
        assert_eq!(
            res["errors"][0]["extensions"]["code"], "INVALID_PIPELINE",
            "{backend:?}: {res:#}"
        );
        let message = res["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("2:1") && message.contains("`nope`"),
            "{message}"
        );
        let listed = s
            .data("{ pipelines { edges { node { name } } } }", json!({}))
            .await;
        assert_eq!(
            listed["pipelines"]["edges"],
            json!([]),
            "nothing was stored"
        );
    }
}

/// A file whose single job blocks until `gate` exists.
fn blocking_child(gate: &std::path::Path) -> String {
    format!(
        "jobs:\n  work:\n    steps: [{{run: \"while [ ! -e {} ]; do sleep 0.05; done\"}}]\n",
        gate.display()
    )
}

/// Triggers `parent` and waits until its `deploy` task's child run has its task running;
/// returns `(parent run, deploy task id, child run id)`.
async fn parent_waiting_on_running_child(s: &Server, parent: &str) -> (String, String, String) {
    let run_id = s.trigger(parent, "abc123").await;
    // Tasks are planned when the run is accepted.
    let deploy_id = task(&s.run(&run_id).await, "deploy")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_task_state(s, &run_id, &deploy_id, "RUNNING").await;
    let child_id = trigger_task(s, &deploy_id).await["childRun"]["id"]
        .as_str()
        .expect("a running trigger task has its child run")
        .to_owned();
    ws::wait_event(s, &child_id, WITHIN, |e| {
        e["entity"] == "ATTEMPT" && e["to"] == "RUNNING"
    })
    .await;
    (run_id, deploy_id, child_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_the_parent_run_cancels_the_child_it_waits_for() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let gate = tempfile::tempdir().unwrap();
        s.create_pipeline("child", "/tmp", &blocking_child(&gate.path().join("never")))
            .await;
        let p = s
            .create_pipeline(
                "parent",
                "/tmp",
                "jobs:\n  deploy:\n    trigger: {pipeline: child}\n",
            )
            .await;
        let (run_id, deploy_id, child_id) = parent_waiting_on_running_child(&s, &p).await;
        s.data(
            "mutation($id: ID!) { cancelRun(id: $id) { id } }",
            json!({ "id": run_id }),
        )
        .await;
        let run = s.wait_run(&run_id, WITHIN).await;
        assert_eq!(run["state"], "CANCELLED", "{backend:?}: {run:#}");
        let child = s.wait_run(&child_id, WITHIN).await;
        assert_eq!(child["state"], "CANCELLED", "{child:#}");
        let t = trigger_task(&s, &deploy_id).await;
        assert_eq!(t["state"], "CANCELLED");
        assert_eq!(t["attempts"][0]["state"], "CANCELLED");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_parent_takes_its_child_result_after_a_restart() {
    for backend in backends().await {
        let mut s = Server::start(ServerOptions::new(backend)).await;
        let gate = tempfile::tempdir().unwrap();
        let open = gate.path().join("open");
        s.create_pipeline("child", "/tmp", &blocking_child(&open))
            .await;
        let p = s
            .create_pipeline(
                "parent",
                "/tmp",
                "jobs:\n  deploy:\n    trigger: {pipeline: child}\n",
            )
            .await;
        let (run_id, _, child_id) = parent_waiting_on_running_child(&s, &p).await;
        // Nothing survives in memory: the child's attempt is lost with the process and
        // retried after the restart, and its end reaches the parent through the database.
        s.kill9().await;
        std::fs::write(&open, "").unwrap();
        s.spawn(None).await;
        let child = s.wait_run(&child_id, WITHIN).await;
        assert_eq!(child["state"], "SUCCEEDED", "{backend:?}: {child:#}");
        let run = s.wait_run(&run_id, WITHIN).await;
        assert_eq!(run["state"], "SUCCEEDED", "{run:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_trigger_job_does_not_hold_its_tenants_only_slot() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        s.data(
            "mutation { createTenant(input: {name: \"small\", maxRunning: 1}) { id } }",
            json!({}),
        )
        .await;
        let create = "mutation($n: String!, $f: String!) { createPipeline(input: {tenant: \"small\", name: $n, provider: GIT, repository: \"/tmp\", file: $f}) { id } }";
        s.data(
            create,
            json!({ "n": "child", "f": "jobs:\n  work:\n    steps: [{run: \"true\"}]\n" }),
        )
        .await;
        let p = s
            .data(
                create,
                json!({ "n": "parent", "f": "jobs:\n  deploy:\n    trigger: {pipeline: child}\n" }),
            )
            .await["createPipeline"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        // With one slot, a waiting parent that held it would starve its own child forever.
        let run_id = s.trigger(&p, "abc123").await;
        let run = s.wait_run(&run_id, WITHIN).await;
        assert_eq!(run["state"], "SUCCEEDED", "{backend:?}: {run:#}");
    }
}
