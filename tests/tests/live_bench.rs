//! Benchmark (run by hand, prints figures): 1,000 concurrent subscribers on one run of
//! 100 jobs — delay from a transition's commit to its delivery, and server memory per idle
//! subscription.
//!
//! `cargo test -p gantry-tests --test live_bench -- --ignored --nocapture`
//! (`LIVE_BENCH_STEP` sets the work jobs' step; the default is `true`).

use std::time::Duration;

use gantry_tests::ws::Subscription;
use gantry_tests::{Backend, Server, ServerOptions};
use serde_json::json;

const SUBSCRIBERS: usize = 1000;
/// The server's default bound on WebSocket connections per token.
const TOKEN_CONNECTIONS: usize = 32;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used so far, in milliseconds.
fn cpu_ms(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are the 14th and 15th fields, in clock ticks of 10 ms.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 10
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run by hand"]
async fn thousand_subscribers_on_one_run_of_a_hundred_jobs() {
    let gate = tempfile::tempdir().unwrap();
    let gate_file = gate.path().join("open");
    let mut o = ServerOptions::new(Backend::Sqlite);
    o.workers = 2;
    let s = Server::start(o).await;
    // One gate job holds the other 99 until the subscribers are in place.
    // The work jobs' step: `true` by default, which makes the whole run's events arrive
    // within half a second; `LIVE_BENCH_STEP='sleep 0.1'` paces them as jobs that work.
    let step = std::env::var("LIVE_BENCH_STEP").unwrap_or_else(|_| "true".into());
    let file = format!(
        "name: bench\njobs:\n  gate:\n    steps:\n      - run: while [ ! -f {} ]; do sleep 0.05; done\n  work:\n    needs: gate\n    strategy: {{ matrix: {{ n: [{}] }} }}\n    steps:\n      - run: '{step}'\n",
        gate_file.display(),
        (1..=99)
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let p = s.create_pipeline("bench", "/src/app", &file).await;
    let run = s.trigger(&p, "abc").await;
    let pid = s.pid().unwrap();

    let q = "subscription($r: ID!, $a: String) { runEvents(run: $r, after: $a) { seq at } }";
    // Measure from after the gate job started (its start commits the run's first
    // transitions): an event committed before the subscribers connect would count the
    // time they took to connect.
    gantry_tests::ws::wait_event(&s, &run, Duration::from_secs(30), |e| {
        e["entity"] == "ATTEMPT" && e["to"] == "RUNNING"
    })
    .await;
    let last = s.run(&run).await["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["seq"]
        .as_str()
        .unwrap()
        .to_owned();
    // A token may hold a bounded number of connections (as a dashboard or bot would):
    // the subscribers sign in with enough read tokens between them.
    let mut tokens = Vec::new();
    for n in 0..SUBSCRIBERS.div_ceil(TOKEN_CONNECTIONS) {
        let d = s
            .data(
                "mutation($n: String!) { createApiToken(input: {name: $n, scopes: [READ]}) { token } }",
                json!({ "n": format!("bench-{n}") }),
            )
            .await;
        tokens.push(d["createApiToken"]["token"].as_str().unwrap().to_owned());
    }
    let before = rss_kb(pid);
    let mut subs = Vec::with_capacity(SUBSCRIBERS);
    for n in 0..SUBSCRIBERS {
        // Start live: after the newest event so far, so the subscriptions sit idle.
        subs.push(
            Subscription::open_as(
                &s,
                &tokens[n / TOKEN_CONNECTIONS],
                "graphql-transport-ws",
                q,
                json!({ "r": run, "a": last }),
            )
            .await,
        );
    }
    // Let the server settle the new connections before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kb(pid);
    let per_sub = (after.saturating_sub(before)) as f64 / SUBSCRIBERS as f64;

    let cpu_before = (cpu_ms(&pid.to_string()), cpu_ms("self"));
    std::fs::write(&gate_file, b"").unwrap();
    let mut tasks = Vec::new();
    for mut sub in subs {
        tasks.push(tokio::spawn(async move {
            let mut delays = Vec::new();
            // Read without a JSON parser: the client shares the two cores with the
            // server it measures. Anything but a `next` (complete, error) ends it.
            while let Some(text) = sub.next_text(Duration::from_secs(120)).await {
                if text.contains(r#""type":"ping""#) || text.contains(r#""type":"pong""#) {
                    continue;
                }
                if !text.contains(r#""type":"next""#) {
                    break;
                }
                let at = text
                    .split_once(r#""at":""#)
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(at, _)| at)
                    .expect("a runEvents payload with its time");
                delays.push(now_ms() - chrono_ms(at));
            }
            delays
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let cpu = (
        cpu_ms(&pid.to_string()) - cpu_before.0,
        cpu_ms("self") - cpu_before.1,
    );
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    let within_50 = all.partition_point(|d| *d <= 50) as f64 / all.len() as f64 * 100.0;
    println!(
        "live bench: {SUBSCRIBERS} subscribers, step {step:?}, {} deliveries; commit→delivery p50 {} ms, p99 {} ms, max {} ms, {:.1}% within 50 ms; server RSS {} KB → {} KB, {:.1} KB per idle subscription; CPU from the gate's opening: server {} ms, client {} ms",
        all.len(),
        pct(0.50),
        pct(0.99),
        all.last().unwrap(),
        within_50,
        before,
        after,
        per_sub,
        cpu.0,
        cpu.1
    );
}

/// Milliseconds of an RFC 3339 time (`2026-11-28T23:40:00.123Z`).
fn chrono_ms(s: &str) -> i64 {
    // The test crate has no date library: parse the fixed format by hand.
    let (date, time) = s.split_once('T').unwrap();
    let mut d = date.split('-').map(|x| x.parse::<i64>().unwrap());
    let (y, m, day) = (d.next().unwrap(), d.next().unwrap(), d.next().unwrap());
    let time = time.trim_end_matches('Z').trim_end_matches("+00:00");
    let mut t = time.split(':');
    let (h, mi) = (
        t.next().unwrap().parse::<i64>().unwrap(),
        t.next().unwrap().parse::<i64>().unwrap(),
    );
    let sec: f64 = t.next().unwrap().parse().unwrap();
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    ((days * 86400 + h * 3600 + mi * 60) as f64 * 1000.0 + sec * 1000.0).round() as i64
}
