//! `GET /metrics` after a real run: the node's counters and histograms add up to what
//! happened (leases, outcomes, API calls, background passes, event delivery).

use std::collections::BTreeMap;
use std::time::Duration;

use gantry_tests::{Backend, Server, ServerOptions, backends, git_repo};
use serde_json::json;

/// Every sample of the text: the series (name with its labels, as rendered) to its value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("`series value`");
            let value = value.parse().unwrap_or_else(|_| panic!("bad value in {l}"));
            (series.to_owned(), value)
        })
        .collect()
}

fn get(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in {samples:#?}"))
}

/// Histograms are well formed: buckets never decrease, `+Inf` equals `_count`, and the
/// sum is not negative.
fn check_histograms(text: &str) {
    let mut buckets: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for (series, value) in samples(text) {
        let Some((name, labels)) = series.split_once("_bucket{") else {
            continue;
        };
        let (rest, le) = labels
            .trim_end_matches('}')
            .rsplit_once("le=\"")
            .expect("le label");
        let key = format!("{name}{{{}}}", rest.trim_end_matches(','));
        buckets
            .entry(key)
            .or_default()
            .push((le.trim_end_matches('"').to_owned(), value));
    }
    assert!(!buckets.is_empty(), "no histogram in {text}");
    let all = samples(text);
    for (key, mut bs) in buckets {
        let bound = |le: &str| {
            if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse::<f64>().expect("numeric le")
            }
        };
        bs.sort_by(|a, b| bound(&a.0).total_cmp(&bound(&b.0)));
        for pair in bs.windows(2) {
            assert!(pair[0].1 <= pair[1].1, "{key}: buckets decrease: {bs:?}");
        }
        let (name, labels) = key.split_once('{').expect("braces");
        let labels = labels.trim_end_matches('}');
        let suffix = |s: &str| {
            if labels.is_empty() {
                format!("{name}_{s}")
            } else {
                format!("{name}_{s}{{{labels}}}")
            }
        };
        let inf = bs.last().expect("a bucket").1;
        assert_eq!(
            inf,
            get(&all, &suffix("count")),
            "{key}: +Inf is not the count"
        );
        assert!(get(&all, &suffix("sum")) >= 0.0, "{key}: negative sum");
    }
}

const PIPELINE: &str = r#"
jobs:
  build:
    steps:
      - run: echo built
  test:
    needs: build
    strategy: { matrix: { shard: [1, 2, 3] } }
    steps:
      - run: echo shard ${{ matrix.shard }}
  flaky:
    continue-on-error: true
    steps:
      - run: exit 3
"#;

async fn metrics_after_a_run(backend: Backend) {
    let server = Server::start(ServerOptions::new(backend)).await;
    let (repo, sha) = git_repo(&[("README", "metrics\n")]);
    let pipeline = server
        .create_pipeline("metrics", &repo.path().display().to_string(), PIPELINE)
        .await;
    let run_id = server.trigger(&pipeline, &sha).await;
    let run = server.wait_run(&run_id, Duration::from_secs(60)).await;
    assert_eq!(run["state"], "SUCCEEDED", "{run:#}");

    let response = server.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().contains_key("x-request-id"),
        "responses carry their request id"
    );
    let text = response.text().await.expect("metrics text");
    let s = samples(&text);

    // Five tasks: four succeed, the one that exits 3 fails (and is not retried: `exit`
    // is not in the default policy); each attempt was leased once.
    assert_eq!(
        get(&s, r#"gantry_attempts_finished_total{outcome="succeeded"}"#),
        4.0
    );
    assert_eq!(
        get(&s, r#"gantry_attempts_finished_total{outcome="failed"}"#),
        1.0
    );
    assert_eq!(get(&s, r#"gantry_leases_total{queue="default"}"#), 5.0);
    assert_eq!(
        get(&s, r#"gantry_runs_finished_total{state="succeeded"}"#),
        1.0
    );

    // The API calls above, by operation and by route.
    for op in ["mutation createPipeline", "mutation triggerRun"] {
        let series =
            format!(r#"gantry_graphql_operation_duration_seconds_count{{operation="{op}"}}"#);
        assert_eq!(get(&s, &series), 1.0, "{op}");
    }
    assert!(
        get(
            &s,
            r#"gantry_graphql_operation_duration_seconds_count{operation="query run"}"#
        ) >= 1.0
    );
    assert!(
        get(
            &s,
            r#"gantry_http_request_duration_seconds_count{route="/graphql",method="POST",status="200"}"#
        ) >= 3.0
    );

    // Every event of the run reached this node's subscribers and was timed.
    let events = run["events"].as_array().expect("events").len() as f64;
    assert!(get(&s, "gantry_event_delivery_lag_seconds_count") >= events);
    assert_eq!(get(&s, "gantry_subscribers_lagged_total"), 0.0);

    // The background loops made their first passes at start; the reconciler had nothing
    // to repair, and says so with zeros.
    for lp in ["scheduler", "cron", "reconciler"] {
        let series = format!(r#"gantry_background_pass_duration_seconds_count{{loop="{lp}"}}"#);
        assert!(get(&s, &series) >= 1.0, "{lp}");
    }
    assert_eq!(
        get(
            &s,
            r#"gantry_reconciler_actions_total{kind="attempt_lost"}"#
        ),
        0.0
    );
    assert_eq!(get(&s, r#"gantry_queue_depth{queue="default"}"#), 0.0);
    check_histograms(&text);

    // A scrape is itself a request; the next one sees it under its route.
    let again = samples(&server.get("/metrics").await.text().await.expect("text"));
    assert!(
        get(
            &again,
            r#"gantry_http_request_duration_seconds_count{route="/metrics",method="GET",status="200"}"#
        ) >= 1.0
    );
    // Queries by the test after the run do not change the outcome counters.
    server.data("{ viewer { scopes } }", json!({})).await;
    let last = samples(&server.get("/metrics").await.text().await.expect("text"));
    assert_eq!(
        get(
            &last,
            r#"gantry_attempts_finished_total{outcome="succeeded"}"#
        ),
        4.0
    );
}

#[tokio::test]
async fn metrics_count_leases_outcomes_api_calls_and_background_passes() {
    for backend in backends().await {
        metrics_after_a_run(backend).await;
    }
}
