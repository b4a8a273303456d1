//! Foundation: the data model through the API on every backend, refusals that leave
//! nothing behind, the schema contract, health endpoints.

use gantry_tests::{Backend, Server, ServerOptions, backends};
use serde_json::{Value, json};

const CI_FILE: &str = r#"
name: ci
jobs:
  build:
    runs-on: linux
    steps:
      - run: echo build
  test:
    needs: build
    strategy: { matrix: { shard: [1, 2] } }
    steps:
      - run: echo ${{ matrix.shard }}
  lint:
    steps:
      - run: echo lint
"#;

async fn idle_server(backend: Backend) -> Server {
    let mut o = ServerOptions::new(backend);
    o.workers = 0;
    Server::start(o).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_triggered_run_reads_back_with_its_tasks_attempts_and_events() {
    for backend in backends().await {
        let s = idle_server(backend).await;
        let tenant = s
            .data(
                r#"mutation { createTenant(input: {name: "acme", weight: 2, maxRunning: 5, triggerRate: 2, triggerBurst: 5}) { id name weight maxRunning } }"#,
                json!({}),
            )
            .await;
        assert_eq!(tenant["createTenant"]["weight"], 2, "{backend:?}");
        let d = s
            .data(
                "mutation($f: String!) { createPipeline(input: {tenant: \"acme\", name: \"ci\", provider: GIT, repository: \"/src/app\", file: $f}) { id tenant { name } } }",
                json!({ "f": CI_FILE }),
            )
            .await;
        assert_eq!(d["createPipeline"]["tenant"]["name"], "acme");
        let pipeline = d["createPipeline"]["id"].as_str().unwrap().to_owned();
        let run_id = s.trigger(&pipeline, "0123abcd").await;
        let run = s.run(&run_id).await;

        assert_eq!(run["state"], "QUEUED", "{backend:?}");
        assert_eq!(run["number"], 1);
        assert_eq!(run["sha"], "0123abcd");
        assert_eq!(run["ref"], "refs/heads/main");
        let tasks = run["tasks"].as_array().unwrap();
        let names: Vec<&str> = tasks.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names.len(), 4);
        for n in ["build", "test (shard=1)", "test (shard=2)", "lint"] {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
        let by_name = |n: &str| tasks.iter().find(|t| t["name"] == n).unwrap().clone();
        assert_eq!(by_name("build")["state"], "READY");
        assert_eq!(by_name("build")["queue"], "linux");
        assert_eq!(by_name("lint")["queue"], "default");
        assert_eq!(by_name("test (shard=1)")["state"], "BLOCKED");
        assert_eq!(by_name("test (shard=1)")["needs"], json!(["build"]));
        assert_eq!(
            by_name("test (shard=1)")["waitingReason"],
            "blocked on upstream tasks: build"
        );
        // First attempts exist for the tasks that can start, queued.
        assert_eq!(by_name("build")["attempts"][0]["index"], 1);
        assert_eq!(by_name("build")["attempts"][0]["state"], "QUEUED");
        assert_eq!(by_name("test (shard=1)")["attempts"], json!([]));
        assert!(
            by_name("lint")["waitingReason"]
                .as_str()
                .unwrap()
                .starts_with("no live worker serves queue"),
            "{}",
            by_name("lint")["waitingReason"]
        );

        // One event per created entity, in commit order, increasing.
        let events = run["events"].as_array().unwrap();
        assert_eq!(events.len(), 1 + 4 + 2, "{events:#?}");
        assert_eq!(events[0]["entity"], "RUN");
        assert_eq!(events[0]["to"], "QUEUED");
        let seqs: Vec<u64> = events
            .iter()
            .map(|e| e["seq"].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

        // The same run is listed, and the next trigger gets the next number.
        let runs = s
            .data(
                "query($p: ID!) { runs(filter: {pipeline: $p}) { edges { node { id number } } } }",
                json!({ "p": pipeline }),
            )
            .await;
        assert_eq!(runs["runs"]["edges"][0]["node"]["id"], run_id.as_str());
        let second = s.trigger(&pipeline, "0123abcd").await;
        assert_eq!(s.run(&second).await["number"], 2);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_returns_the_run_it_created_first() {
    for backend in backends().await {
        let s = idle_server(backend).await;
        let p = s.create_pipeline("ci", "/src", CI_FILE).await;
        let q = "mutation($p: ID!, $k: String) { triggerRun(input: {pipeline: $p, sha: \"a\", ref: \"main\", idempotencyKey: $k}) { id } }";
        let a = s.data(q, json!({ "p": p, "k": "push-1" })).await["triggerRun"]["id"].clone();
        let b = s.data(q, json!({ "p": p, "k": "push-1" })).await["triggerRun"]["id"].clone();
        let c = s.data(q, json!({ "p": p, "k": "push-2" })).await["triggerRun"]["id"].clone();
        let d = s.data(q, json!({ "p": p, "k": null })).await["triggerRun"]["id"].clone();
        let e = s.data(q, json!({ "p": p, "k": null })).await["triggerRun"]["id"].clone();
        assert_eq!(a, b, "{backend:?}");
        assert_ne!(a, c);
        assert_ne!(d, e, "without a key every trigger is a new run");
    }
}

fn code(res: &Value) -> &str {
    res["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("<no error>")
}

fn message(res: &Value) -> String {
    res["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Counts of what the database holds, read through the API.
async fn counts(s: &Server) -> (usize, usize, usize) {
    let d = s
        .data("{ pipelines(first: 500) { edges { node { id } } } runs(first: 500) { edges { node { id } } } events(first: 500) { edges { node { seq } } } }", json!({}))
        .await;
    let n = |k: &str| d[k]["edges"].as_array().unwrap().len();
    (n("pipelines"), n("runs"), n("events"))
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_whole_with_a_clear_code() {
    for backend in backends().await {
        let s = idle_server(backend).await;
        let create = "mutation($f: String!) { createPipeline(input: {name: \"p\", provider: GIT, repository: \"/r\", file: $f}) { id } }";
        let before = counts(&s).await;

        let invalid_yaml = s.gql(create, json!({ "f": "jobs: [unclosed" })).await;
        assert_eq!(code(&invalid_yaml), "INVALID_PIPELINE", "{invalid_yaml}");

        let unknown_key = s
            .gql(
                create,
                json!({ "f": "jobs:\n  a:\n    stepz:\n      - run: x\n" }),
            )
            .await;
        assert_eq!(code(&unknown_key), "INVALID_PIPELINE");
        assert!(message(&unknown_key).contains("stepz"), "{unknown_key}");
        let located = unknown_key["errors"][0]["extensions"]["errors"]
            .as_array()
            .unwrap()
            .clone();
        assert!(
            located
                .iter()
                .any(|e| e["line"] == 3 && e["message"].as_str().unwrap().contains("stepz")),
            "{unknown_key}"
        );

        let cycle = s
            .gql(
                create,
                json!({ "f": "jobs:\n  a:\n    needs: c\n    steps: [{run: x}]\n  b:\n    needs: a\n    steps: [{run: x}]\n  c:\n    needs: b\n    steps: [{run: x}]\n" }),
            )
            .await;
        assert_eq!(code(&cycle), "INVALID_PIPELINE");
        let text = message(&cycle);
        for job in ["a", "b", "c"] {
            assert!(text.contains(job), "cycle message names {job}: {text}");
        }
        assert!(text.contains("cycle"), "{text}");

        let missing = s
            .gql(create, json!({ "f": "jobs:\n  a:\n    steps: [{run: x}]\n  b:\n    needs: [a, nope]\n    steps: [{run: x}]\n" }))
            .await;
        assert_eq!(code(&missing), "INVALID_PIPELINE");
        assert!(message(&missing).contains("nope"), "{missing}");
        let located = missing["errors"][0]["extensions"]["errors"]
            .as_array()
            .unwrap()
            .clone();
        assert!(located.iter().any(|e| e["line"] == 5), "{missing}");

        let huge = s
            .gql(
                create,
                json!({ "f": "jobs:\n  a:\n    strategy:\n      matrix:\n        x: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]\n        y: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]\n    steps: [{run: x}]\n" }),
            )
            .await;
        assert_eq!(code(&huge), "INVALID_PIPELINE");
        assert!(message(&huge).contains("256"), "{huge}");

        let unknown_run = s
            .gql(
                "{ run(id: \"00000000-0000-0000-0000-000000000000\") { id } }",
                json!({}),
            )
            .await;
        assert_eq!(code(&unknown_run), "NOT_FOUND");
        let garbage_id = s.gql("{ task(id: \"nope\") { id } }", json!({})).await;
        assert_eq!(code(&garbage_id), "NOT_FOUND");
        let trigger_unknown = s
            .gql("mutation { triggerRun(input: {pipeline: \"nope\", sha: \"a\", ref: \"main\"}) { id } }", json!({}))
            .await;
        assert_eq!(code(&trigger_unknown), "NOT_FOUND");

        // Nothing of any refused request was written.
        assert_eq!(counts(&s).await, before, "{backend:?}");

        // A refused trigger of an existing pipeline writes no run and no event either.
        let p = s.create_pipeline("ok", "/r", CI_FILE).await;
        let after_create = counts(&s).await;
        let bad_sha = s
            .gql("mutation($p: ID!) { triggerRun(input: {pipeline: $p, sha: \"has space\", ref: \"main\"}) { id } }", json!({ "p": p }))
            .await;
        assert_eq!(code(&bad_sha), "BAD_USER_INPUT");
        assert_eq!(counts(&s).await, after_create);

        let no_token = s
            .gql_as(None, "{ runs { edges { node { id } } } }", json!({}))
            .await;
        assert_eq!(code(&no_token), "UNAUTHENTICATED");
        let bad_token = s
            .gql_as(
                Some("wrong"),
                "{ runs { edges { node { id } } } }",
                json!({}),
            )
            .await;
        assert_eq!(code(&bad_token), "UNAUTHENTICATED");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness_answer() {
    let s = idle_server(Backend::Sqlite).await;
    assert!(s.get("/healthz").await.status().is_success());
    let ready = s.get("/readyz").await;
    assert!(ready.status().is_success());
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert!(
        s.get("/graphiql")
            .await
            .text()
            .await
            .unwrap()
            .contains("graphiql")
    );
}

#[test]
fn schema_file_matches_the_server() {
    let out = std::process::Command::new(gantry_tests::gantry_bin())
        .arg("schema")
        .output()
        .expect("run gantry schema");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let committed =
        std::fs::read_to_string(gantry_tests::repo_root().join("schema.graphql")).unwrap();
    assert!(
        printed == committed,
        "schema.graphql drifted from the server: run `gantry schema > schema.graphql`"
    );
}
