//! Outbound status webhooks: run and task changes reach a real HTTP receiver, signed with
//! HMAC-SHA256, retried after a 500, recorded in the delivery log; and the GitHub commit
//! status format.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use gantry_tests::{Server, ServerOptions, backends};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Notify;

const SECRET: &str = "s3cret";

#[derive(Default)]
struct Received {
    /// (path, headers, body) of every request, failed ones included.
    requests: Vec<(String, HeaderMap, Bytes)>,
    /// Requests still to refuse with a 500.
    fail_next: usize,
}

type Shared = (Arc<Mutex<Received>>, Arc<Notify>);

async fn receive(path: &'static str, state: Shared, headers: HeaderMap, body: Bytes) -> StatusCode {
    let (rec, notify) = state;
    let mut r = rec.lock().unwrap();
    r.requests.push((path.to_owned(), headers, body));
    notify.notify_waiters();
    if r.fail_next > 0 {
        r.fail_next -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::OK
}

/// A receiver on a free loopback port; the first request is answered with a 500.
async fn receiver() -> (String, Shared) {
    let state: Shared = (
        Arc::new(Mutex::new(Received {
            fail_next: 1,
            ..Default::default()
        })),
        Arc::new(Notify::new()),
    );
    let app = axum::Router::new()
        .route(
            "/hook",
            post(|State(s): State<Shared>, h: HeaderMap, b: Bytes| receive("/hook", s, h, b)),
        )
        .route(
            "/status",
            post(|State(s): State<Shared>, h: HeaderMap, b: Bytes| receive("/status", s, h, b)),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), state)
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Waits until `pred` holds over the received requests (woken by each request).
async fn until(state: &Shared, within: Duration, pred: impl Fn(&Received) -> bool) {
    tokio::time::timeout(within, async {
        loop {
            let notified = state.1.notified();
            if pred(&state.0.lock().unwrap()) {
                return;
            }
            notified.await;
        }
    })
    .await
    .expect("the webhooks arrived in time");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_webhooks_arrive_signed_and_are_retried_after_a_500() {
    for backend in backends().await {
        let (base, state) = receiver().await;
        let s = Server::start(ServerOptions::new(backend)).await;
        let file = format!(
            "name: ci\nnotify:\n  - webhook: {base}/hook\n  - webhook: {base}/status\n    format: github-status\n    context: ci/gantry\njobs:\n  build:\n    steps:\n      - run: echo hi\n  test:\n    needs: build\n    steps:\n      - run: echo test\n"
        );
        let d = s
            .data(
                "mutation($f: String!, $w: String!) { createPipeline(input: {name: \"ci\", provider: GIT, repository: \"/src/app\", file: $f, webhookSecret: $w}) { id } }",
                json!({ "f": file, "w": SECRET }),
            )
            .await;
        let p = d["createPipeline"]["id"].as_str().unwrap().to_owned();
        let run = s.trigger(&p, "abc123").await;
        let done = s.wait_run(&run, Duration::from_secs(60)).await;
        let events = done["events"].as_array().unwrap();
        let hook_events = events.iter().filter(|e| e["entity"] != "ATTEMPT").count();
        let status_events = events.iter().filter(|e| e["entity"] == "RUN").count();

        // Every run and task change, each delivered successfully once, plus the refused try.
        let delivered = |r: &Received, path: &str| {
            let mut ids: Vec<&str> = r
                .requests
                .iter()
                .filter(|(p, _, _)| p == path)
                .map(|(_, h, _)| h["x-gantry-delivery"].to_str().unwrap())
                .collect();
            ids.sort();
            ids.dedup();
            ids.len()
        };
        until(&state, Duration::from_secs(30), |r| {
            delivered(r, "/hook") == hook_events
                && delivered(r, "/status") == status_events
                && r.requests.len() == hook_events + status_events + 1
        })
        .await;
        let requests = state.0.lock().unwrap().requests.clone();
        let mut seqs = Vec::new();
        let mut statuses = Vec::new();
        for (path, headers, body) in &requests {
            assert_eq!(
                headers["x-gantry-signature"].to_str().unwrap(),
                sign(body),
                "{backend:?}: signed"
            );
            let v: Value = serde_json::from_slice(body).unwrap();
            if path == "/hook" {
                assert_eq!(v["run"]["id"], run.as_str());
                seqs.push(v["event"]["seq"].as_str().unwrap().to_owned());
            } else {
                assert_eq!(v["context"], "ci/gantry");
                assert_eq!(v["sha"], "abc123");
                statuses.push(v["state"].as_str().unwrap().to_owned());
            }
        }
        assert!(statuses.contains(&"pending".to_owned()));
        assert!(statuses.contains(&"success".to_owned()), "{statuses:?}");

        // The delivery log shows the retried delivery and ends with every one delivered.
        let deadline = Instant::now() + Duration::from_secs(30);
        let log = loop {
            let d = s
                .data(
                    "query($p: ID!) { webhookDeliveries(pipeline: $p, first: 100) { id url format state attempts responseStatus error } }",
                    json!({ "p": p }),
                )
                .await;
            let log = d["webhookDeliveries"].as_array().unwrap().clone();
            if log.iter().all(|d| d["state"] == "DELIVERED") || Instant::now() > deadline {
                break log;
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(log.len(), hook_events + status_events, "{backend:?}");
        assert!(log.iter().all(|d| d["state"] == "DELIVERED"), "{log:#?}");
        let retried: Vec<&Value> = log.iter().filter(|d| d["attempts"] == 2).collect();
        assert_eq!(
            retried.len(),
            1,
            "one delivery needed a second try: {log:#?}"
        );
        assert_eq!(retried[0]["responseStatus"], 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notify_entry_without_a_url_is_refused_with_its_line() {
    let s = Server::start(ServerOptions::new(gantry_tests::Backend::Sqlite)).await;
    let res = s
        .gql(
            "mutation($f: String!) { createPipeline(input: {name: \"ci\", provider: GIT, repository: \"/x\", file: $f}) { id } }",
            json!({ "f": "notify:\n  - format: gantry\njobs:\n  a:\n    steps:\n      - run: echo\n" }),
        )
        .await;
    assert_eq!(
        res["errors"][0]["extensions"]["code"], "INVALID_PIPELINE",
        "{res}"
    );
    assert_eq!(
        res["errors"][0]["extensions"]["errors"][0]["line"], 2,
        "{res}"
    );
}
