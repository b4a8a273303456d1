//! The dashboard is served at `/` and shows data it fetched from the API, in a real
//! headless browser.

use std::process::Command;

use gantry_tests::{ADMIN_TOKEN, Backend, Server, ServerOptions};

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_version_and_pipelines_from_the_api() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("CI").is_err(),
            "chromium is required in CI (scripts/browser installs it)"
        );
        eprintln!("skipping: chromium not installed (scripts/browser installs it)");
        return;
    };
    let mut o = ServerOptions::new(Backend::Sqlite);
    o.workers = 0;
    let s = Server::start(o).await;
    s.create_pipeline(
        "shown-in-the-browser",
        "/src/app",
        "jobs:\n  a:\n    steps: [{run: x}]\n",
    )
    .await;
    let html = s.get("/").await.text().await.unwrap();
    assert!(
        html.contains("gantry_web"),
        "index.html loads the WASM app: {html}"
    );

    let profile = tempfile::tempdir().unwrap();
    let url = format!("{}/#token={ADMIN_TOKEN}", s.url);
    let out = tokio::task::spawn_blocking({
        let profile = profile.path().to_owned();
        move || {
            Command::new(browser)
                .args(gantry_tests::CHROMIUM_FLAGS)
                .args(["--virtual-time-budget=10000", "--dump-dom"])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg(url)
                .output()
                .expect("run chromium")
        }
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("shown-in-the-browser"),
        "the page lists the pipeline: {dom}"
    );
    assert!(
        dom.contains("data-testid=\"version\""),
        "the page shows the version: {dom}"
    );
    assert!(dom.contains(env!("CARGO_PKG_VERSION")), "{dom}");
    assert!(
        !dom.contains("data-testid=\"login-form\""),
        "the token from the link signed in: {dom}"
    );
}
