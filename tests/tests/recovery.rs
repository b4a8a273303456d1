//! Crash recovery: lost workers are detected and their attempts retried elsewhere, a
//! killed server resumes every accepted run after a restart, and a graceful shutdown lets
//! running attempts finish or hands them back.

use std::time::{Duration, Instant};

use gantry_tests::{Agent, Server, ServerOptions, backends, ws};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(120);

fn task<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap()
}

fn kill_pid_file(path: &std::path::Path) {
    if let Ok(text) = std::fs::read_to_string(path) {
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_of_a_killed_agent_is_lost_and_retried_on_another_worker() {
    for backend in backends().await {
        let mut o = ServerOptions::new(backend);
        o.workers = 0;
        let s = Server::start(o).await;
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("first");
        let pids = dir.path().join("pids");
        // The first try hangs (its agent will die); the retry finishes at once.
        let file = format!(
            "jobs:\n  build:\n    steps:\n      - run: |\n          if [ -f {m} ]; then echo retried; exit 0; fi\n          touch {m}; echo $$ >> {p}; echo ready; sleep 300\n",
            m = mark.display(),
            p = pids.display()
        );
        let mut doomed = Agent::start(&s.url, "doomed", &["default"]);
        let p = s.create_pipeline("lost", "/tmp", &file).await;
        let run_id = s.trigger(&p, "abc").await;
        let started = ws::wait_event(&s, &run_id, WITHIN, |e| {
            e["entity"] == "ATTEMPT" && e["to"] == "RUNNING"
        })
        .await;
        ws::wait_log(&s, started["entityId"].as_str().unwrap(), "ready", WITHIN).await;

        doomed.kill9().await;
        let killed_at = Instant::now();
        let _rescuer = Agent::start(&s.url, "rescuer", &["default"]);
        let retry = ws::wait_event(&s, &run_id, WITHIN, |e| {
            e["entity"] == "ATTEMPT" && e["to"] == "RUNNING" && e["entityId"] != started["entityId"]
        })
        .await;
        let recovery = killed_at.elapsed();
        eprintln!(
            "{backend:?}: killed agent to retry running elsewhere: {:.1} s",
            recovery.as_secs_f64()
        );

        let run = s.wait_run(&run_id, WITHIN).await;
        kill_pid_file(&pids);
        assert_eq!(run["state"], "SUCCEEDED", "{run:#}");
        let attempts = task(&run, "build")["attempts"].as_array().unwrap().clone();
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0]["state"], "LOST");
        assert_eq!(attempts[0]["errorKind"], "LOST");
        assert_eq!(attempts[1]["id"], retry["entityId"]);
        assert_eq!(attempts[1]["state"], "SUCCEEDED");
        assert_ne!(attempts[0]["worker"], attempts[1]["worker"]);
        let lost = run["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["attempt"] == attempts[0]["id"] && e["to"] == "LOST")
            .expect("lost event")
            .clone();
        assert!(
            lost["reason"].as_str().unwrap().starts_with("reconciler"),
            "{lost}"
        );
        assert!(
            !lost["node"].as_str().unwrap().is_empty(),
            "the deciding node is named"
        );
        let workers = s.data("{ workers { name state } }", json!({})).await["workers"].clone();
        let doomed_state = workers
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "doomed")
            .unwrap()["state"]
            .clone();
        assert_eq!(doomed_state, "lost");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_and_restart_every_accepted_run_completes() {
    for backend in backends().await {
        let mut s = Server::start(ServerOptions::new(backend)).await;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("effects");
        let file = format!(
            "jobs:\n  a:\n    strategy: {{ matrix: {{ n: [1, 2, 3, 4] }} }}\n    steps: [{{run: \"sleep 1; echo ${{{{ matrix.n }}}}-$GANTRY_ATTEMPT_ID >> {l}\"}}]\n  b:\n    needs: a\n    steps: [{{run: \"echo b-$GANTRY_ATTEMPT_ID >> {l}\"}}]\n",
            l = log.display()
        );
        let p = s.create_pipeline("restart", "/tmp", &file).await;
        let runs: Vec<String> = vec![s.trigger(&p, "one").await, s.trigger(&p, "two").await];
        ws::wait_event(&s, &runs[0], WITHIN, |e| {
            e["entity"] == "ATTEMPT" && e["to"] == "RUNNING"
        })
        .await;

        s.kill9().await;
        let restarted = Instant::now();
        s.spawn(None).await;
        let ready = loop {
            if s.get("/readyz").await.status().is_success() {
                break restarted.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        eprintln!("{backend:?}: restart to /readyz: {} ms", ready.as_millis());

        let mut lost = 0;
        for id in &runs {
            let run = s.wait_run(id, WITHIN).await;
            assert_eq!(run["state"], "SUCCEEDED", "{backend:?}: {run:#}");
            for t in run["tasks"].as_array().unwrap() {
                let attempts = t["attempts"].as_array().unwrap();
                assert_eq!(attempts.last().unwrap()["state"], "SUCCEEDED");
                lost += attempts.iter().filter(|a| a["state"] == "LOST").count();
                // No two attempts of one task overlapped.
                for pair in attempts.windows(2) {
                    assert!(
                        pair[0]["finishedAt"].as_str().unwrap()
                            <= pair[1]["startedAt"].as_str().unwrap()
                    );
                }
            }
        }
        assert!(
            lost >= 1,
            "the attempts of the killed process were found lost and retried"
        );
        let effects = std::fs::read_to_string(&log).unwrap();
        for id in &runs {
            let run = s.run(id).await;
            for t in run["tasks"].as_array().unwrap() {
                let winner = t["attempts"].as_array().unwrap().last().unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                assert!(
                    effects.contains(&winner),
                    "side effect of {} present",
                    t["name"]
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_running_attempts_finish_or_hands_them_back() {
    let backend = gantry_tests::Backend::Sqlite;
    let mut o = ServerOptions::new(backend);
    o.extra_args = vec!["--shutdown-grace-secs".into(), "3".into()];
    let mut s = Server::start(o).await;
    let file = "jobs:\n  quick:\n    steps: [{run: \"echo go; sleep 1; echo done\"}]\n  slow:\n    steps: [{run: \"echo go; sleep 300\"}]\n";
    let p = s.create_pipeline("drain", "/tmp", file).await;
    let run_id = s.trigger(&p, "abc").await;
    let run = s.run(&run_id).await;
    for t in ["quick", "slow"] {
        let id = task(&run, t)["id"].as_str().unwrap().to_owned();
        let e = ws::wait_event(&s, &run_id, WITHIN, |e| {
            e["entity"] == "TASK" && e["entityId"] == id.as_str() && e["to"] == "RUNNING"
        })
        .await;
        assert_eq!(e["to"], "RUNNING");
    }
    let status = s.terminate().await.expect("exit status");
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");

    s.spawn(None).await;
    let run = s.run(&run_id).await;
    let quick = &task(&run, "quick")["attempts"][0];
    assert_eq!(
        quick["state"], "SUCCEEDED",
        "finished within the grace period"
    );
    let slow = &task(&run, "slow")["attempts"][0];
    assert_eq!(slow["state"], "LOST", "handed back after the grace period");
    assert_eq!(
        task(&run, "slow")["attempts"][1]["index"],
        2,
        "and retried under the default policy"
    );
    let cancel = s
        .gql(
            "mutation($r: ID!) { cancelRun(id: $r) { state } }",
            json!({ "r": run_id }),
        )
        .await;
    assert!(cancel.get("errors").is_none(), "{cancel}");
}

#[tokio::test(flavor = "multi_thread")]
async fn while_postgresql_restarts_the_api_answers_unavailable_and_recovers_by_itself() {
    let Some(pg) = gantry_tests::PrivatePostgres::start() else {
        assert!(
            std::env::var("CI").is_err(),
            "a private PostgreSQL is required in CI"
        );
        return;
    };
    let mut o = ServerOptions::new(gantry_tests::Backend::Postgres);
    o.database_url = Some(pg.url());
    o.workers = 1;
    let s = Server::start(o).await;
    let p = s
        .create_pipeline("pg", "/tmp", "jobs:\n  a:\n    steps: [{run: \"true\"}]\n")
        .await;

    assert!(pg.ctl("stop"));
    let down = s
        .gql("{ pipelines { edges { node { id } } } }", json!({}))
        .await;
    assert_eq!(
        down["errors"][0]["extensions"]["code"], "UNAVAILABLE",
        "{down}"
    );
    assert!(!s.get("/readyz").await.status().is_success());

    assert!(pg.ctl("start"));
    let recovered = Instant::now();
    let back = loop {
        let res = s
            .gql("{ pipelines { edges { node { id } } } }", json!({}))
            .await;
        if res.get("errors").is_none() {
            break res;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(30),
            "no recovery: {res}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        back["data"]["pipelines"]["edges"][0]["node"]["id"],
        p.as_str()
    );
    let run = s.trigger(&p, "abc").await;
    assert_eq!(
        s.wait_run(&run, WITHIN).await["state"],
        "SUCCEEDED",
        "work flows again"
    );
}
