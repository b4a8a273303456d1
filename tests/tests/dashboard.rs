//! The dashboard end to end, in headless Chromium driven through chromedriver against a
//! real server: sign in by link, trigger a pipeline from the UI, watch its DAG go to
//! success live, open a task's log, look at the timeline, load and workers views, and
//! cancel a running run from the UI.
//!
//! Every view is saved as a PNG under `target/screenshots/<backend>/` (or the directory in
//! `GANTRY_SCREENSHOTS`), so a run of the suite leaves pictures to look at.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use gantry_tests::{ADMIN_TOKEN, Backend, Server, ServerOptions, backends, repo_root};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const WAIT: Duration = Duration::from_secs(60);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// chromedriver on a free port; killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let stdout = child.stdout.take().expect("BUG: stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("started successfully") {
                    return;
                }
            }
            panic!("chromedriver exited before it was ready");
        })
        .await
        .expect("chromedriver did not start");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Driver { child, port }
    }

    async fn browser(&self, profile: &std::path::Path) -> Client {
        let mut args: Vec<String> = gantry_tests::CHROMIUM_FLAGS
            .iter()
            .map(|f| f.to_string())
            .collect();
        args.push("--window-size=1440,900".into());
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM, "args": args }),
        );
        ClientBuilder::native()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("connect to chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn screenshot_dir(backend: Backend) -> PathBuf {
    let base = std::env::var_os("GANTRY_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/screenshots"));
    let dir = base.join(format!("{backend:?}").to_lowercase());
    std::fs::create_dir_all(&dir).expect("create screenshot dir");
    dir
}

async fn shot(client: &Client, dir: &std::path::Path, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

async fn wait_for(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("waiting for {css}: {e}"))
}

/// A click through the DOM: SVG groups have no reliable centre for WebDriver clicks.
async fn js_click(client: &Client, css: &str) {
    wait_for(client, css).await;
    client
        .execute(
            "document.querySelector(arguments[0]).dispatchEvent(new MouseEvent('click', {bubbles: true}));",
            vec![json!(css)],
        )
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

async fn node_states(client: &Client) -> Vec<(String, String)> {
    let v = client
        .execute(
            "return [...document.querySelectorAll('[data-testid=dag-node]')].map(n => [n.dataset.name, n.dataset.state]);",
            vec![],
        )
        .await
        .expect("read DAG nodes");
    v.as_array()
        .expect("array")
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap_or_default().to_owned(),
                p[1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

const CI_PIPELINE: &str = r#"name: ci
jobs:
  build:
    steps:
      - name: compile
        run: printf '\033[32mbuilding the thing\033[0m\n'; sleep 2
  test:
    needs: build
    strategy: { matrix: { shard: [1, 2] } }
    steps:
      - run: echo "shard ${{ matrix.shard }} passed"; sleep 1
  deploy:
    needs: test
    steps:
      - run: echo deployed
"#;

const SLOW_PIPELINE: &str = r#"name: slow
jobs:
  wait:
    steps:
      - run: echo started; sleep 120
"#;

const RELEASE_PIPELINE: &str = "name: release
jobs:
  publish:
    trigger: { pipeline: ci, wait: false }
";

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_triggers_follows_logs_and_cancels_runs_live() {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        assert!(
            !in_ci(),
            "chromium and chromedriver are required in CI (scripts/browser installs them)"
        );
        eprintln!("skipping: chromium or chromedriver missing (scripts/browser installs them)");
        return;
    }
    let driver = Driver::start().await;
    for backend in backends().await {
        run_scenario(&driver, backend).await;
    }
}

async fn run_scenario(driver: &Driver, backend: Backend) {
    let dir = screenshot_dir(backend);
    let server = Server::start(ServerOptions::new(backend)).await;
    let ci = server.create_pipeline("ci", "/src/app", CI_PIPELINE).await;
    let slow = server
        .create_pipeline("slow", "/src/app", SLOW_PIPELINE)
        .await;

    let profile = tempfile::tempdir().expect("profile dir");
    let client = driver.browser(profile.path()).await;
    client
        .goto(&format!("{}/#token={ADMIN_TOKEN}", server.url))
        .await
        .expect("open dashboard");
    wait_for(&client, "[data-testid=sidebar-pipeline]").await;
    wait_for(&client, "[data-testid=connection].ok").await;
    shot(&client, &dir, "01-runs-empty").await;

    // Trigger from the UI.
    wait_for(&client, "[data-testid=trigger-button]")
        .await
        .click()
        .await
        .expect("click trigger");
    wait_for(&client, "[data-testid=trigger-form]").await;
    client
        .execute(
            "const s = document.querySelector('[data-testid=trigger-pipeline]'); s.value = arguments[0]; s.dispatchEvent(new Event('change', {bubbles: true}));",
            vec![json!(ci)],
        )
        .await
        .expect("choose pipeline");
    wait_for(&client, "[data-testid=trigger-sha]")
        .await
        .send_keys("0123456789abcdef0123456789abcdef01234567")
        .await
        .expect("type sha");
    shot(&client, &dir, "02-trigger").await;
    // A marker on the page object: it survives only if the page is never reloaded.
    client
        .execute("window.__sameDocument = true;", vec![])
        .await
        .expect("mark page");
    wait_for(&client, "[data-testid=trigger-submit]")
        .await
        .click()
        .await
        .expect("submit");

    // The DAG appears while the run is still going...
    wait_for(&client, "[data-testid=dag-node]").await;
    let url = client.current_url().await.expect("url");
    let run_id = url
        .path()
        .strip_prefix("/runs/")
        .expect("the trigger opened the run's page")
        .to_owned();
    let first = node_states(&client).await;
    assert!(
        first.iter().any(|(_, s)| s != "SUCCEEDED"),
        "the run is not finished when the DAG first shows: {first:?}"
    );
    // The matrix job is folded into one node.
    assert!(
        first.iter().any(|(n, _)| n == "test ×2"),
        "the matrix folds: {first:?}"
    );
    shot(&client, &dir, "03-dag-running").await;

    // ...and goes to success live, without a reload.
    wait_for(&client, "[data-testid=run-state][data-state=SUCCEEDED]").await;
    let last = node_states(&client).await;
    assert!(
        last.iter().all(|(_, s)| s == "SUCCEEDED"),
        "every node turned green: {last:?}"
    );
    let same = client
        .execute("return window.__sameDocument === true;", vec![])
        .await
        .expect("read marker");
    assert_eq!(same, Value::Bool(true), "the page was never reloaded");
    shot(&client, &dir, "04-dag-succeeded").await;

    // A folded matrix opens on click.
    js_click(&client, "[data-testid=dag-node][data-name='test ×2']").await;
    wait_for(
        &client,
        "[data-testid=dag-node][data-name='test (shard=1)']",
    )
    .await;
    assert_eq!(node_states(&client).await.len(), 4);

    // The task panel and the task's log.
    js_click(&client, "[data-testid=dag-node][data-name=build]").await;
    wait_for(
        &client,
        "[data-testid=task-panel] [data-testid=attempt-row]",
    )
    .await;
    shot(&client, &dir, "05-task-panel").await;
    js_click(&client, "[data-testid=open-log]").await;
    wait_for(&client, "[data-testid=log-view]").await;
    let line = client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::XPath(
            "//*[@data-testid='log-line'][contains(., 'building the thing')]",
        ))
        .await
        .expect("the log shows the step's output");
    let colored = line
        .find(Locator::Css("span.fg2"))
        .await
        .expect("ANSI green is drawn as a colour class");
    assert_eq!(colored.text().await.expect("text"), "building the thing");
    wait_for(&client, "[data-testid=log-section]").await;
    wait_for(&client, "[data-testid=log-status].ended").await;
    shot(&client, &dir, "06-log").await;

    // Back to the run (a deep link), its timeline.
    client
        .goto(&format!("{}/runs/{run_id}/timeline", server.url))
        .await
        .expect("open timeline");
    wait_for(&client, "[data-testid=timeline-row]").await;
    shot(&client, &dir, "07-timeline").await;

    // Cancel a running run from the UI.
    let slow_run = server.trigger(&slow, "feedbeef").await;
    client
        .goto(&format!("{}/runs/{slow_run}", server.url))
        .await
        .expect("open slow run");
    wait_for(&client, "[data-testid=dag-node][data-state=RUNNING]").await;
    shot(&client, &dir, "08-run-running").await;
    js_click(&client, "[data-testid=cancel-run]").await;
    wait_for(&client, "[data-testid=run-state][data-state=CANCELLED]").await;
    let run = server.wait_run(&slow_run, WAIT).await;
    assert_eq!(run["state"], "CANCELLED");
    shot(&client, &dir, "09-run-cancelled").await;

    // The runs table lists both runs; load, workers, help, dark theme.
    js_click(&client, "[data-testid=nav-runs]").await;
    wait_for(
        &client,
        &format!("[data-testid=run-row][data-id='{slow_run}']"),
    )
    .await;
    wait_for(
        &client,
        &format!("[data-testid=run-row][data-id='{run_id}'][data-state=SUCCEEDED]"),
    )
    .await;
    shot(&client, &dir, "10-runs").await;
    js_click(&client, "[data-testid=nav-load]").await;
    wait_for(&client, "[data-testid=chart]").await;
    wait_for(&client, "[data-testid=worker-row]").await;
    shot(&client, &dir, "11-load").await;
    js_click(&client, "[data-testid=nav-workers]").await;
    wait_for(
        &client,
        "[data-testid=workers-table] [data-testid=worker-row]",
    )
    .await;
    shot(&client, &dir, "12-workers").await;
    client
        .execute(
            "window.dispatchEvent(new KeyboardEvent('keydown', {key: '?'}));",
            vec![],
        )
        .await
        .expect("press ?");
    wait_for(&client, "[data-testid=help]").await;
    shot(&client, &dir, "13-help").await;
    client
        .execute(
            "window.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}));",
            vec![],
        )
        .await
        .expect("press Escape");
    js_click(&client, "[data-testid=theme-toggle]").await;
    client
        .goto(&format!("{}/runs/{run_id}", server.url))
        .await
        .expect("open run");
    wait_for(&client, "[data-testid=dag-node]").await;
    shot(&client, &dir, "14-dag-other-theme").await;

    // A trigger job links to the run it started, and that run back to its parent task.
    let release = server
        .create_pipeline("release", "/src/app", RELEASE_PIPELINE)
        .await;
    let parent_run = server.trigger(&release, "cafef00d").await;
    client
        .goto(&format!("{}/runs/{parent_run}", server.url))
        .await
        .expect("open parent run");
    js_click(&client, "[data-testid=dag-node][data-name=publish]").await;
    js_click(&client, "[data-testid=child-run] a").await;
    let back = wait_for(&client, "[data-testid=parent-run]").await;
    let text = back.text().await.expect("parent link text");
    assert!(
        text.contains("publish") && text.contains("release #1"),
        "the child run names its parent task: {text:?}"
    );
    assert_ne!(
        client.current_url().await.expect("url").path(),
        format!("/runs/{parent_run}"),
        "the child-run link opens the child run"
    );
    back.click().await.expect("follow the parent link");
    wait_for(
        &client,
        &format!("[data-testid=run-view][data-run='{parent_run}']"),
    )
    .await;
    shot(&client, &dir, "15-child-run").await;

    client.close().await.expect("close browser");
}
