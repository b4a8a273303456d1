//! The test harness: starts the real `gantry` binary on a fresh database — SQLite in a
//! temporary directory, or a PostgreSQL database created for the test and dropped after —
//! and talks to it over HTTP like any client.
//!
//! A test that needs PostgreSQL skips with a printed reason when the server is absent, and
//! fails instead when `CI` is set.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The admin token every test server is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Where a test server keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Whether this runs in CI (`CI` set), where skipping for a missing service is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The backends this machine offers: SQLite always, PostgreSQL when reachable.
pub async fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite];
    match sea_orm::Database::connect(postgres_admin_url()).await {
        Ok(db) => {
            let _ = db.close().await;
            out.push(Backend::Postgres);
        }
        Err(e) => {
            assert!(
                !in_ci(),
                "PostgreSQL is required in CI but unreachable: {e}"
            );
            eprintln!(
                "skipping PostgreSQL: unreachable at {} ({e})",
                postgres_admin_url()
            );
        }
    }
    out
}

/// A PostgreSQL database made for one test, dropped when the test ends.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        use sea_orm::ConnectionTrait;
        let name = format!("gantry_test_{:016x}", rand::random::<u64>());
        let admin = sea_orm::Database::connect(postgres_admin_url())
            .await
            .expect("connect to PostgreSQL");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let _ = admin.close().await;
        let base = postgres_admin_url();
        let prefix = base
            .rsplit_once('/')
            .map(|(p, _)| p.to_owned())
            .unwrap_or(base);
        PgDatabase {
            url: format!("{prefix}/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Dropping needs a connection; do it on a thread with its own runtime so that Drop
        // works inside and outside async contexts.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    use sea_orm::ConnectionTrait;
                    if let Ok(admin) = sea_orm::Database::connect(postgres_admin_url()).await {
                        let _ = admin
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .await;
                        let _ = admin.close().await;
                    }
                });
            }
        })
        .join();
    }
}

/// The repository root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("BUG: tests/ has a parent")
        .to_path_buf()
}

/// The `gantry` binary, built once per test process if needed.
pub fn gantry_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // Benchmarks may point at a release build instead.
        if let Some(bin) = std::env::var_os("GANTRY_TEST_BIN") {
            return PathBuf::from(bin);
        }
        // Test executables live in <target>/<profile>/deps; the binary one level up.
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("BUG: test exe in target/<profile>/deps");
        let bin = profile_dir.join("gantry");
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "gantry", "--bin", "gantry"])
            .current_dir(repo_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the gantry binary failed");
        assert!(bin.exists(), "gantry binary not found at {}", bin.display());
        bin
    })
}

/// Options of a test server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub backend: Backend,
    pub workers: usize,
    pub queues: Vec<String>,
    pub kill_grace_secs: u64,
    pub extra_env: Vec<(String, String)>,
    /// More `gantry serve` arguments.
    pub extra_args: Vec<String>,
    /// Use this database instead of creating one: replicas of one installation share it
    /// (the test that created it keeps it alive).
    pub database_url: Option<String>,
    /// `REDIS_URL` of the server, and the prefix of its channels (`GANTRY_REDIS_PREFIX`).
    pub redis_url: Option<String>,
    pub redis_prefix: Option<String>,
}

impl ServerOptions {
    pub fn new(backend: Backend) -> ServerOptions {
        ServerOptions {
            backend,
            workers: 2,
            queues: vec!["default".into()],
            kill_grace_secs: 1,
            extra_env: Vec::new(),
            extra_args: Vec::new(),
            database_url: None,
            redis_url: None,
            redis_prefix: None,
        }
    }
}

/// A running `gantry serve`.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data_dir: tempfile::TempDir,
    pub database_url: Option<String>,
    pub options: ServerOptions,
    _pg: Option<PgDatabase>,
    http: reqwest::Client,
}

impl Server {
    pub async fn start(options: ServerOptions) -> Server {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let pg = match (options.backend, &options.database_url) {
            (Backend::Postgres, None) => Some(PgDatabase::create().await),
            _ => None,
        };
        let database_url = options
            .database_url
            .clone()
            .or_else(|| pg.as_ref().map(|p| p.url.clone()));
        let mut server = Server {
            child: None,
            url: String::new(),
            data_dir,
            database_url,
            options,
            _pg: pg,
            http: reqwest::Client::new(),
        };
        server.spawn(None).await;
        server
    }

    /// Starts (or restarts) the process on the same data.
    pub async fn spawn(&mut self, listen: Option<&str>) {
        let mut cmd = Command::new(gantry_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(listen.unwrap_or("127.0.0.1:0"))
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--workers")
            .arg(self.options.workers.to_string())
            .arg("--queue")
            .arg(self.options.queues.join(","))
            .arg("--kill-grace-secs")
            .arg(self.options.kill_grace_secs.to_string())
            .arg("--web-dir")
            .arg(repo_root().join("web/dist"))
            .env("GANTRY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(url) = &self.database_url {
            cmd.arg("--database-url").arg(url);
        }
        cmd.env_remove("REDIS_URL");
        if let Some(url) = &self.options.redis_url {
            cmd.arg("--redis-url").arg(url);
        }
        if let Some(prefix) = &self.options.redis_prefix {
            cmd.arg("--redis-prefix").arg(prefix);
        }
        for (k, v) in &self.options.extra_env {
            cmd.env(k, v);
        }
        cmd.args(&self.options.extra_args);
        let mut child = cmd.spawn().expect("spawn gantry serve");
        let stdout = child.stdout.take().expect("BUG: stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
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
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.url = url;
        self.child = Some(child);
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The host:port the server listens on.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// SIGKILL: the process dies without any cleanup.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// SIGTERM, then waits for the exit status.
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let pid = c.id()? as i32;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc_kill(pid, 15);
        }
        tokio::time::timeout(Duration::from_secs(60), c.wait())
            .await
            .ok()?
            .ok()
    }

    /// Runs a GraphQL request with `token` and returns the whole response.
    pub async fn gql_as(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut req = self
            .http
            .post(format!("{}/graphql", self.url))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
            .await
            .expect("POST /graphql")
            .json()
            .await
            .expect("JSON response")
    }

    /// Runs a GraphQL request as the admin.
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        self.gql_as(Some(ADMIN_TOKEN), query, variables).await
    }

    /// Runs a GraphQL request as the admin and returns `data`, failing on any error.
    pub async fn data(&self, query: &str, variables: Value) -> Value {
        let res = self.gql(query, variables).await;
        assert!(res.get("errors").is_none(), "GraphQL errors: {res:#}");
        res["data"].clone()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("GET")
    }

    /// Creates a pipeline from YAML and returns its id.
    pub async fn create_pipeline(&self, name: &str, repository: &str, file: &str) -> String {
        let d = self
            .data(
                "mutation($n: String!, $r: String!, $f: String!) { createPipeline(input: {name: $n, provider: GIT, repository: $r, file: $f}) { id } }",
                json!({ "n": name, "r": repository, "f": file }),
            )
            .await;
        d["createPipeline"]["id"]
            .as_str()
            .expect("pipeline id")
            .to_owned()
    }

    /// Registers a worker of `queue` through the API (as the admin) and returns its id.
    pub async fn register_worker(&self, name: &str, queue: &str) -> Value {
        self.data(
            "mutation($n: String!, $q: String!) { registerWorker(input: {name: $n, queues: [$q]}) { id } }",
            json!({ "n": name, "q": queue }),
        )
        .await["registerWorker"]["id"]
            .clone()
    }

    /// Leases one attempt of `queue` for `worker`, waiting up to 5 s for one:
    /// `(attempt id, lease token)`.
    pub async fn lease(&self, worker: &Value, queue: &str) -> (Value, Value) {
        let l = self
            .data(
                "mutation($w: ID!, $q: String!) { leaseAttempt(worker: $w, queue: $q, waitMs: 5000) { leaseToken attempt { id } } }",
                json!({ "w": worker, "q": queue }),
            )
            .await["leaseAttempt"]
            .clone();
        assert!(l.is_object(), "nothing to lease in {queue}");
        (l["attempt"]["id"].clone(), l["leaseToken"].clone())
    }

    /// Triggers a run and returns its id.
    pub async fn trigger(&self, pipeline: &str, sha: &str) -> String {
        let d = self
            .data(
                "mutation($p: ID!, $s: String!) { triggerRun(input: {pipeline: $p, sha: $s, ref: \"refs/heads/main\"}) { id } }",
                json!({ "p": pipeline, "s": sha }),
            )
            .await;
        d["triggerRun"]["id"].as_str().expect("run id").to_owned()
    }

    /// The run with its tasks and attempts.
    pub async fn run(&self, id: &str) -> Value {
        self.data(
            "query($id: ID!) { run(id: $id) { id number state sha ref createdAt startedAt finishedAt
               tasks { id name state queue needs waitingReason cacheKey startedAt finishedAt
                 attempts { id index state errorKind exitCode worker scheduledAt startedAt finishedAt backoffMs log } }
               events(first: 10000) { seq entity entityId task attempt from to reason node details } } }",
            json!({ "id": id }),
        )
        .await["run"]
            .clone()
    }

    /// Waits until the run is in a terminal state, following its event stream (no polling
    /// sleeps): the `runEvents` subscription ends with the run's terminal event.
    pub async fn wait_run(&self, id: &str, within: Duration) -> Value {
        self.wait_run_after(id, None, within).await
    }

    /// Like [`Server::wait_run`], for the next terminal event after `seq` (a run that was
    /// reopened by a manual retry ends again).
    pub async fn wait_run_after(&self, id: &str, after: Option<&str>, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        let events = crate::ws::run_events(self, id, after, within).await;
        let last = events.last().cloned().unwrap_or(Value::Null);
        assert_eq!(
            last["entity"], "RUN",
            "the stream must end with the run's terminal event: {last}"
        );
        assert!(Instant::now() <= deadline + Duration::from_secs(1));
        self.run(id).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub mod s3;
pub mod ws;

/// The Redis server tests use (`TEST_REDIS_URL`, default the local one), when reachable.
/// Absent, the test skips with a printed reason — and fails when `CI` is set.
pub async fn redis_url() -> Option<String> {
    let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let reachable = async {
        let client = redis::Client::open(url.as_str()).ok()?;
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING").query_async::<String>(&mut c).await.ok()
    };
    match tokio::time::timeout(Duration::from_secs(3), reachable).await {
        Ok(Some(_)) => Some(url),
        _ => {
            assert!(!in_ci(), "Redis is required in CI but unreachable at {url}");
            eprintln!("skipping: Redis unreachable at {url}");
            None
        }
    }
}

/// A prefix of Redis channels and keys no other test uses.
pub fn redis_prefix() -> String {
    format!("gantry-test-{:016x}", rand::random::<u64>())
}

/// A local git repository with one commit, for checkout tests.
pub fn git_repo(files: &[(&str, &str)]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir.path())
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(&["init", "-q", "-b", "main"]);
    for (path, content) in files {
        let p = dir.path().join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, content).expect("write file");
    }
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "init"]);
    let sha = git(&["rev-parse", "HEAD"]);
    (dir, sha)
}

/// A `gantry agent` process.
pub struct Agent {
    pub child: Child,
    _workspace: tempfile::TempDir,
}

impl Agent {
    /// Starts an agent serving `queues` of `server` with the admin token.
    pub fn start(server_url: &str, name: &str, queues: &[&str]) -> Agent {
        let workspace = tempfile::tempdir().expect("temp dir");
        let child = Command::new(gantry_bin())
            .args([
                "agent",
                "--server",
                server_url,
                "--token",
                ADMIN_TOKEN,
                "--name",
                name,
            ])
            .arg("--queue")
            .arg(queues.join(","))
            .arg("--workspace")
            .arg(workspace.path())
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("spawn gantry agent");
        Agent {
            child,
            _workspace: workspace,
        }
    }

    /// SIGKILL.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A private PostgreSQL server on a free port, for tests that stop and start the
/// database (never the machine's shared one). Runs as the `postgres` user.
pub struct PrivatePostgres {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

impl PrivatePostgres {
    /// Initialises and starts a cluster; `None` (with the reason printed) when this
    /// machine cannot run one.
    pub fn start() -> Option<PrivatePostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists());
        let Some(bin) = bin else {
            eprintln!("skipping: no PostgreSQL server binaries under /usr/lib/postgresql");
            return None;
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
            l.local_addr().ok()?.port()
        };
        let dir =
            std::env::temp_dir().join(format!("gantry-pg-{port}-{:x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).ok()?;
        let chown = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
        if !chown.is_ok_and(|s| s.success()) {
            eprintln!("skipping: cannot hand a data directory to the postgres user");
            return None;
        }
        let pg = PrivatePostgres { dir, port, bin };
        let data = pg.dir.join("data");
        let init = pg.as_postgres(&format!(
            "{} -D {} -A trust -U postgres >/dev/null",
            pg.bin.join("initdb").display(),
            data.display()
        ));
        if !init {
            eprintln!("skipping: initdb failed");
            return None;
        }
        if !pg.ctl("start") {
            eprintln!("skipping: the private PostgreSQL did not start");
            return None;
        }
        Some(pg)
    }

    fn as_postgres(&self, cmd: &str) -> bool {
        std::process::Command::new("su")
            .args(["postgres", "-s", "/bin/sh", "-c", cmd])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `pg_ctl start|stop`, waiting for it to finish.
    pub fn ctl(&self, action: &str) -> bool {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let mode = if action == "stop" { " -m fast" } else { "" };
        self.as_postgres(&format!(
            "{} -D {} -o '{opts}' -l {}/log -w{mode} {action} >/dev/null",
            self.bin.join("pg_ctl").display(),
            data.display(),
            self.dir.display()
        ))
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.ctl("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Flags for headless Chromium on this kind of machine (as root, closed network): no
/// sandbox, no GPU, and none of the background traffic it would otherwise attempt.
pub const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];
