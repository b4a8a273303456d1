//! An S3-compatible server for artifact tests: `s3s-fs` serving a temporary directory on a
//! free loopback port. Installed by `scripts/s3`; a test skips with a printed reason when
//! it is missing, and fails instead when `CI` is set.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

pub const ACCESS_KEY: &str = "gantry-test-access";
pub const SECRET_KEY: &str = "gantry-test-secret";
pub const BUCKET: &str = "gantry";

/// A running `s3s-fs`.
pub struct S3Server {
    pub endpoint: String,
    /// The directory behind the server: a bucket is a directory, an object a file.
    pub root: tempfile::TempDir,
    _child: Child,
}

fn binary() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(home).join("bin/s3s-fs"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/s3s-fs"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

impl S3Server {
    /// Starts a server with one bucket, [`BUCKET`]; `None` (with the reason printed) when
    /// `s3s-fs` is not installed outside CI.
    pub async fn start() -> Option<S3Server> {
        let Some(bin) = binary() else {
            assert!(
                !super::in_ci(),
                "s3s-fs is required in CI: install it with scripts/s3"
            );
            eprintln!("skipping S3: s3s-fs is not installed (scripts/s3 installs it)");
            return None;
        };
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join(BUCKET)).expect("bucket dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(bin)
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .arg("--access-key")
            .arg(ACCESS_KEY)
            .arg("--secret-key")
            .arg(SECRET_KEY)
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn s3s-fs");
        // Readiness is the port accepting connections; there is no event to await.
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
            _child: child,
        })
    }

    /// The environment that points `gantry serve` at this server.
    pub fn server_env(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("GANTRY_ARTIFACT_STORE", format!("s3://{BUCKET}/{prefix}")),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}
