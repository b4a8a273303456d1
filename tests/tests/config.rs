//! `gantry serve --config FILE`: a bad file stops the start with the field named; a good
//! one's values take effect, under environment variables and flags.

use std::process::Stdio;
use std::time::Duration;

use gantry_tests::gantry_bin;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `gantry serve` with nothing but `args`, `env` and a clean environment: no `GANTRY_*`,
/// `DATABASE_URL` or `REDIS_URL` of the caller leaks in.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(gantry_bin());
    cmd.arg("serve").args(args).env("RUST_LOG", "warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("GANTRY_") || k == "DATABASE_URL" || k == "REDIS_URL" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.kill_on_drop(true);
    cmd
}

/// Starts the server and returns it with the URL it printed.
async fn start(mut cmd: Command) -> (Child, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn gantry serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.strip_prefix("Listening on ") {
                return url.trim().to_owned();
            }
        }
        panic!("gantry serve exited before listening");
    })
    .await
    .expect("gantry serve did not start within 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

async fn gql(url: &str, token: &str, query: &str, variables: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{url}/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .expect("POST /graphql")
        .json()
        .await
        .expect("JSON response")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_config_file_stops_the_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (text, field) in [
        (
            "workers = \"many\"\n",
            "field \"workers\": expected a non-negative integer",
        ),
        (
            "listen = \"127.0.0.1:0\"\nwokers = 2\n",
            "unknown field \"wokers\"",
        ),
        ("durability = \"sometimes\"\n", "field \"durability\""),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let data = dir.path().join("data");
        let out = serve(
            &[
                "--config",
                path.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
            ],
            &[],
        )
        .output()
        .await
        .expect("run gantry serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: started anyway");
        assert!(
            stderr.contains("invalid config") && stderr.contains(field),
            "{text}: {stderr}"
        );
        assert!(!data.exists(), "nothing was started: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_file_sets_options_under_env_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = dir.path().join("gantry.toml");
    let text = format!(
        r#"
listen = "127.0.0.1:{port}"
data-dir = "{}"
web-dir = "{}"
workers = 1
queues = ["from-file"]
node = "node-from-file"
admin-token = "token-from-file"
"#,
        dir.path().join("data").display(),
        gantry_tests::repo_root().join("web/dist").display()
    );
    std::fs::write(&path, text).unwrap();
    let config = path.to_str().unwrap();

    // File over defaults: the address it listens on, the token it takes, its node name.
    let (mut child, url) = start(serve(&["--config", config], &[])).await;
    assert_eq!(url, format!("http://127.0.0.1:{port}"));
    let info = gql(
        &url,
        "token-from-file",
        "{ serverInfo { node } }",
        json!({}),
    )
    .await;
    assert_eq!(
        info["data"]["serverInfo"]["node"], "node-from-file",
        "{info}"
    );
    child.kill().await.unwrap();

    // Environment over file, flag over environment.
    let (mut child, url) = start(serve(
        &["--config", config, "--listen", "127.0.0.1:0"],
        &[("GANTRY_NODE", "node-from-env")],
    ))
    .await;
    assert_ne!(url, format!("http://127.0.0.1:{port}"));
    let info = gql(
        &url,
        "token-from-file",
        "{ serverInfo { node } }",
        json!({}),
    )
    .await;
    assert_eq!(
        info["data"]["serverInfo"]["node"], "node-from-env",
        "{info}"
    );
    child.kill().await.unwrap();

    let (mut child, url) = start(serve(
        &[
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--node",
            "node-from-flag",
        ],
        &[("GANTRY_NODE", "node-from-env")],
    ))
    .await;
    let info = gql(
        &url,
        "token-from-file",
        "{ serverInfo { node } }",
        json!({}),
    )
    .await;
    assert_eq!(
        info["data"]["serverInfo"]["node"], "node-from-flag",
        "{info}"
    );
    child.kill().await.unwrap();
}
