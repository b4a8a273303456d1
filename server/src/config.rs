//! The configuration of `gantry serve`: one typed struct whose every field can come from
//! a command-line flag, an environment variable or a TOML file (`--config FILE`), in that
//! order of precedence, over a built-in default.
//!
//! Clap reads flags and environment variables and records where each value came from;
//! the file fills in only what neither set. The file's keys are the long flag names
//! without `--` (`workers = 4`, `data-dir = "/var/lib/gantry"`); an unknown key or a
//! value of the wrong kind stops the start with the field named, so a typo never
//! silently falls back to a default. This module must not start anything.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::ArgMatches;
use clap::parser::ValueSource;

use crate::store::Durability;

/// Where the database lives; shared by `serve` and `migrate`.
#[derive(clap::Args, Debug, Clone)]
pub struct DbConfig {
    /// Directory of the embedded SQLite database, workspaces and artifacts.
    #[arg(long, env = "GANTRY_DATA_DIR", default_value = "./gantry-data")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL for scale-out; without it the embedded SQLite database is used.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// SQLite durability: `normal` survives process crashes, `full` power loss too.
    #[arg(long, env = "GANTRY_DURABILITY", value_enum, default_value = "normal")]
    pub durability: Durability,
}

/// The sandbox of in-process workers' steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxKind {
    None,
    Bwrap,
}

/// Every option of `gantry serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeConfig {
    /// TOML file with any of the options below, keyed by their long flag names without
    /// `--` (e.g. `workers = 4`, `queues = ["default", "linux"]`). Flags and environment
    /// variables override it; unknown keys and invalid values stop the start.
    #[arg(long, env = "GANTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "GANTRY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub db: DbConfig,
    /// In-process workers (default: number of cores; 0 for agents only).
    #[arg(long, env = "GANTRY_WORKERS")]
    pub workers: Option<usize>,
    /// Queues the in-process workers serve (file key `queues`: a list of names).
    #[arg(
        long = "queue",
        env = "GANTRY_QUEUES",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub queues: Vec<String>,
    /// Directory of the built dashboard.
    #[arg(long, env = "GANTRY_WEB_DIR", default_value = "web/dist")]
    pub web_dir: PathBuf,
    /// Name of this node in events and worker names (default: host name and pid).
    #[arg(long, env = "GANTRY_NODE")]
    pub node: Option<String>,
    /// Bootstrap admin token; without it one is generated at the first start and printed.
    #[arg(long, env = "GANTRY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Sandbox for steps of in-process workers: `none` or `bwrap`.
    #[arg(long, env = "GANTRY_SANDBOX", value_enum, default_value = "none")]
    pub sandbox: SandboxKind,
    /// Seconds between SIGTERM and SIGKILL when a step is stopped.
    #[arg(long, env = "GANTRY_KILL_GRACE_SECS", default_value_t = 10)]
    pub kill_grace_secs: u64,
    /// On SIGTERM, seconds running attempts may take to finish before they are handed back.
    #[arg(long, env = "GANTRY_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Seconds without a heartbeat after which a worker (and its attempts) is lost.
    #[arg(long, env = "GANTRY_LOST_AFTER_SECS", default_value_t = 10)]
    pub lost_after_secs: u64,
    /// Key that encrypts secrets at rest: base64 of 32 random bytes
    /// (`head -c32 /dev/urandom | base64`). Without a key, secrets cannot be set.
    #[arg(long, env = "GANTRY_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// File holding the secret key (base64), instead of `--secret-key`.
    #[arg(long, env = "GANTRY_SECRET_KEY_FILE", conflicts_with = "secret_key")]
    pub secret_key_file: Option<PathBuf>,
    /// Artifact store: `s3://bucket[/prefix]` (endpoint and credentials from the `AWS_*`
    /// environment variables); without it, `<data-dir>/artifacts` on the filesystem.
    #[arg(long, env = "GANTRY_ARTIFACT_STORE")]
    pub artifact_store: Option<String>,
    /// Redis URL: carries events, log output, cancel signals and queue wake-ups between
    /// the server replicas that share one PostgreSQL database.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of this installation's Redis channels and keys.
    #[arg(long, env = "GANTRY_REDIS_PREFIX", default_value = "gantry")]
    pub redis_prefix: String,
    /// Most attempts waiting for a worker (queued or scheduled) before new triggers are
    /// refused with OVERLOADED; 0 for no bound.
    #[arg(long, env = "GANTRY_MAX_PENDING_ATTEMPTS", default_value_t = crate::service::DEFAULT_MAX_PENDING_ATTEMPTS)]
    pub max_pending_attempts: u64,
}

/// A configuration that cannot be used; the message names the file and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: {0}")]
pub struct ConfigError(pub String);

/// The keys a configuration file may hold, in `--help` order.
pub const FILE_KEYS: &[&str] = &[
    "listen",
    "data-dir",
    "database-url",
    "durability",
    "workers",
    "queues",
    "web-dir",
    "node",
    "admin-token",
    "sandbox",
    "kill-grace-secs",
    "shutdown-grace-secs",
    "lost-after-secs",
    "secret-key",
    "secret-key-file",
    "artifact-store",
    "redis-url",
    "redis-prefix",
    "max-pending-attempts",
];

impl ServeConfig {
    /// Fills in, from the file named by `config` (if any), every option that neither a
    /// flag nor an environment variable set. `matches` are those `self` was parsed from.
    pub fn with_file(self, matches: &ArgMatches) -> Result<ServeConfig, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        self.with_toml(&text, &path, |id| {
            matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
    }

    /// Applies the TOML `text` to every field whose clap id `explicit` does not claim.
    /// Every key is checked, even those a flag overrides: a bad file fails either way.
    fn with_toml(
        mut self,
        text: &str,
        path: &Path,
        explicit: impl Fn(&str) -> bool,
    ) -> Result<ServeConfig, ConfigError> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.message())))?;
        if table.contains_key("secret-key") && table.contains_key("secret-key-file") {
            return Err(ConfigError(
                "fields \"secret-key\" and \"secret-key-file\" exclude each other".into(),
            ));
        }
        // A key given by flag or environment in one form wins over the file's other form.
        let secret_explicit = explicit("secret_key") || explicit("secret_key_file");
        for (key, value) in &table {
            let v = Field { key, value };
            match key.as_str() {
                "listen" => {
                    let addr =
                        v.parse::<SocketAddr>("a socket address such as \"0.0.0.0:8080\"")?;
                    if !explicit("listen") {
                        self.listen = addr;
                    }
                }
                "data-dir" => {
                    let dir = v.string()?;
                    if !explicit("data_dir") {
                        self.db.data_dir = dir.into();
                    }
                }
                "database-url" => {
                    let url = v.string()?;
                    if !explicit("database_url") {
                        self.db.database_url = Some(url);
                    }
                }
                "durability" => {
                    let d = v.choice::<Durability>()?;
                    if !explicit("durability") {
                        self.db.durability = d;
                    }
                }
                "workers" => {
                    let n = v.count()?;
                    if !explicit("workers") {
                        self.workers = Some(n as usize);
                    }
                }
                "queues" => {
                    let queues = v.names()?;
                    if !explicit("queues") {
                        self.queues = queues;
                    }
                }
                "web-dir" => {
                    let dir = v.string()?;
                    if !explicit("web_dir") {
                        self.web_dir = dir.into();
                    }
                }
                "node" => {
                    let node = v.non_empty()?;
                    if !explicit("node") {
                        self.node = Some(node);
                    }
                }
                "admin-token" => {
                    let token = v.non_empty()?;
                    if !explicit("admin_token") {
                        self.admin_token = Some(token);
                    }
                }
                "sandbox" => {
                    let s = v.choice::<SandboxKind>()?;
                    if !explicit("sandbox") {
                        self.sandbox = s;
                    }
                }
                "kill-grace-secs" => {
                    let n = v.count()?;
                    if !explicit("kill_grace_secs") {
                        self.kill_grace_secs = n;
                    }
                }
                "shutdown-grace-secs" => {
                    let n = v.count()?;
                    if !explicit("shutdown_grace_secs") {
                        self.shutdown_grace_secs = n;
                    }
                }
                "lost-after-secs" => {
                    let n = v.count()?;
                    if !explicit("lost_after_secs") {
                        self.lost_after_secs = n;
                    }
                }
                "secret-key" => {
                    let key = v.non_empty()?;
                    if !secret_explicit {
                        self.secret_key = Some(key);
                    }
                }
                "secret-key-file" => {
                    let file = v.non_empty()?;
                    if !secret_explicit {
                        self.secret_key_file = Some(file.into());
                    }
                }
                "artifact-store" => {
                    let url = v.non_empty()?;
                    if !explicit("artifact_store") {
                        self.artifact_store = Some(url);
                    }
                }
                "redis-url" => {
                    let url = v.non_empty()?;
                    if !explicit("redis_url") {
                        self.redis_url = Some(url);
                    }
                }
                "redis-prefix" => {
                    let prefix = v.non_empty()?;
                    if !explicit("redis_prefix") {
                        self.redis_prefix = prefix;
                    }
                }
                "max-pending-attempts" => {
                    let n = v.count()?;
                    if !explicit("max_pending_attempts") {
                        self.max_pending_attempts = n;
                    }
                }
                unknown => {
                    let hint = FILE_KEYS
                        .iter()
                        .find(|k| close(k, unknown))
                        .map(|k| format!(" (did you mean \"{k}\"?)"))
                        .unwrap_or_default();
                    return Err(ConfigError(format!(
                        "unknown field \"{unknown}\"{hint}; known fields: {}",
                        FILE_KEYS.join(", ")
                    )));
                }
            }
        }
        Ok(self)
    }
}

/// Whether two keys differ by a typo: one edit, or a swap of neighbours.
fn close(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len() == b.len() {
        let diff: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
        return diff.len() == 1
            || (diff.len() == 2
                && diff[1] == diff[0] + 1
                && a[diff[0]] == b[diff[1]]
                && a[diff[1]] == b[diff[0]]);
    }
    let (short, long) = if a.len() < b.len() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    if long.len() != short.len() + 1 {
        return false;
    }
    (0..long.len()).any(|skip| {
        long.iter()
            .enumerate()
            .filter(|&(i, _)| i != skip)
            .map(|(_, c)| c)
            .eq(short.iter())
    })
}

/// One `key = value` of the file, with the conversions its fields need.
struct Field<'a> {
    key: &'a str,
    value: &'a toml::Value,
}

impl Field<'_> {
    fn wrong(&self, expected: &str) -> ConfigError {
        ConfigError(format!(
            "field \"{}\": expected {expected}, found {}",
            self.key, self.value
        ))
    }

    fn string(&self) -> Result<String, ConfigError> {
        self.value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.wrong("a string"))
    }

    fn non_empty(&self) -> Result<String, ConfigError> {
        self.value
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| self.wrong("a non-empty string"))
    }

    fn count(&self) -> Result<u64, ConfigError> {
        self.value
            .as_integer()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| self.wrong("a non-negative integer"))
    }

    fn parse<T: std::str::FromStr>(&self, expected: &str) -> Result<T, ConfigError> {
        self.value
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.wrong(expected))
    }

    fn choice<T: clap::ValueEnum>(&self) -> Result<T, ConfigError> {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| {
                v.to_possible_value()
                    .map(|p| format!("\"{}\"", p.get_name()))
            })
            .collect();
        self.value
            .as_str()
            .and_then(|s| T::from_str(s, true).ok())
            .ok_or_else(|| self.wrong(&format!("one of {}", names.join(", "))))
    }

    /// A list of non-empty names, or one comma-separated string (as in the environment).
    fn names(&self) -> Result<Vec<String>, ConfigError> {
        let expected = "a list of non-empty names";
        let names: Vec<String> = match self.value {
            toml::Value::Array(items) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| self.wrong(expected))
                })
                .collect::<Result<_, _>>()?,
            toml::Value::String(s) => s.split(',').map(|q| q.trim().to_owned()).collect(),
            _ => return Err(self.wrong(expected)),
        };
        if names.is_empty() || names.iter().any(String::is_empty) {
            return Err(self.wrong(expected));
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeConfig,
    }

    fn base() -> ServeConfig {
        Cli::parse_from(["gantry"]).serve
    }

    fn apply(text: &str, explicit: &[&str]) -> Result<ServeConfig, ConfigError> {
        base().with_toml(text, Path::new("gantry.toml"), |id| explicit.contains(&id))
    }

    #[test]
    fn file_values_fill_what_flags_and_env_left_open() {
        let text = r#"
listen = "0.0.0.0:9000"
data-dir = "/var/lib/gantry"
workers = 3
queues = ["default", "linux"]
durability = "full"
sandbox = "bwrap"
node = "a"
max-pending-attempts = 0
"#;
        let c = apply(text, &[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.db.data_dir, PathBuf::from("/var/lib/gantry"));
        assert_eq!(c.workers, Some(3));
        assert_eq!(c.queues, ["default", "linux"]);
        assert_eq!(c.db.durability, Durability::Full);
        assert_eq!(c.sandbox, SandboxKind::Bwrap);
        assert_eq!(c.node.as_deref(), Some("a"));
        assert_eq!(c.max_pending_attempts, 0);
        assert_eq!(c.kill_grace_secs, 10, "absent keys keep their default");

        let c = apply(text, &["workers", "listen"]).unwrap();
        assert_eq!(c.workers, None, "a flag or env value wins over the file");
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.queues, ["default", "linux"]);
        assert_eq!(
            apply("queues = \"a, b\"", &[]).unwrap().queues,
            ["a", "b"],
            "a comma-separated string, as in GANTRY_QUEUES"
        );
    }

    #[test]
    fn bad_files_name_the_field() {
        let err = |text: &str| apply(text, &[]).unwrap_err().to_string();
        assert_eq!(
            err("workers = \"many\""),
            "invalid config: field \"workers\": expected a non-negative integer, found \"many\""
        );
        assert_eq!(
            err("workers = -1"),
            "invalid config: field \"workers\": expected a non-negative integer, found -1"
        );
        assert!(err("wokers = 2").starts_with(
            "invalid config: unknown field \"wokers\" (did you mean \"workers\"?); known fields: listen,"
        ));
        assert!(err("listen = \"here\"").contains("field \"listen\": expected a socket address"));
        assert!(err("durability = \"maybe\"").contains("one of \"normal\", \"full\""));
        assert!(err("queues = []").contains("field \"queues\""));
        assert!(err("queues = [1]").contains("field \"queues\""));
        assert!(err("secret-key = \"a\"\nsecret-key-file = \"b\"").contains("exclude each other"));
        let syntax = err("workers = ");
        assert!(
            syntax.starts_with("invalid config: gantry.toml: "),
            "{syntax}"
        );
        // Checked even when a flag overrides it.
        assert!(apply("workers = \"many\"", &["workers"]).is_err());
    }

    #[test]
    fn typos_are_close() {
        assert!(close("workers", "wokers"));
        assert!(close("workers", "worker"));
        assert!(close("listen", "lisetn"));
        assert!(!close("listen", "node"));
    }
}
