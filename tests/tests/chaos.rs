//! Chaos: a 300-job pipeline on two replicas (one PostgreSQL, one Redis) and remote
//! agents, while agents are SIGKILLed at random and one replica is killed and restarted.
//! Afterwards the database and the event log must show that nothing was lost or run twice
//! at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gantry_tests::{
    Agent, Backend, PgDatabase, Server, ServerOptions, backends, redis_prefix, redis_url,
};
use serde_json::Value;

const MAX_ATTEMPTS: usize = 10;

fn pipeline(effects: &std::path::Path) -> String {
    let step = format!(
        "sleep 0.2; echo $GANTRY_ATTEMPT_ID >> {}",
        effects.display()
    );
    format!(
        r#"
jobs:
  build:
    strategy: {{ matrix: {{ n: [{list}] }} }}
    retry: {{ max-attempts: {MAX_ATTEMPTS}, on: [lost, infra] }}
    steps: [{{run: "{step}"}}]
  test:
    needs: build
    strategy: {{ matrix: {{ n: [{list}] }} }}
    retry: {{ max-attempts: {MAX_ATTEMPTS}, on: [lost, infra] }}
    steps: [{{run: "{step}"}}]
  package:
    needs: test
    strategy: {{ matrix: {{ n: [{list}] }} }}
    retry: {{ max-attempts: {MAX_ATTEMPTS}, on: [lost, infra] }}
    steps: [{{run: "{step}"}}]
"#,
        list = (1..=100)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hundred_jobs_survive_killed_agents_and_a_restarted_replica() {
    if !backends().await.contains(&Backend::Postgres) {
        eprintln!("skipping: chaos needs PostgreSQL");
        return;
    }
    let Some(redis) = redis_url().await else {
        return;
    };
    let db = PgDatabase::create().await;
    let prefix = redis_prefix();
    let mk = || {
        let mut o = ServerOptions::new(Backend::Postgres);
        o.workers = 0;
        o.database_url = Some(db.url.clone());
        o.redis_url = Some(redis.clone());
        o.redis_prefix = Some(prefix.clone());
        o
    };
    let a = Server::start(mk()).await;
    let mut b = Server::start(mk()).await;
    let dir = tempfile::tempdir().unwrap();
    let effects = dir.path().join("effects");
    let p = a
        .create_pipeline("chaos", "/tmp", &pipeline(&effects))
        .await;
    let run_id = a.trigger(&p, "chaos").await;

    let urls = [a.url.clone(), b.url.clone()];
    let mut agents: Vec<Agent> = (0..4)
        .map(|i| Agent::start(&urls[i % 2], &format!("agent-{i}"), &["default"]))
        .collect();
    let mut next_name = agents.len();
    let started = Instant::now();
    let mut killed = 0;
    let mut restarted = false;
    let mut rng_state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next_random = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    // The driver: every 1.5 s kill a random agent and start a fresh one; once, kill the
    // second replica and bring it back on the same address.
    loop {
        let state = a
            .data(
                "query($r: ID!) { run(id: $r) { state } }",
                serde_json::json!({ "r": run_id }),
            )
            .await["run"]["state"]
            .as_str()
            .unwrap()
            .to_owned();
        if ["SUCCEEDED", "FAILED", "CANCELLED"].contains(&state.as_str()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(420),
            "the run did not finish in time"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if killed < 8 {
            let victim = (next_random() as usize) % agents.len();
            agents[victim].kill9().await;
            killed += 1;
            agents[victim] = Agent::start(
                &urls[next_name % 2],
                &format!("agent-{next_name}"),
                &["default"],
            );
            next_name += 1;
        }
        if !restarted && started.elapsed() > Duration::from_secs(6) {
            let addr = b.addr().to_owned();
            b.kill9().await;
            b.spawn(Some(&addr)).await;
            restarted = true;
        }
    }
    eprintln!(
        "chaos: {killed} agents killed, replica restarted: {restarted}, {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let run = a.run(&run_id).await;
    assert_eq!(
        run["state"], "SUCCEEDED",
        "every accepted run is terminal and succeeded"
    );
    let tasks = run["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 300);
    let by_name: HashMap<&str, &Value> = tasks
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t))
        .collect();
    let effects = std::fs::read_to_string(&effects).unwrap();
    let mut total_attempts = 0;
    for t in tasks {
        assert_eq!(t["state"], "SUCCEEDED", "{t}");
        let attempts = t["attempts"].as_array().unwrap();
        total_attempts += attempts.len();
        assert!(
            attempts.len() <= MAX_ATTEMPTS,
            "attempts within the policy: {t}"
        );
        let terminal: Vec<&Value> = attempts
            .iter()
            .filter(|a| a["state"] == "SUCCEEDED")
            .collect();
        assert_eq!(terminal.len(), 1, "exactly one successful attempt: {t}");
        for pair in attempts.windows(2) {
            assert!(
                pair[0]["finishedAt"].as_str().unwrap() <= pair[1]["startedAt"].as_str().unwrap(),
                "attempts of one task never overlap: {t}"
            );
        }
        let started = t["startedAt"].as_str().unwrap();
        for need in t["needs"].as_array().unwrap() {
            let n = by_name[need.as_str().unwrap()];
            assert!(
                n["finishedAt"].as_str().unwrap() <= started,
                "no task before its needs"
            );
        }
        let winner = terminal[0]["id"].as_str().unwrap();
        assert!(
            effects.contains(winner),
            "the side effect of {} is present",
            t["name"]
        );
    }
    // Every task's terminal state appears exactly once in the event log.
    let mut terminal_events: HashMap<String, usize> = HashMap::new();
    for e in run["events"].as_array().unwrap() {
        if e["entity"] == "TASK" && e["to"] == "SUCCEEDED" {
            *terminal_events
                .entry(e["entityId"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(terminal_events.len(), 300);
    assert!(terminal_events.values().all(|n| *n == 1));
    eprintln!("chaos: {total_attempts} attempts for 300 tasks");
    for mut agent in agents {
        agent.kill9().await;
    }
}
