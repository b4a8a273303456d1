//! Live status: subscriptions over a real WebSocket (both protocols), replay with `after`
//! joined to live delivery without gap or duplicate, seq order under concurrent commits,
//! replicas sharing one PostgreSQL through Redis (also across a Redis restart), and SSE.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use gantry_tests::ws::{Item, Subscription};
use gantry_tests::{
    ADMIN_TOKEN, Backend, PgDatabase, Server, ServerOptions, backends, redis_prefix, redis_url,
};
use serde_json::{Value, json};

const FAN_OUT: &str = r#"
name: fan
jobs:
  build:
    steps:
      - run: echo build
  test:
    needs: build
    strategy: { matrix: { shard: [1, 2, 3] } }
    steps:
      - run: echo shard ${{ matrix.shard }}
  ship:
    needs: test
    steps:
      - run: echo ship
"#;

const WIDE: &str = r#"
name: wide
jobs:
  job:
    strategy: { matrix: { n: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12] } }
    steps:
      - run: echo ${{ matrix.n }}
"#;

const RUN_EVENTS: &str = "subscription($r: ID!, $a: String) { runEvents(run: $r, after: $a) { seq entity entityId from to reason } }";
const WITHIN: Duration = Duration::from_secs(60);

fn seqs(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["seq"].as_str().expect("seq").parse().expect("digits"))
        .collect()
}

fn strictly_increasing(s: &[i64]) -> bool {
    s.windows(2).all(|w| w[0] < w[1])
}

/// The run's events as the log has them.
async fn logged(s: &Server, run: &str) -> Vec<Value> {
    s.run(run).await["events"]
        .as_array()
        .expect("events")
        .clone()
}

/// Reads a subscription until it completes; panics on an error payload.
async fn drain(sub: &mut Subscription, field: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        match sub.next(WITHIN).await.expect("subscription stalled") {
            Item::Data(d) => out.push(d[field].clone()),
            Item::Errors(e) => panic!("subscription error: {e}"),
            Item::Complete => return out,
        }
    }
}

/// Reads `n` items of a subscription that does not end by itself.
async fn take(sub: &mut Subscription, field: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        match sub.next(WITHIN).await {
            Some(Item::Data(d)) => out.push(d[field].clone()),
            other => panic!("expected {n} items, got {} then {other:?}", out.len()),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runs_whole_life_arrives_in_order_and_after_resumes_with_exactly_the_missed_events() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let p = s.create_pipeline("fan", "/src/app", FAN_OUT).await;
        let run = s.trigger(&p, "abc123").await;
        let mut sub =
            Subscription::open(&s, "graphql-transport-ws", RUN_EVENTS, json!({ "r": run })).await;
        let mut legacy =
            Subscription::open(&s, "graphql-ws", RUN_EVENTS, json!({ "r": run })).await;
        let got = drain(&mut sub, "runEvents").await;
        let got_legacy = drain(&mut legacy, "runEvents").await;

        let last = got.last().expect("events");
        assert_eq!(
            (last["entity"].as_str(), last["to"].as_str()),
            (Some("RUN"), Some("SUCCEEDED")),
            "{backend:?}"
        );
        let log = logged(&s, &run).await;
        assert!(
            strictly_increasing(&seqs(&got)),
            "{backend:?}: {:?}",
            seqs(&got)
        );
        assert_eq!(seqs(&got), seqs(&log), "{backend:?}: the stream is the log");
        assert_eq!(
            seqs(&got_legacy),
            seqs(&log),
            "{backend:?}: legacy graphql-ws protocol"
        );
        // 5 tasks, each with attempt transitions: a whole life, not a summary.
        assert!(log.len() > 20, "{backend:?}: {} events", log.len());

        for k in [0, log.len() / 2, log.len() - 2] {
            let after = log[k]["seq"].as_str().unwrap();
            let mut resumed = Subscription::open(
                &s,
                "graphql-transport-ws",
                RUN_EVENTS,
                json!({ "r": run, "a": after }),
            )
            .await;
            let tail = drain(&mut resumed, "runEvents").await;
            assert_eq!(
                seqs(&tail),
                seqs(&log[k + 1..]),
                "{backend:?}: after {after}"
            );
        }
    }
}

/// A counter of the server's `GET /metrics`.
async fn counter(s: &Server, name: &str) -> f64 {
    let text = s.get("/metrics").await.text().await.expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .expect("a number")
}

fn keys(event: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = event
        .as_object()
        .expect("an event object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribers_of_one_selection_share_one_rendering_of_each_event() {
    let s = Server::start(ServerOptions::new(Backend::Sqlite)).await;
    let p = s.create_pipeline("fan", "/src/app", FAN_OUT).await;
    let run = s.trigger(&p, "abc123").await;
    // Three subscribers select the same fields (over either protocol); a fourth selects
    // others, under an alias.
    let mut same = Vec::new();
    for protocol in ["graphql-transport-ws", "graphql-ws", "graphql-transport-ws"] {
        same.push(Subscription::open(&s, protocol, RUN_EVENTS, json!({ "r": run })).await);
    }
    let other = "subscription($r: ID!) { runEvents(run: $r) { seq when: at } }";
    let mut different =
        Subscription::open(&s, "graphql-transport-ws", other, json!({ "r": run })).await;

    let mut got = Vec::new();
    for sub in &mut same {
        got.push(drain(sub, "runEvents").await);
    }
    let got_other = drain(&mut different, "runEvents").await;
    let log = logged(&s, &run).await;
    for events in &got {
        assert_eq!(seqs(events), seqs(&log));
        for e in events {
            assert_eq!(
                keys(e),
                ["entity", "entityId", "from", "reason", "seq", "to"]
            );
        }
    }
    assert_eq!(seqs(&got_other), seqs(&log));
    for e in &got_other {
        assert_eq!(keys(e), ["seq", "when"]);
    }
    // Each event rendered once per selection, and sent to each subscriber.
    let n = log.len() as f64;
    assert_eq!(
        counter(&s, "gantry_subscription_renders_total").await,
        2.0 * n
    );
    assert_eq!(
        counter(&s, "gantry_subscription_messages_total").await,
        4.0 * n
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_the_client_completes_stops_while_its_connection_goes_on() {
    let s = Server::start(ServerOptions::new(Backend::Sqlite)).await;
    let p = s.create_pipeline("fan", "/src/app", FAN_OUT).await;
    let mut conn = Subscription::open(
        &s,
        "graphql-transport-ws",
        "subscription($a: String) { events(after: $a) { seq run } }",
        json!({ "a": "0" }),
    )
    .await;
    let first = s.trigger(&p, "abc123").await;
    let m = conn.next_message(WITHIN).await.expect("an event");
    assert_eq!(
        (m["type"].as_str(), m["id"].as_str()),
        (Some("next"), Some("1"))
    );
    assert_eq!(m["payload"]["data"]["events"]["run"], first.as_str());

    conn.send(json!({ "id": "1", "type": "complete" })).await;
    // Then a second subscription on the same connection follows a second run to its end.
    conn.send(json!({
        "id": "2",
        "type": "subscribe",
        "payload": {
            "query": "subscription($r: ID!) { runEvents(run: $r) { seq } }",
            "variables": { "r": s.trigger(&p, "def456").await }
        }
    }))
    .await;
    let mut completed = Vec::new();
    loop {
        let m = conn
            .next_message(WITHIN)
            .await
            .expect("messages until run 2 ends");
        match (m["type"].as_str(), m["id"].as_str()) {
            (Some("complete"), Some(id)) => {
                completed.push(id.to_owned());
                if id == "2" {
                    break;
                }
            }
            (Some("next"), Some("2")) => {}
            // Events that were on their way before the server read `complete`.
            (Some("next"), Some("1")) => {
                assert!(completed.is_empty(), "an event after `complete`: {m}");
            }
            _ => panic!("unexpected {m}"),
        }
    }
    assert_eq!(completed, ["1", "2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn resuming_while_the_run_is_live_has_no_gap_and_no_duplicate() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let p = s.create_pipeline("wide", "/src/app", WIDE).await;
        let run = s.trigger(&p, "abc123").await;
        let mut main =
            Subscription::open(&s, "graphql-transport-ws", RUN_EVENTS, json!({ "r": run })).await;
        let mut resumers = Vec::new();
        let mut seen = 0usize;
        // Each resumer starts from an event just delivered, while later ones are being
        // committed: the replay/live join happens under load.
        loop {
            match main.next(WITHIN).await.expect("main stream stalled") {
                Item::Data(d) => {
                    seen += 1;
                    if seen.is_multiple_of(4) {
                        let after = d["runEvents"]["seq"].as_str().unwrap().to_owned();
                        let sub = Subscription::open(
                            &s,
                            "graphql-transport-ws",
                            RUN_EVENTS,
                            json!({ "r": run, "a": after }),
                        )
                        .await;
                        resumers.push((after, sub));
                    }
                }
                Item::Errors(e) => panic!("{e}"),
                Item::Complete => break,
            }
        }
        let log = logged(&s, &run).await;
        assert!(
            resumers.len() >= 5,
            "{backend:?}: only {} resumers",
            resumers.len()
        );
        for (after, mut sub) in resumers {
            let got = drain(&mut sub, "runEvents").await;
            let after: i64 = after.parse().unwrap();
            let want: Vec<i64> = seqs(&log).into_iter().filter(|q| *q > after).collect();
            assert_eq!(seqs(&got), want, "{backend:?}: resumed after {after}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_triggers_never_reorder_the_events_feed() {
    for backend in backends().await {
        let mut o = ServerOptions::new(backend);
        o.workers = 2;
        let s = Server::start(o).await;
        let p = s.create_pipeline("fan", "/src/app", FAN_OUT).await;
        // Live-only (no `after`) and from the start of the log, side by side.
        let q = "subscription($a: String) { events(after: $a) { seq run entity to } }";
        let mut from_start =
            Subscription::open(&s, "graphql-transport-ws", q, json!({ "a": "0" })).await;
        let mut live = Subscription::open(&s, "graphql-transport-ws", q, json!({})).await;
        let triggers = (0..16).map(|i| {
            let s = &s;
            let p = p.clone();
            async move { s.trigger(&p, &format!("sha{i}")).await }
        });
        let runs = futures::future::join_all(triggers).await;
        for r in &runs {
            s.wait_run(r, WITHIN).await;
        }
        let all = s
            .data(
                "{ events(first: 10000) { edges { node { seq } } } }",
                json!({}),
            )
            .await;
        let log: Vec<i64> = all["events"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["seq"].as_str().unwrap().parse().unwrap())
            .collect();
        let got = take(&mut from_start, "events", log.len()).await;
        assert_eq!(
            seqs(&got),
            log,
            "{backend:?}: replay + live is the log, in order"
        );
        let got_live = take(&mut live, "events", log.len()).await;
        assert_eq!(
            seqs(&got_live),
            log,
            "{backend:?}: live only is the log, in order"
        );
        // The filter: only one run's terminal event.
        let mut one = Subscription::open(
            &s,
            "graphql-transport-ws",
            "subscription($r: ID!) { events(after: \"0\", filter: {run: $r, state: \"SUCCEEDED\"}) { entity entityId to } }",
            json!({ "r": runs[3] }),
        )
        .await;
        let want = logged(&s, &runs[3])
            .await
            .iter()
            .filter(|e| e["to"] == "SUCCEEDED")
            .count();
        let got = take(&mut one, "events", want).await;
        assert!(got.iter().all(|e| e["to"] == "SUCCEEDED"), "{got:?}");
        assert_eq!(got.last().unwrap()["entityId"], runs[3].as_str());
    }
}

/// Parses an SSE body into (id, event, data) triples.
async fn sse(s: &Server, path: &str, last_id: Option<&str>) -> Vec<(String, String, Value)> {
    let mut req = reqwest::Client::new()
        .get(format!("{}{path}", s.url))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(id) = last_id {
        req = req.header("Last-Event-ID", id);
    }
    let res = req.send().await.expect("GET /events");
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = String::new();
    let mut stream = res.bytes_stream();
    tokio::time::timeout(WITHIN, async {
        while let Some(chunk) = stream.next().await {
            body.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        }
    })
    .await
    .expect("the stream of one run ends after its terminal event");
    body.split("\n\n")
        .filter_map(|block| {
            let mut f: HashMap<&str, String> = HashMap::new();
            for line in block.lines() {
                if let Some((k, v)) = line.split_once(':') {
                    f.insert(k, v.trim_start().to_owned());
                }
            }
            let data = f.get("data")?;
            Some((
                f.get("id").cloned().unwrap_or_default(),
                f.get("event").cloned().unwrap_or_default(),
                serde_json::from_str(data).expect("json data"),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sse_stream_follows_a_run_and_resumes_with_last_event_id() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let p = s.create_pipeline("fan", "/src/app", FAN_OUT).await;
        let run = s.trigger(&p, "abc123").await;
        let all = sse(&s, &format!("/events?run={run}"), None).await;
        let log = logged(&s, &run).await;
        let ids: Vec<i64> = all.iter().map(|(id, _, _)| id.parse().unwrap()).collect();
        assert_eq!(ids, seqs(&log), "{backend:?}");
        let (_, kind, last) = all.last().unwrap();
        assert_eq!(
            (kind.as_str(), last["entity"].as_str(), last["to"].as_str()),
            ("event", Some("RUN"), Some("SUCCEEDED"))
        );

        let k = 4;
        let resumed = sse(&s, &format!("/events?run={run}"), Some(&all[k].0)).await;
        let rids: Vec<i64> = resumed
            .iter()
            .map(|(id, _, _)| id.parse().unwrap())
            .collect();
        assert_eq!(
            rids,
            ids[k + 1..].to_vec(),
            "{backend:?}: Last-Event-ID resumes"
        );
        let res = reqwest::get(format!("{}/events?run={run}", s.url))
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "a token is required");
    }
}

/// Two replicas on one PostgreSQL database and one Redis channel.
async fn replicas(
    db: &PgDatabase,
    redis: &str,
    prefix: &str,
    workers: [usize; 2],
) -> (Server, Server) {
    let mk = |w: usize| {
        let mut o = ServerOptions::new(Backend::Postgres);
        o.workers = w;
        o.database_url = Some(db.url.clone());
        o.redis_url = Some(redis.to_owned());
        o.redis_prefix = Some(prefix.to_owned());
        o
    };
    let a = Server::start(mk(workers[0])).await;
    let b = Server::start(mk(workers[1])).await;
    (a, b)
}

fn postgres_available(backends: &[Backend]) -> bool {
    if !backends.contains(&Backend::Postgres) {
        eprintln!("skipping: replicas need PostgreSQL");
        return false;
    }
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_on_one_replica_sees_the_transitions_made_on_another() {
    if !postgres_available(&backends().await) {
        return;
    }
    let Some(redis) = redis_url().await else {
        return;
    };
    let db = PgDatabase::create().await;
    // A plans and serves the API; only B has workers, woken through Redis.
    let (a, b) = replicas(&db, &redis, &redis_prefix(), [0, 2]).await;
    let p = a.create_pipeline("fan", "/src/app", FAN_OUT).await;
    let q = "subscription($p: ID!) { events(filter: {pipeline: $p}) { seq run entity to node } }";
    let mut on_a = Subscription::open(&a, "graphql-transport-ws", q, json!({ "p": p })).await;
    let mut on_b = Subscription::open(&b, "graphql-transport-ws", q, json!({ "p": p })).await;
    let run = a.trigger(&p, "abc123").await;
    let mut runs_on_b =
        Subscription::open(&b, "graphql-transport-ws", RUN_EVENTS, json!({ "r": run })).await;
    let from_b = drain(&mut runs_on_b, "runEvents").await;
    let log = logged(&a, &run).await;
    assert_eq!(seqs(&from_b), seqs(&log));
    let got_a = take(&mut on_a, "events", log.len()).await;
    let got_b = take(&mut on_b, "events", log.len()).await;
    assert_eq!(seqs(&got_a), seqs(&log), "live on A, with B's transitions");
    assert_eq!(seqs(&got_b), seqs(&log), "live on B, with A's transitions");
    let nodes: std::collections::HashSet<&str> =
        got_a.iter().map(|e| e["node"].as_str().unwrap()).collect();
    assert!(
        nodes.len() == 2,
        "transitions made by both nodes: {nodes:?}"
    );
}

/// A redis-server of this test's own, on a free port: it can be stopped without
/// touching anyone else's.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start() -> Option<OwnRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut r = OwnRedis { port, child: None };
        r.spawn()?;
        Some(r)
    }

    fn spawn(&mut self) -> Option<()> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Some(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_redis_slows_replicas_down_but_loses_and_stops_nothing() {
    if !postgres_available(&backends().await) {
        return;
    }
    let Some(mut redis) = OwnRedis::start() else {
        assert!(
            std::env::var("CI").is_err(),
            "redis-server is required in CI"
        );
        eprintln!("skipping: no redis-server binary to start");
        return;
    };
    let db = PgDatabase::create().await;
    let (a, b) = replicas(&db, &redis.url(), &redis_prefix(), [0, 2]).await;
    let p = a.create_pipeline("fan", "/src/app", FAN_OUT).await;
    let first = a.trigger(&p, "one").await;
    a.wait_run(&first, WITHIN).await;

    redis.stop();
    let q = "subscription($p: ID!) { events(filter: {pipeline: $p}) { seq run entity to } }";
    let mut on_a = Subscription::open(&a, "graphql-transport-ws", q, json!({ "p": p })).await;
    let second = a.trigger(&p, "two").await;
    // Executed by B's workers (polling the database), followed on A (reading the log).
    let done = a.wait_run(&second, WITHIN).await;
    assert_eq!(done["state"], "SUCCEEDED");
    let log = logged(&a, &second).await;
    assert_eq!(
        seqs(&take(&mut on_a, "events", log.len()).await),
        seqs(&log)
    );

    redis.spawn().expect("restart redis");
    let third = a.trigger(&p, "three").await;
    let mut on_b = Subscription::open(
        &b,
        "graphql-transport-ws",
        RUN_EVENTS,
        json!({ "r": third }),
    )
    .await;
    let got = drain(&mut on_b, "runEvents").await;
    assert_eq!(seqs(&got), seqs(&logged(&a, &third).await));
    let log3 = logged(&a, &third).await;
    assert_eq!(
        seqs(&take(&mut on_a, "events", log3.len()).await),
        seqs(&log3)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_that_speaks_neither_protocol_is_refused() {
    use tokio_tungstenite::tungstenite::{Error, client::IntoClientRequest};
    let s = Server::start(ServerOptions::new(Backend::Sqlite)).await;
    let mut req = format!("ws://{}/graphql", s.addr())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "chat".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(Error::Http(res)) => assert_eq!(res.status(), 400),
        Err(other) => panic!("refused otherwise: {other}"),
        Ok(_) => panic!("a WebSocket without a GraphQL protocol was accepted"),
    }
}
