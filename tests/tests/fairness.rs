//! Fairness: admission (per-tenant token buckets, a global bound on waiting work), quotas
//! of concurrent attempts, and fair dispatch across tenants — on SQLite and PostgreSQL,
//! and across replicas sharing Redis.

use std::time::{Duration, Instant};

use gantry_tests::{Server, ServerOptions, backends, redis_prefix, redis_url};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(120);
const ONE_JOB: &str = "jobs:\n  build:\n    steps:\n      - run: \"true\"\n";

fn code(res: &Value) -> &str {
    res["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("<no error>")
}

async fn create_tenant(s: &Server, name: &str, extra: Value) -> String {
    let mut input = json!({ "name": name });
    if let (Some(i), Some(e)) = (input.as_object_mut(), extra.as_object()) {
        i.extend(e.clone());
    }
    s.data(
        "mutation($i: CreateTenantInput!) { createTenant(input: $i) { id } }",
        json!({ "i": input }),
    )
    .await["createTenant"]["id"]
        .as_str()
        .expect("tenant id")
        .to_owned()
}

async fn create_pipeline_of(s: &Server, tenant: &str, name: &str, file: &str) -> String {
    s.data(
        "mutation($t: String, $n: String!, $f: String!) { createPipeline(input: {tenant: $t, name: $n, provider: GIT, repository: \"/tmp\", file: $f}) { id } }",
        json!({ "t": tenant, "n": name, "f": file }),
    )
    .await["createPipeline"]["id"]
        .as_str()
        .expect("pipeline id")
        .to_owned()
}

async fn try_trigger(s: &Server, pipeline: &str, sha: &str) -> Value {
    s.gql(
        "mutation($p: ID!, $s: String!) { triggerRun(input: {pipeline: $p, sha: $s, ref: \"refs/heads/main\"}) { id } }",
        json!({ "p": pipeline, "s": sha }),
    )
    .await
}

async fn run_ids(s: &Server, pipeline: &str) -> Vec<String> {
    let d = s
        .data(
            "query($p: ID!) { runs(filter: {pipeline: $p}, first: 500) { nodes { id } } }",
            json!({ "p": pipeline }),
        )
        .await;
    d["runs"]["nodes"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["id"].as_str().expect("run id").to_owned())
        .collect()
}

/// Fires `n` triggers at once and sorts the answers into accepted run ids and refusals.
async fn burst(s: &Server, pipeline: &str, n: usize) -> (Vec<String>, Vec<Value>) {
    let answers = futures::future::join_all(
        (0..n).map(|i| async move { try_trigger(s, pipeline, &format!("sha{i}")).await }),
    )
    .await;
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for a in answers {
        match a["data"]["triggerRun"]["id"].as_str() {
            Some(id) => accepted.push(id.to_owned()),
            None => refused.push(a),
        }
    }
    (accepted, refused)
}

/// Most triggers a bucket of `rate`/s and `burst` can admit in `elapsed`.
fn bucket_bound(rate: f64, burst: usize, elapsed: Duration) -> usize {
    burst + (rate * elapsed.as_secs_f64()).ceil() as usize + 1
}

#[tokio::test(flavor = "multi_thread")]
async fn triggers_over_the_tenant_rate_are_refused_with_retry_after_and_write_nothing() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let tenant = create_tenant(
            &s,
            "limited",
            json!({"triggerRate": 2.0, "triggerBurst": 5}),
        )
        .await;
        let p = create_pipeline_of(&s, &tenant, "limited-pipeline", ONE_JOB).await;

        let started = Instant::now();
        let (accepted, refused) = burst(&s, &p, 30).await;
        let elapsed = started.elapsed();
        println!(
            "{backend:?}: 30 triggers in {elapsed:?}: {} accepted, {} refused",
            accepted.len(),
            refused.len()
        );
        assert!(accepted.len() >= 5, "{backend:?}: the burst is admitted");
        assert!(
            accepted.len() <= bucket_bound(2.0, 5, elapsed),
            "{backend:?}: {} accepted in {elapsed:?}",
            accepted.len()
        );
        assert!(!refused.is_empty());
        for r in &refused {
            assert_eq!(code(r), "RATE_LIMITED", "{backend:?}: {r:#}");
            let after = r["errors"][0]["extensions"]["retryAfter"]
                .as_u64()
                .unwrap_or_else(|| panic!("retryAfter expected: {r:#}"));
            assert!((1..=3).contains(&after), "retryAfter {after}");
        }

        // A refused trigger wrote nothing: the pipeline has exactly the accepted runs.
        let mut stored = run_ids(&s, &p).await;
        let mut expected = accepted.clone();
        stored.sort();
        expected.sort();
        assert_eq!(stored, expected, "{backend:?}");

        for id in &accepted {
            let run = s.wait_run(id, WITHIN).await;
            assert_eq!(run["state"], "SUCCEEDED", "{backend:?}: {run:#}");
        }

        // Other tenants draw from their own buckets.
        let other = s.create_pipeline("unlimited", "/tmp", ONE_JOB).await;
        let (ok, refused) = burst(&s, &other, 10).await;
        assert_eq!(
            (ok.len(), refused.len()),
            (10, 0),
            "{backend:?}: {refused:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_sharing_redis_draw_from_one_bucket() {
    let Some(redis) = redis_url().await else {
        return;
    };
    let Some(gantry_tests::Backend::Postgres) = backends().await.last().copied() else {
        eprintln!("skipping: replicas need PostgreSQL");
        return;
    };
    let db = gantry_tests::PgDatabase::create().await;
    let prefix = redis_prefix();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let mut o = ServerOptions::new(gantry_tests::Backend::Postgres);
        o.database_url = Some(db.url.clone());
        o.redis_url = Some(redis.clone());
        o.redis_prefix = Some(prefix.clone());
        servers.push(Server::start(o).await);
    }
    let tenant = create_tenant(
        &servers[0],
        "shared",
        json!({"triggerRate": 1.0, "triggerBurst": 4}),
    )
    .await;
    let p = create_pipeline_of(&servers[0], &tenant, "shared-pipeline", ONE_JOB).await;
    let started = Instant::now();
    let (a0, a1) = tokio::join!(burst(&servers[0], &p, 10), burst(&servers[1], &p, 10));
    let elapsed = started.elapsed();
    let accepted = a0.0.len() + a1.0.len();
    println!("two replicas, 20 triggers in {elapsed:?}: {accepted} accepted");
    assert!(accepted >= 4);
    // Two private buckets would admit 8 at once; one shared bucket admits 4 plus refill.
    assert!(
        accepted <= bucket_bound(1.0, 4, elapsed),
        "{accepted} accepted in {elapsed:?}"
    );
    for r in a0.1.iter().chain(&a1.1) {
        assert_eq!(code(r), "RATE_LIMITED", "{r:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn triggers_beyond_the_pending_bound_are_refused_as_overloaded() {
    for backend in backends().await {
        let mut o = ServerOptions::new(backend);
        o.workers = 0;
        o.extra_args = vec!["--max-pending-attempts".into(), "3".into()];
        let s = Server::start(o).await;
        let p = s.create_pipeline("bounded", "/tmp", ONE_JOB).await;
        for i in 0..3 {
            s.trigger(&p, &format!("ok{i}")).await;
        }
        let refused = try_trigger(&s, &p, "one-too-many").await;
        assert_eq!(code(&refused), "OVERLOADED", "{backend:?}: {refused:#}");
        assert_eq!(run_ids(&s, &p).await.len(), 3, "{backend:?}");
    }
}

fn ms(v: &Value) -> i64 {
    v.as_str()
        .unwrap_or_else(|| panic!("timestamp expected, got {v}"))
        .parse::<chrono::DateTime<chrono::Utc>>()
        .expect("RFC 3339 timestamp")
        .timestamp_millis()
}

/// `(startedAt, finishedAt)` of every attempt of a run.
fn attempt_spans(run: &Value) -> Vec<(i64, i64)> {
    run["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .flat_map(|t| t["attempts"].as_array().expect("attempts").iter())
        .map(|a| (ms(&a["startedAt"]), ms(&a["finishedAt"])))
        .collect()
}

fn matrix_file(n: usize, run: &str) -> String {
    let values: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        "jobs:\n  work:\n    strategy: {{ matrix: {{ i: [{}] }} }}\n    steps:\n      - run: \"{run}\"\n",
        values.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_never_runs_more_than_its_max_running() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let tenant = create_tenant(&s, "one-at-a-time", json!({"maxRunning": 1})).await;
        let p = create_pipeline_of(&s, &tenant, "quota", &matrix_file(6, "sleep 0.2")).await;
        let id = s.trigger(&p, "q1").await;
        let run = s.wait_run(&id, WITHIN).await;
        assert_eq!(run["state"], "SUCCEEDED", "{backend:?}: {run:#}");
        let mut spans = attempt_spans(&run);
        spans.sort();
        assert_eq!(spans.len(), 6);
        for w in spans.windows(2) {
            assert!(
                w[1].0 >= w[0].1,
                "{backend:?}: two attempts of the tenant ran at once: {w:?}"
            );
        }
    }
}

/// The small tenant's ten runs finish before 40% of the other's 200 jobs, live and in
/// `gantry simulate` alike.
const BURST_BOUND: usize = 80;

#[tokio::test(flavor = "multi_thread")]
async fn a_small_tenant_is_served_before_a_large_burst_of_another_finishes() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let a = create_tenant(&s, "bursty", json!({"weight": 1})).await;
        let b = create_tenant(&s, "small", json!({"weight": 1})).await;
        let pa = create_pipeline_of(&s, &a, "burst", &matrix_file(200, "true")).await;
        let pb = create_pipeline_of(&s, &b, "small", ONE_JOB).await;
        let run_a = s.trigger(&pa, "a1").await;
        let mut runs_b = Vec::new();
        for i in 0..10 {
            runs_b.push(s.trigger(&pb, &format!("b{i}")).await);
        }
        let mut b_done = 0;
        for id in &runs_b {
            let run = s.wait_run(id, WITHIN).await;
            assert_eq!(run["state"], "SUCCEEDED", "{backend:?}: {run:#}");
            b_done = b_done.max(attempt_spans(&run).iter().map(|s| s.1).max().unwrap_or(0));
        }
        let run = s.wait_run(&run_a, Duration::from_secs(300)).await;
        assert_eq!(run["state"], "SUCCEEDED", "{backend:?}");
        // The time each of the 200 jobs finished (its last attempt: an attempt lost to
        // the infrastructure is retried).
        let done: Vec<i64> = run["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .map(|t| ms(&t["finishedAt"]))
            .collect();
        assert_eq!(done.len(), 200);
        let a_before = done.iter().filter(|f| **f <= b_done).count();
        println!(
            "{backend:?}: when the small tenant's 10 runs were done, {a_before} of 200 jobs of the burst were"
        );
        assert!(
            a_before < BURST_BOUND,
            "{backend:?}: {a_before} of 200 of the burst finished before the small tenant's 10"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn weights_three_to_one_split_starts_three_to_one_under_saturation() {
    for backend in backends().await {
        let mut o = ServerOptions::new(backend);
        // No in-process workers: both tenants' work is queued before the first start.
        o.workers = 0;
        let s = Server::start(o).await;
        let heavy = create_tenant(&s, "heavy", json!({"weight": 3})).await;
        let light = create_tenant(&s, "light", json!({"weight": 1})).await;
        let ph = create_pipeline_of(&s, &heavy, "heavy", &matrix_file(150, "true")).await;
        let pl = create_pipeline_of(&s, &light, "light", &matrix_file(150, "true")).await;
        let rh = s.trigger(&ph, "h1").await;
        let rl = s.trigger(&pl, "l1").await;
        let _agents: Vec<gantry_tests::Agent> = (0..2)
            .map(|i| gantry_tests::Agent::start(&s.url, &format!("split-{i}"), &["default"]))
            .collect();
        let mut starts: Vec<(i64, &str)> = Vec::new();
        for (id, who) in [(&rh, "heavy"), (&rl, "light")] {
            let run = s.wait_run(id, Duration::from_secs(300)).await;
            assert_eq!(run["state"], "SUCCEEDED", "{backend:?}: {run:#}");
            starts.extend(attempt_spans(&run).into_iter().map(|(at, _)| (at, who)));
        }
        starts.sort();
        // The first 120 starts: both tenants still have queued work throughout (at 3:1
        // the light tenant has used 30 of its 150), so the split is the scheduler's.
        let window = &starts[..120];
        let h = window.iter().filter(|(_, w)| *w == "heavy").count();
        let l = window.len() - h;
        let ratio = h as f64 / l.max(1) as f64;
        println!("{backend:?}: of the first 120 starts, heavy {h}, light {l} (ratio {ratio:.2})");
        assert!(
            (2.7..=3.3).contains(&ratio),
            "{backend:?}: weights 3:1 gave {h}:{l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_report_queue_depth_and_attempts_by_state() {
    for backend in backends().await {
        let mut o = ServerOptions::new(backend);
        o.workers = 0;
        let s = Server::start(o).await;
        let p = s
            .create_pipeline("waiting", "/tmp", &matrix_file(3, "true"))
            .await;
        s.trigger(&p, "m1").await;
        let res = s.get("/metrics").await;
        assert_eq!(res.status(), 200);
        let text = res.text().await.expect("metrics body");
        assert!(
            text.contains("gantry_queue_depth{queue=\"default\"} 3"),
            "{backend:?}: {text}"
        );
        assert!(
            text.contains("gantry_attempts{queue=\"default\",state=\"queued\"} 3"),
            "{backend:?}: {text}"
        );
    }
}

/// The waiting reason of the first task called `name` in run `id`.
async fn reason_of(s: &Server, id: &str, name: &str) -> String {
    let run = s.run(id).await;
    run["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["name"] == name)
        .and_then(|t| t["waitingReason"].as_str())
        .unwrap_or_else(|| panic!("{name} has no waiting reason: {run:#}"))
        .to_owned()
}

fn jobs_on(queue: &str, n: usize) -> String {
    let mut y = String::from("jobs:\n");
    for i in 0..n {
        y.push_str(&format!(
            "  j{i}:\n    runs-on: {queue}\n    cache: false\n    steps: [{{run: \"true\"}}]\n"
        ));
    }
    y
}

#[tokio::test(flavor = "multi_thread")]
async fn every_waiting_task_says_why() {
    for backend in backends().await {
        let mut o = ServerOptions::new(backend);
        o.workers = 0;
        let s = Server::start(o).await;

        // No worker serves the queue.
        let p = s
            .create_pipeline("unserved", "/tmp", &jobs_on("nowhere", 1))
            .await;
        let r = s.trigger(&p, "w1").await;
        assert_eq!(
            reason_of(&s, &r, "j0").await,
            "no live worker serves queue \"nowhere\"",
            "{backend:?}"
        );

        // Blocked on upstream tasks.
        let p = s
            .create_pipeline(
                "chain",
                "/tmp",
                "jobs:\n  a:\n    runs-on: chain\n    steps: [{run: \"true\"}]\n  b:\n    needs: a\n    runs-on: chain\n    steps: [{run: \"true\"}]\n",
            )
            .await;
        let r = s.trigger(&p, "w2").await;
        assert_eq!(
            reason_of(&s, &r, "b").await,
            "blocked on upstream tasks: a",
            "{backend:?}"
        );

        // Concurrency group busy.
        let p = s
            .create_pipeline(
                "grouped",
                "/tmp",
                "concurrency: { group: \"release\" }\njobs:\n  a:\n    runs-on: grouped\n    steps: [{run: \"true\"}]\n",
            )
            .await;
        s.trigger(&p, "w3").await;
        let second = s.trigger(&p, "w4").await;
        let reason = reason_of(&s, &second, "a").await;
        assert!(
            reason.starts_with("concurrency group \"release\" is busy"),
            "{backend:?}: {reason}"
        );

        // In backoff after a failed attempt.
        let p = s
            .create_pipeline(
                "flaky",
                "/tmp",
                "jobs:\n  a:\n    runs-on: flaky\n    retry: { max-attempts: 2, on: [exit], backoff: { initial: 1h, max: 1h } }\n    steps: [{run: \"false\"}]\n",
            )
            .await;
        let r = s.trigger(&p, "w5").await;
        let w = s.register_worker("flaky-worker", "flaky").await;
        let (attempt, token) = s.lease(&w, "flaky").await;
        s.data(
            "mutation($a: ID!, $t: String!) { completeAttempt(input: {attempt: $a, leaseToken: $t, errorKind: EXIT, exitCode: 1}) { state } }",
            json!({ "a": attempt, "t": token }),
        )
        .await;
        let reason = reason_of(&s, &r, "a").await;
        assert!(
            reason.starts_with("in backoff until ") && reason.ends_with("before attempt 2 of 2"),
            "{backend:?}: {reason}"
        );

        // Behind the tenant's quota.
        let q = create_tenant(&s, "one-slot", json!({"maxRunning": 1})).await;
        let p = create_pipeline_of(&s, &q, "quota", &jobs_on("quota", 2)).await;
        let r = s.trigger(&p, "w6").await;
        let w = s.register_worker("quota-worker", "quota").await;
        let (leased, _) = s.lease(&w, "quota").await;
        let run = s.run(&r).await;
        let waiting = run["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .find(|t| t["attempts"][0]["id"] != leased)
            .and_then(|t| t["name"].as_str())
            .expect("the task not leased")
            .to_owned();
        assert_eq!(
            reason_of(&s, &r, &waiting).await,
            "tenant one-slot is at its quota of 1 running attempts",
            "{backend:?}"
        );

        // Behind other tenants' fair share: "busy" started one attempt, "newcomer" none.
        let busy = create_tenant(&s, "busy", json!({})).await;
        let newcomer = create_tenant(&s, "newcomer", json!({})).await;
        let pb = create_pipeline_of(&s, &busy, "busy", &jobs_on("shared", 3)).await;
        let pn = create_pipeline_of(&s, &newcomer, "newcomer", &jobs_on("shared", 1)).await;
        let rb = s.trigger(&pb, "w7").await;
        let w = s.register_worker("shared-worker", "shared").await;
        s.lease(&w, "shared").await;
        let rn = s.trigger(&pn, "w8").await;
        let run = s.run(&rb).await;
        let queued: Vec<String> = run["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .filter(|t| t["state"] == "READY")
            .map(|t| t["name"].as_str().expect("name").to_owned())
            .collect();
        assert_eq!(queued.len(), 2, "{backend:?}: {run:#}");
        let mut reasons = Vec::new();
        for name in &queued {
            reasons.push(reason_of(&s, &rb, name).await);
        }
        reasons.sort();
        for (i, reason) in reasons.iter().enumerate() {
            assert_eq!(
                *reason,
                format!(
                    "waiting for its fair share of queue \"shared\": other tenants are served first: newcomer (0 at weight 1); tenant busy has 1 attempts running or started in the last 60 s at weight 1, and this is its position {} in the queue",
                    i + 1
                ),
                "{backend:?}"
            );
        }
        assert_eq!(
            reason_of(&s, &rn, "j0").await,
            "queued at position 1 in queue \"shared\"",
            "{backend:?}"
        );
    }
}

fn sum(buckets: &Value, field: &str) -> i64 {
    buckets
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b[field].as_i64().expect("count"))
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_stats_buckets_count_what_happened() {
    for backend in backends().await {
        let s = Server::start(ServerOptions::new(backend)).await;
        let tenant = create_tenant(&s, "counted", json!({})).await;
        let p = create_pipeline_of(&s, &tenant, "counted", &matrix_file(5, "true")).await;
        let since = chrono::Utc::now() - chrono::Duration::seconds(2);
        let mut sub = gantry_tests::ws::Subscription::open(
            &s,
            "graphql-transport-ws",
            "subscription { queueStats(queue: \"default\") { queue depth since buckets { at seconds arrivals starts completions depth waitP99Ms } } }",
            json!({}),
        )
        .await;
        let id = s.trigger(&p, "counted").await;
        let run = s.wait_run(&id, WITHIN).await;
        assert_eq!(run["state"], "SUCCEEDED", "{backend:?}");

        // The subscription pushes one new second at a time until all five completed.
        let mut pushed: Vec<Value> = Vec::new();
        let mut last_at: Option<i64> = None;
        while sum(&Value::Array(pushed.clone()), "completions") < 5 {
            let item = sub.next(Duration::from_secs(10)).await;
            let Some(gantry_tests::ws::Item::Data(d)) = item else {
                panic!("{backend:?}: subscription ended: {item:?}");
            };
            let buckets = d["queueStats"]["buckets"].as_array().expect("buckets");
            assert_eq!(buckets.len(), 1, "{backend:?}: {d:#}");
            let at = ms(&buckets[0]["at"]);
            if let Some(prev) = last_at {
                assert_eq!(
                    at,
                    prev + 1000,
                    "{backend:?}: seconds in order, none skipped"
                );
            }
            last_at = Some(at);
            pushed.push(buckets[0].clone());
        }
        let pushed = Value::Array(pushed);
        assert_eq!(sum(&pushed, "arrivals"), 5, "{backend:?}: {pushed:#}");
        assert_eq!(sum(&pushed, "starts"), 5, "{backend:?}: {pushed:#}");

        // The query gives the same counts, for the queue and for the tenant.
        let d = s
            .data(
                "query($since: DateTime) { queueStats(queue: \"default\", since: $since) { depth since buckets { seconds arrivals starts completions depth waitP50Ms waitP99Ms } tenants { tenant name buckets { arrivals starts completions } } } }",
                json!({ "since": since.to_rfc3339() }),
            )
            .await;
        let q = &d["queueStats"];
        assert_eq!(q["depth"], 0, "{backend:?}");
        let buckets = &q["buckets"];
        assert!(
            buckets
                .as_array()
                .expect("buckets")
                .iter()
                .all(|b| b["seconds"] == 1)
        );
        for field in ["arrivals", "starts", "completions"] {
            assert_eq!(sum(buckets, field), 5, "{backend:?} {field}: {q:#}");
        }
        let with_waits: Vec<&Value> = buckets
            .as_array()
            .expect("buckets")
            .iter()
            .filter(|b| b["starts"].as_i64() > Some(0))
            .collect();
        assert!(
            with_waits
                .iter()
                .all(|b| b["waitP99Ms"].as_i64() >= b["waitP50Ms"].as_i64()),
            "{backend:?}: {q:#}"
        );
        assert_eq!(
            buckets
                .as_array()
                .and_then(|b| b.last())
                .map(|b| b["depth"].clone()),
            Some(json!(0))
        );
        let tenants = q["tenants"].as_array().expect("tenants");
        assert_eq!(tenants.len(), 1, "{backend:?}: {q:#}");
        assert_eq!(tenants[0]["tenant"], tenant);
        assert_eq!(tenants[0]["name"], "counted");
        assert_eq!(sum(&tenants[0]["buckets"], "completions"), 5);

        // /metrics counts the same, per queue and tenant.
        let text = s.get("/metrics").await.text().await.expect("metrics body");
        for line in [
            format!("gantry_arrivals_total{{queue=\"default\",tenant=\"{tenant}\"}} 5"),
            format!("gantry_starts_total{{queue=\"default\",tenant=\"{tenant}\"}} 5"),
            format!("gantry_completions_total{{queue=\"default\",tenant=\"{tenant}\"}} 5"),
            format!("gantry_queue_wait_seconds_count{{queue=\"default\",tenant=\"{tenant}\"}} 5"),
            format!(
                "gantry_queue_wait_seconds_bucket{{queue=\"default\",tenant=\"{tenant}\",le=\"+Inf\"}} 5"
            ),
        ] {
            assert!(text.contains(&line), "{backend:?}: {line} in\n{text}");
        }
    }
}

fn simulate(trace: &str, workers: &str) -> String {
    let out = std::process::Command::new(gantry_tests::gantry_bin())
        .args(["simulate", "--trace"])
        .arg(gantry_tests::repo_root().join(trace))
        .args(["--workers", workers, "--tick-ms", "250"])
        .output()
        .expect("run gantry simulate");
    assert!(
        out.status.success(),
        "gantry simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 report")
}

#[test]
fn simulate_replays_the_burst_scenario_like_the_live_scheduler_and_deterministically() {
    let first = simulate("examples/traces/burst.csv", "2");
    let second = simulate("examples/traces/burst.csv", "2");
    assert_eq!(first, second, "same trace, same report");
    // "300 ms\tb finished\ta 10/200\tb 10/10"
    let line = first
        .lines()
        .find(|l| l.contains("\tb finished"))
        .unwrap_or_else(|| panic!("no line for b finishing in\n{first}"));
    let a_done: usize = line
        .split('\t')
        .find_map(|f| f.strip_prefix("a "))
        .and_then(|f| f.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no progress of a in {line:?}"));
    println!("simulated: when b finished, {a_done} of a's 200 jobs were done");
    assert!(a_done < BURST_BOUND, "{line}");

    let json = simulate("examples/traces/weighted.json", "4");
    assert_eq!(json, simulate("examples/traces/weighted.json", "4"));
    assert!(json.contains("heavy\t3\t10000\t300\t"), "{json}");
}
