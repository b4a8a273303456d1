//! Interprets the YAML tree as a pipeline file and validates it.
//!
//! This module owns the file's vocabulary: which keys exist where, their
//! types and defaults, how actions map to native steps, which variables each
//! string may reference, and turning graph and matrix problems into
//! positioned errors. It must not evaluate expressions for a concrete run
//! (that is planning) and must not stop at the first error: users fix files
//! faster when they see every problem at once.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::domain::dag::{self, DagError};
use crate::pipeline::expr::{self, Condition};
use crate::pipeline::model::{
    BackoffSpec, BranchFilter, CacheSpec, ConcurrencySpec, DEFAULT_QUEUE, DEFAULT_TIMEOUT_MS,
    Jitter, JobSpec, MatrixAxis, MatrixSpec, NotifyFormat, NotifySpec, PipelineFile, RetryOn,
    RetrySpec, StepKind, StepSpec, TRIGGER_QUEUE, TriggerSpec, Triggers,
};
use crate::pipeline::yaml::{self, Entry, Node, NodeKind};
use crate::pipeline::{MAX_FILE_BYTES, MAX_TOTAL_TASKS, PipelineError, duration, matrix};

const TOP_KEYS: &[&str] = &[
    "name",
    "on",
    "concurrency",
    "env",
    "cache",
    "notify",
    "jobs",
];
const NOTIFY_KEYS: &[&str] = &["webhook", "format", "context"];
const JOB_KEYS: &[&str] = &[
    "name",
    "runs-on",
    "needs",
    "if",
    "strategy",
    "env",
    "timeout-minutes",
    "retry",
    "cache",
    "continue-on-error",
    "steps",
    "artifacts",
    "trigger",
];
/// Keys of a `trigger:` block.
const TRIGGER_JOB_KEYS: &[&str] = &["pipeline", "ref", "wait"];
/// Job keys that describe work on a worker, which a trigger job does not do.
const WORKER_ONLY_KEYS: &[&str] = &[
    "steps",
    "runs-on",
    "strategy",
    "timeout-minutes",
    "retry",
    "cache",
    "artifacts",
];
const STEP_KEYS: &[&str] = &[
    "name",
    "run",
    "uses",
    "with",
    "env",
    "working-directory",
    "shell",
];
const RETRY_KEYS: &[&str] = &["max-attempts", "on", "exit-codes", "backoff"];
const BACKOFF_KEYS: &[&str] = &["initial", "factor", "max", "jitter"];
const CACHE_KEYS: &[&str] = &["enabled", "ttl"];
const CONCURRENCY_KEYS: &[&str] = &["group", "cancel-in-progress"];
const TRIGGER_KEYS: &[&str] = &["push", "pull_request", "schedule"];
const FILTER_KEYS: &[&str] = &["branches", "branches-ignore"];
const SCHEDULE_KEYS: &[&str] = &["cron"];
const STRATEGY_KEYS: &[&str] = &["matrix", "fail-fast", "max-parallel"];
const RETRY_KINDS: &[&str] = &["exit", "timeout", "lost", "infra"];
const JITTER_KINDS: &[&str] = &["full", "equal", "none"];
const KNOWN_ACTIONS: &str =
    "actions/checkout, actions/upload-artifact, actions/download-artifact, actions/cache";

const MAX_ID_LEN: usize = 100;
const MAX_ATTEMPTS: i64 = 100;
/// Thirty days; longer timeouts are almost certainly unit mistakes.
const MAX_TIMEOUT_MINUTES: f64 = 43_200.0;

/// Which variables a templated string may reference. `None` means the
/// namespace is not available there at all.
#[derive(Clone, Copy)]
struct Scope<'a> {
    matrix: Option<&'a BTreeSet<String>>,
    /// Layers (top, job, step) are kept apart rather than merged so wide
    /// env maps are not copied once per job and step.
    env: Option<&'a [&'a BTreeSet<String>]>,
}

/// A `needs` entry with its position, kept until the graph is checked.
struct NeedRef {
    name: String,
    line: u32,
    column: u32,
}

/// A job plus what graph and size checks need after all jobs are read.
struct ParsedJob {
    spec: JobSpec,
    needs: Vec<NeedRef>,
    key_column: u32,
    tasks: usize,
}

struct Checker {
    errors: Vec<PipelineError>,
    /// Set while an env value is checked: the one place `secrets.*` may appear.
    in_env_value: bool,
}

fn get<'a>(entries: &'a [Entry], key: &str) -> Option<&'a Node> {
    entries.iter().find(|e| e.key == key).map(|e| &e.value)
}

fn get_entry<'a>(entries: &'a [Entry], key: &str) -> Option<&'a Entry> {
    entries.iter().find(|e| e.key == key)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Nearest candidate within edit distance 2, for "did you mean" hints.
fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn is_identifier(s: &str, allow_dash: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (allow_dash && c == '-'))
}

fn scalar_json(node: &Node) -> Option<Value> {
    match &node.kind {
        NodeKind::Scalar { value, plain } if !node.is_null() => {
            if *plain {
                if let Some(b) = node.as_bool() {
                    return Some(Value::Bool(b));
                }
                if let Some(i) = node.as_i64() {
                    return Some(Value::from(i));
                }
                if let Some(f) = node.as_f64().and_then(serde_json::Number::from_f64) {
                    return Some(Value::Number(f));
                }
            }
            Some(Value::String(value.clone()))
        }
        _ => None,
    }
}

impl Checker {
    fn push(
        &mut self,
        line: u32,
        column: u32,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.errors
            .push(PipelineError::new(line, column, message, hint));
    }

    fn at(&mut self, node: &Node, message: impl Into<String>, hint: impl Into<String>) {
        self.push(node.line, node.column, message, hint);
    }

    fn at_key(&mut self, entry: &Entry, message: impl Into<String>, hint: impl Into<String>) {
        self.push(entry.key_line, entry.key_column, message, hint);
    }

    fn wrong_type(&mut self, node: &Node, what: &str, expected: &str) {
        self.at(
            node,
            format!("{what} must be {expected}, found {}", node.type_name()),
            "",
        );
    }

    /// A mapping whose keys are all in `allowed`; unknown keys are reported
    /// but do not prevent reading the known ones.
    fn mapping<'a>(&mut self, node: &'a Node, what: &str, allowed: &[&str]) -> Option<&'a [Entry]> {
        let NodeKind::Map(entries) = &node.kind else {
            self.wrong_type(node, what, "a mapping");
            return None;
        };
        for e in entries {
            if !allowed.contains(&e.key.as_str()) {
                let hint = match nearest(&e.key, allowed.iter().copied()) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => "remove it or fix its spelling".to_string(),
                };
                self.at_key(
                    e,
                    format!(
                        "unknown key `{}` in {what}; allowed keys: {}",
                        e.key,
                        allowed.join(", ")
                    ),
                    hint,
                );
            }
        }
        Some(entries)
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.wrong_type(node, what, "a string");
                None
            }
        }
    }

    /// `notify:` — a list of `{webhook: URL, format: gantry | github-status, context}`.
    fn notify(&mut self, node: &Node) -> Vec<NotifySpec> {
        let NodeKind::Seq(items) = &node.kind else {
            self.wrong_type(node, "`notify`", "a list of `- webhook: URL` entries");
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            let Some(entries) = self.mapping(item, "a `notify` entry", NOTIFY_KEYS) else {
                continue;
            };
            let Some(url_node) = get(entries, "webhook") else {
                self.at(
                    item,
                    "a `notify` entry needs a `webhook` URL",
                    "write `- webhook: https://…`",
                );
                continue;
            };
            let Some(url) = self.string(url_node, "`webhook`") else {
                continue;
            };
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                self.at(
                    url_node,
                    format!("`webhook` must be an http(s) URL, found `{url}`"),
                    "write the full URL, e.g. `https://ci.example.com/hook`",
                );
                continue;
            }
            let format = match get(entries, "format") {
                None => NotifyFormat::Gantry,
                Some(f) => {
                    match self.string(f, "`format`").as_deref() {
                        Some("gantry") => NotifyFormat::Gantry,
                        Some("github-status") => NotifyFormat::GithubStatus,
                        Some(other) => {
                            self.at(f, format!("unknown notify format `{other}`; allowed: gantry, github-status"), "");
                            continue;
                        }
                        None => continue,
                    }
                }
            };
            let context = get(entries, "context").and_then(|n| self.string(n, "`context`"));
            out.push(NotifySpec {
                webhook: url,
                format,
                context,
            });
        }
        out
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        let b = node.as_bool();
        if b.is_none() {
            self.wrong_type(node, what, "true or false");
        }
        b
    }

    /// A single string or a list of strings, each with its node.
    fn strings<'a>(&mut self, node: &'a Node, what: &str) -> Option<Vec<(String, &'a Node)>> {
        match &node.kind {
            NodeKind::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    if let Some(s) = self.string(item, &format!("each entry of {what}")) {
                        out.push((s, item));
                    }
                }
                Some(out)
            }
            NodeKind::Scalar { .. } if !node.is_null() => {
                node.as_str().map(|s| vec![(s.to_string(), node)])
            }
            _ => {
                self.wrong_type(node, what, "a string or a list of strings");
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<u64> {
        let text = self.string(node, what)?;
        match duration::parse_duration_ms(&text) {
            Ok(ms) => Some(ms),
            Err(msg) => {
                self.at(
                    node,
                    format!("{what}: {msg}"),
                    "use e.g. `500ms`, `30s`, `1m30s`, `2h` or `7d`",
                );
                None
            }
        }
    }

    /// Where an offset inside a scalar's text lands in the file. Only plain
    /// single-line scalars map exactly; otherwise the scalar's start is the
    /// best honest answer.
    fn position_in(node: &Node, text: &str, offset: usize) -> (u32, u32) {
        let exact =
            matches!(&node.kind, NodeKind::Scalar { plain: true, .. }) && !text.contains('\n');
        if exact {
            let chars = text.get(..offset).map_or(0, |s| s.chars().count());
            (
                node.line,
                node.column
                    .saturating_add(u32::try_from(chars).unwrap_or(0)),
            )
        } else {
            (node.line, node.column)
        }
    }

    fn check_variables(
        &mut self,
        node: &Node,
        text: &str,
        vars: Vec<(String, usize)>,
        scope: Scope<'_>,
    ) {
        for (name, offset) in vars {
            let (line, column) = Self::position_in(node, text, offset);
            let problem = if let Some(key) = name.strip_prefix("matrix.") {
                match scope.matrix {
                    None => Some(("this job has no matrix".to_string(), None)),
                    Some(keys) if !keys.contains(key) => Some((
                        format!(
                            "the matrix defines: {}",
                            keys.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                        nearest(key, keys.iter().map(String::as_str)).map(str::to_string),
                    )),
                    Some(_) => None,
                }
            } else if let Some(key) = name.strip_prefix("env.") {
                match scope.env {
                    None => Some((
                        "env values cannot refer to env at this level".to_string(),
                        None,
                    )),
                    Some(layers) if !layers.iter().any(|k| k.contains(key)) => {
                        let keys: BTreeSet<&str> = layers
                            .iter()
                            .flat_map(|k| k.iter().map(String::as_str))
                            .collect();
                        Some((
                            if keys.is_empty() {
                                "no env variables are defined here".to_string()
                            } else {
                                format!(
                                    "defined env variables: {}",
                                    keys.iter().copied().collect::<Vec<_>>().join(", ")
                                )
                            },
                            nearest(key, keys.iter().copied()).map(str::to_string),
                        ))
                    }
                    Some(_) => None,
                }
            } else if name.starts_with("secrets.") && !self.in_env_value {
                Some((
                    "secrets can only be used in env values; read them as `$NAME` in scripts"
                        .to_string(),
                    None,
                ))
            } else {
                None
            };
            if let Some((context, near)) = problem {
                let hint = match near {
                    Some(n) => format!("did you mean `{n}`? {context}"),
                    None => context,
                };
                self.push(line, column, format!("unknown variable `{name}`"), hint);
            }
        }
    }

    fn template(&mut self, node: &Node, text: &str, scope: Scope<'_>) {
        match expr::template_variables(text) {
            Ok(vars) => self.check_variables(node, text, vars, scope),
            Err(e) => {
                let (line, column) = Self::position_in(node, text, e.offset);
                self.push(
                    line,
                    column,
                    format!("invalid expression: {}", e.message),
                    "expressions look like `${{ matrix.key }}`",
                );
            }
        }
    }

    fn templated_string(&mut self, node: &Node, what: &str, scope: Scope<'_>) -> Option<String> {
        let s = self.string(node, what)?;
        self.template(node, &s, scope);
        Some(s)
    }

    fn env(&mut self, node: &Node, what: &str, scope: Scope<'_>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let NodeKind::Map(entries) = &node.kind else {
            if !node.is_null() {
                self.wrong_type(node, what, "a mapping of names to values");
            }
            return out;
        };
        for e in entries {
            if !is_identifier(&e.key, false) {
                self.at_key(
                    e,
                    format!("invalid env variable name `{}`", e.key),
                    "use letters, digits and `_`, not starting with a digit",
                );
            }
            let value = if e.value.is_null() {
                // An empty value is a common way to write an empty string.
                String::new()
            } else {
                self.in_env_value = true;
                let value =
                    self.templated_string(&e.value, &format!("env value `{}`", e.key), scope);
                self.in_env_value = false;
                match value {
                    Some(v) => v,
                    None => continue,
                }
            };
            out.insert(e.key.clone(), value);
        }
        out
    }

    fn cache(&mut self, node: &Node, inherited: CacheSpec) -> Option<CacheSpec> {
        if let Some(b) = node.as_bool() {
            return Some(CacheSpec {
                enabled: b,
                ttl_ms: inherited.ttl_ms,
            });
        }
        if !matches!(node.kind, NodeKind::Map(_)) {
            self.wrong_type(node, "`cache`", "true, false or a mapping");
            return None;
        }
        let entries = self.mapping(node, "`cache`", CACHE_KEYS)?;
        let mut spec = CacheSpec {
            enabled: true,
            ttl_ms: inherited.ttl_ms,
        };
        if let Some(n) = get(entries, "enabled") {
            spec.enabled = self.boolean(n, "`cache.enabled`").unwrap_or(true);
        }
        if let Some(n) = get(entries, "ttl")
            && let Some(ms) = self.duration(n, "`cache.ttl`")
        {
            if ms == 0 {
                self.at(
                    n,
                    "`cache.ttl` must be greater than zero",
                    "use `cache: false` to disable caching",
                );
            } else {
                spec.ttl_ms = ms;
            }
        }
        Some(spec)
    }

    fn branch_filter(&mut self, node: &Node, event: &str) -> BranchFilter {
        let mut filter = BranchFilter::default();
        if node.is_null() {
            return filter;
        }
        let Some(entries) = self.mapping(node, &format!("`on.{event}`"), FILTER_KEYS) else {
            return filter;
        };
        let list = |c: &mut Checker, key: &str| -> Vec<String> {
            get(entries, key)
                .and_then(|n| c.strings(n, &format!("`on.{event}.{key}`")))
                .map(|v| v.into_iter().map(|(s, _)| s).collect())
                .unwrap_or_default()
        };
        filter.branches = list(self, "branches");
        filter.branches_ignore = list(self, "branches-ignore");
        if let (Some(_), Some(e)) = (
            get(entries, "branches"),
            get_entry(entries, "branches-ignore"),
        ) {
            self.at_key(
                e,
                format!("`on.{event}` cannot have both `branches` and `branches-ignore`"),
                "use `!pattern` entries in `branches` instead",
            );
        }
        filter
    }

    fn triggers(&mut self, node: &Node) -> Triggers {
        let mut t = Triggers::default();
        let mut event = |c: &mut Checker, name: &str, at: &Node, value: Option<&Node>| match name {
            "push" => {
                t.push = Some(
                    value
                        .map(|v| c.branch_filter(v, "push"))
                        .unwrap_or_default(),
                )
            }
            "pull_request" => {
                t.pull_request = Some(
                    value
                        .map(|v| c.branch_filter(v, "pull_request"))
                        .unwrap_or_default(),
                )
            }
            "schedule" => match value {
                None => c.at(
                    at,
                    "`schedule` needs a list of `cron` entries",
                    "e.g. `schedule: [{cron: \"0 * * * *\"}]`",
                ),
                Some(v) => match &v.kind {
                    NodeKind::Seq(items) => {
                        for item in items {
                            let Some(entries) = c.mapping(item, "a schedule entry", SCHEDULE_KEYS)
                            else {
                                continue;
                            };
                            match get(entries, "cron") {
                                None => c.at(item, "schedule entry needs `cron`", ""),
                                Some(cron) => {
                                    if let Some(s) = c.string(cron, "`cron`") {
                                        match super::cron::Cron::parse(&s) {
                                            Ok(_) => t.schedule.push(s),
                                            Err(e) => c.at(
                                                cron,
                                                e,
                                                "minute hour day-of-month month day-of-week, in UTC",
                                            ),
                                        }
                                    }
                                }
                            }
                        }
                    }
                    _ => c.wrong_type(v, "`on.schedule`", "a list"),
                },
            },
            other => {
                let hint = nearest(other, TRIGGER_KEYS.iter().copied())
                    .map(|n| format!("did you mean `{n}`?"))
                    .unwrap_or_default();
                c.at(
                    at,
                    format!(
                        "unknown event `{other}`; allowed events: {}",
                        TRIGGER_KEYS.join(", ")
                    ),
                    hint,
                );
            }
        };
        match &node.kind {
            NodeKind::Map(entries) => {
                for e in entries {
                    let key_node = Node {
                        kind: NodeKind::Scalar {
                            value: e.key.clone(),
                            plain: true,
                        },
                        line: e.key_line,
                        column: e.key_column,
                    };
                    event(self, &e.key, &key_node, Some(&e.value));
                }
            }
            _ => {
                if let Some(names) = self.strings(node, "`on`") {
                    for (name, n) in names {
                        event(self, &name, n, None);
                    }
                }
            }
        }
        t
    }

    fn concurrency(&mut self, node: &Node, top_env: &BTreeSet<String>) -> Option<ConcurrencySpec> {
        let layers = [top_env];
        let scope = Scope {
            matrix: None,
            env: Some(&layers),
        };
        if let NodeKind::Map(_) = node.kind {
            let entries = self.mapping(node, "`concurrency`", CONCURRENCY_KEYS)?;
            let Some(group) = get(entries, "group") else {
                self.at(node, "`concurrency` needs a `group`", "");
                return None;
            };
            let group = self.templated_string(group, "`concurrency.group`", scope)?;
            let cancel = get(entries, "cancel-in-progress")
                .and_then(|n| self.boolean(n, "`cancel-in-progress`"))
                .unwrap_or(false);
            Some(ConcurrencySpec {
                group,
                cancel_in_progress: cancel,
            })
        } else {
            let group = self.templated_string(node, "`concurrency`", scope)?;
            Some(ConcurrencySpec {
                group,
                cancel_in_progress: false,
            })
        }
    }

    fn retry(&mut self, node: &Node) -> RetrySpec {
        let mut spec = RetrySpec::default();
        if let Some(n) = node.as_i64() {
            if let Some(n) = self.max_attempts(node, n) {
                spec.max_attempts = n;
            }
            return spec;
        }
        let Some(entries) = self.mapping(node, "`retry`", RETRY_KEYS) else {
            return spec;
        };
        if let Some(n) = get(entries, "max-attempts") {
            match n.as_i64() {
                Some(v) => {
                    if let Some(v) = self.max_attempts(n, v) {
                        spec.max_attempts = v;
                    }
                }
                None => self.wrong_type(n, "`max-attempts`", "an integer"),
            }
        }
        if let Some(n) = get(entries, "on")
            && let Some(kinds) = self.strings(n, "`retry.on`")
        {
            spec.on.clear();
            for (kind, at) in kinds {
                let parsed = match kind.as_str() {
                    "exit" => RetryOn::Exit,
                    "timeout" => RetryOn::Timeout,
                    "lost" => RetryOn::Lost,
                    "infra" => RetryOn::Infra,
                    "cancelled" => {
                        self.at(
                            at,
                            "`cancelled` cannot be retried",
                            "cancellation is final; remove it",
                        );
                        continue;
                    }
                    other => {
                        let hint = nearest(other, RETRY_KINDS.iter().copied())
                            .map(|n| format!("did you mean `{n}`?"))
                            .unwrap_or_default();
                        self.at(
                            at,
                            format!(
                                "unknown retry kind `{other}`; allowed: {}",
                                RETRY_KINDS.join(", ")
                            ),
                            hint,
                        );
                        continue;
                    }
                };
                if !spec.on.contains(&parsed) {
                    spec.on.push(parsed);
                }
            }
        }
        if let Some(n) = get(entries, "exit-codes") {
            let items: Vec<&Node> = match &n.kind {
                NodeKind::Seq(items) => items.iter().collect(),
                _ => vec![n],
            };
            for item in items {
                match item.as_i64().and_then(|v| i32::try_from(v).ok()) {
                    Some(code) if !spec.exit_codes.contains(&code) => spec.exit_codes.push(code),
                    Some(_) => {}
                    None => self.wrong_type(item, "each exit code", "an integer"),
                }
            }
        }
        if let Some(n) = get(entries, "backoff") {
            spec.backoff = self.backoff(n);
        }
        spec
    }

    fn max_attempts(&mut self, node: &Node, v: i64) -> Option<u32> {
        if (1..=MAX_ATTEMPTS).contains(&v) {
            u32::try_from(v).ok()
        } else {
            self.at(
                node,
                format!("`max-attempts` must be between 1 and {MAX_ATTEMPTS}, got {v}"),
                "1 means no retries",
            );
            None
        }
    }

    fn backoff(&mut self, node: &Node) -> BackoffSpec {
        let mut b = BackoffSpec::default();
        let Some(entries) = self.mapping(node, "`backoff`", BACKOFF_KEYS) else {
            return b;
        };
        if let Some(ms) =
            get(entries, "initial").and_then(|n| self.duration(n, "`backoff.initial`"))
        {
            b.initial_ms = ms;
        }
        if let Some(ms) = get(entries, "max").and_then(|n| self.duration(n, "`backoff.max`")) {
            b.max_ms = ms;
        }
        if let Some(n) = get(entries, "factor") {
            match n.as_f64() {
                Some(f) if (1.0..=100.0).contains(&f) => b.factor = f,
                Some(f) => self.at(
                    n,
                    format!("`backoff.factor` must be between 1 and 100, got {f}"),
                    "",
                ),
                None => self.wrong_type(n, "`backoff.factor`", "a number"),
            }
        }
        if let Some(n) = get(entries, "jitter")
            && let Some(s) = self.string(n, "`backoff.jitter`")
        {
            b.jitter = match s.as_str() {
                "full" => Jitter::Full,
                "equal" => Jitter::Equal,
                "none" => Jitter::None,
                other => {
                    self.at(
                        n,
                        format!(
                            "unknown jitter `{other}`; allowed: {}",
                            JITTER_KINDS.join(", ")
                        ),
                        "",
                    );
                    Jitter::Full
                }
            };
        }
        if b.initial_ms > b.max_ms {
            self.at(
                node,
                "`backoff.initial` is larger than `backoff.max`",
                "raise `max` or lower `initial`",
            );
        }
        b
    }

    fn matrix_map(&mut self, node: &Node, what: &str) -> Option<BTreeMap<String, Value>> {
        let NodeKind::Map(entries) = &node.kind else {
            self.wrong_type(node, what, "a mapping");
            return None;
        };
        let mut out = BTreeMap::new();
        for e in entries {
            match scalar_json(&e.value) {
                Some(v) => {
                    out.insert(e.key.clone(), v);
                }
                None => self.wrong_type(
                    &e.value,
                    &format!("matrix value `{}`", e.key),
                    "a string, number or boolean",
                ),
            }
        }
        Some(out)
    }

    fn matrix_entries(&mut self, node: &Node, what: &str) -> Vec<BTreeMap<String, Value>> {
        let NodeKind::Seq(items) = &node.kind else {
            self.wrong_type(node, what, "a list of mappings");
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|i| self.matrix_map(i, &format!("each entry of {what}")))
            .collect()
    }

    fn strategy(&mut self, node: &Node) -> Option<MatrixSpec> {
        let entries = self.mapping(node, "`strategy`", STRATEGY_KEYS)?;
        let Some(matrix_node) = get(entries, "matrix") else {
            self.at(node, "`strategy` needs a `matrix`", "");
            return None;
        };
        let fail_fast = get(entries, "fail-fast")
            .and_then(|n| self.boolean(n, "`fail-fast`"))
            .unwrap_or(true);
        let max_parallel = get(entries, "max-parallel").and_then(|n| {
            match n.as_i64().and_then(|v| u32::try_from(v).ok()) {
                Some(v) if v > 0 => Some(v),
                _ => {
                    self.wrong_type(n, "`max-parallel`", "a positive integer");
                    None
                }
            }
        });
        let NodeKind::Map(matrix_entries) = &matrix_node.kind else {
            self.wrong_type(
                matrix_node,
                "`matrix`",
                "a mapping of axes to lists of values",
            );
            return None;
        };
        let mut spec = MatrixSpec {
            axes: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            fail_fast,
            max_parallel,
        };
        let mut exclude_node = None;
        for e in matrix_entries {
            match e.key.as_str() {
                "include" => spec.include = self.matrix_entries(&e.value, "`matrix.include`"),
                "exclude" => {
                    spec.exclude = self.matrix_entries(&e.value, "`matrix.exclude`");
                    exclude_node = Some(&e.value);
                }
                axis => {
                    if !is_identifier(axis, true) {
                        self.at_key(
                            e,
                            format!("invalid matrix key `{axis}`"),
                            "use letters, digits, `_` and `-`, not starting with a digit",
                        );
                    }
                    let NodeKind::Seq(items) = &e.value.kind else {
                        self.wrong_type(
                            &e.value,
                            &format!("matrix axis `{axis}`"),
                            "a list of values",
                        );
                        continue;
                    };
                    if items.is_empty() {
                        self.at(&e.value, format!("matrix axis `{axis}` has no values"), "");
                        continue;
                    }
                    let mut values: Vec<Value> = Vec::with_capacity(items.len());
                    for item in items {
                        match scalar_json(item) {
                            Some(v)
                                if values
                                    .iter()
                                    .any(|x| matrix::value_text(x) == matrix::value_text(&v)) =>
                            {
                                self.at(
                                    item,
                                    format!(
                                        "duplicate value `{}` in matrix axis `{axis}`",
                                        matrix::value_text(&v)
                                    ),
                                    "",
                                );
                            }
                            Some(v) => values.push(v),
                            None => self.wrong_type(
                                item,
                                &format!("each value of matrix axis `{axis}`"),
                                "a string, number or boolean",
                            ),
                        }
                    }
                    spec.axes.push(MatrixAxis {
                        name: axis.to_string(),
                        values,
                    });
                }
            }
        }
        if let Some(n) = exclude_node {
            for ex in &spec.exclude {
                for k in ex.keys() {
                    if !spec.axes.iter().any(|a| &a.name == k) {
                        self.at(
                            n,
                            format!("`exclude` names `{k}`, which is not a matrix axis"),
                            "",
                        );
                    }
                }
            }
        }
        if let Err(msg) = matrix::expand(&spec) {
            self.at(matrix_node, msg, "split the job or reduce the matrix");
        }
        Some(spec)
    }

    fn step(
        &mut self,
        node: &Node,
        index: usize,
        matrix_keys: Option<&BTreeSet<String>>,
        job_env: &[&BTreeSet<String>],
    ) -> Option<StepSpec> {
        let what = format!("step {}", index + 1);
        let entries = self.mapping(node, &what, STEP_KEYS)?;
        let env = get(entries, "env")
            .map(|n| {
                self.env(
                    n,
                    "step `env`",
                    Scope {
                        matrix: matrix_keys,
                        env: Some(job_env),
                    },
                )
            })
            .unwrap_or_default();
        let step_keys: BTreeSet<String> = env.keys().cloned().collect();
        let mut layers = job_env.to_vec();
        layers.push(&step_keys);
        let scope = Scope {
            matrix: matrix_keys,
            env: Some(&layers),
        };
        let name =
            get(entries, "name").and_then(|n| self.templated_string(n, "step `name`", scope));
        let working_directory = get(entries, "working-directory")
            .and_then(|n| self.templated_string(n, "`working-directory`", scope));
        let run = get(entries, "run");
        let uses = get(entries, "uses");
        let kind = match (run, uses) {
            (Some(_), Some(_)) => {
                self.at(
                    node,
                    format!("{what} has both `run` and `uses`"),
                    "a step has exactly one of them; split it in two",
                );
                return None;
            }
            (None, None) => {
                self.at(
                    node,
                    format!("{what} has neither `run` nor `uses`"),
                    "add a `run:` script or a `uses:` action",
                );
                return None;
            }
            (Some(run), None) => {
                if let Some(w) = get_entry(entries, "with") {
                    self.at_key(w, "`with` only applies to `uses` steps", "");
                }
                let script = self.templated_string(run, "`run`", scope)?;
                if script.trim().is_empty() {
                    self.at(run, "`run` script is empty", "");
                }
                let shell = get(entries, "shell").and_then(|n| self.string(n, "`shell`"));
                StepKind::Run { script, shell }
            }
            (None, Some(uses)) => {
                if let Some(s) = get_entry(entries, "shell") {
                    self.at_key(s, "`shell` only applies to `run` steps", "");
                }
                let action = self.string(uses, "`uses`")?;
                self.action(uses, &action, get(entries, "with"), scope)?
            }
        };
        Some(StepSpec {
            name,
            kind,
            env,
            working_directory,
        })
    }

    fn action(
        &mut self,
        uses: &Node,
        action: &str,
        with: Option<&Node>,
        scope: Scope<'_>,
    ) -> Option<StepKind> {
        let base = action
            .split('@')
            .next()
            .unwrap_or(action)
            .to_ascii_lowercase();
        let allowed: &[&str] = match base.as_str() {
            "actions/checkout" => &[],
            "actions/upload-artifact" | "actions/download-artifact" => &["name", "path"],
            "actions/cache" => &["key", "path"],
            _ => {
                self.at(
                    uses,
                    format!("unknown action `{action}`"),
                    format!("supported actions: {KNOWN_ACTIONS}; use `run:` for anything else"),
                );
                return None;
            }
        };
        let mut inputs: BTreeMap<&str, String> = BTreeMap::new();
        if let Some(with) = with {
            let what = format!("`with` of `{base}`");
            if let Some(entries) = self.mapping(with, &what, allowed) {
                for e in entries.iter().filter(|e| allowed.contains(&e.key.as_str())) {
                    if let Some(v) =
                        self.templated_string(&e.value, &format!("`with.{}`", e.key), scope)
                        && let Some(k) = allowed.iter().find(|k| **k == e.key)
                    {
                        inputs.insert(k, v);
                    }
                }
            }
        }
        let mut required = |c: &mut Checker, key: &str| -> String {
            inputs.remove(key).unwrap_or_else(|| {
                c.at(uses, format!("`{base}` needs `with.{key}`"), "");
                String::new()
            })
        };
        Some(match base.as_str() {
            "actions/checkout" => StepKind::Checkout,
            "actions/upload-artifact" => {
                let path = required(self, "path");
                StepKind::UploadArtifact {
                    name: inputs.remove("name").unwrap_or_else(|| "artifact".into()),
                    path,
                }
            }
            "actions/download-artifact" => StepKind::DownloadArtifact {
                name: inputs.remove("name"),
                path: inputs.remove("path"),
            },
            _ => {
                let key = required(self, "key");
                let path = required(self, "path");
                StepKind::Cache { key, path }
            }
        })
    }

    fn job(
        &mut self,
        entry: &Entry,
        top_env: &BTreeSet<String>,
        top_cache: CacheSpec,
    ) -> Option<ParsedJob> {
        let id = entry.key.clone();
        if !is_identifier(&id, true) || id.len() > MAX_ID_LEN {
            self.at_key(
                entry,
                format!("invalid job id `{id}`"),
                format!(
                    "job ids match [A-Za-z_][A-Za-z0-9_-]* and have at most {MAX_ID_LEN} characters"
                ),
            );
        }
        let entries = self.mapping(&entry.value, &format!("job `{id}`"), JOB_KEYS)?;
        let trigger_entry = get_entry(entries, "trigger");
        if trigger_entry.is_some() {
            for e in entries
                .iter()
                .filter(|e| WORKER_ONLY_KEYS.contains(&e.key.as_str()))
            {
                let message = if e.key == "steps" {
                    format!(
                        "job `{id}` has both `steps` and `trigger`; they are mutually exclusive"
                    )
                } else {
                    format!(
                        "`{}` does not apply to trigger job `{id}`: it runs on no worker",
                        e.key
                    )
                };
                self.at_key(
                    e,
                    message,
                    "a trigger job starts another pipeline's run; move the work into that pipeline",
                );
            }
        }
        let matrix = if trigger_entry.is_some() {
            None
        } else {
            get(entries, "strategy").and_then(|n| self.strategy(n))
        };
        let matrix_keys = matrix.as_ref().map(matrix::all_keys);
        let task_count = matrix
            .as_ref()
            .and_then(|m| matrix::expand(m).ok())
            .map_or(1, |c| c.len());
        let top_layers = [top_env];
        let env = get(entries, "env")
            .map(|n| {
                self.env(
                    n,
                    "job `env`",
                    Scope {
                        matrix: matrix_keys.as_ref(),
                        env: Some(&top_layers),
                    },
                )
            })
            .unwrap_or_default();
        let job_keys: BTreeSet<String> = env.keys().cloned().collect();
        let job_env = [top_env, &job_keys];
        let scope = Scope {
            matrix: matrix_keys.as_ref(),
            env: Some(&job_env),
        };

        let condition = get(entries, "if").and_then(|n| {
            let src = self.string(n, "`if`")?;
            match Condition::parse(&src) {
                Ok(cond) => self.check_variables(n, &src, cond.variables(), scope),
                Err(e) => {
                    let (line, column) = Self::position_in(n, &src, e.offset);
                    self.push(
                        line,
                        column,
                        format!("invalid condition: {}", e.message),
                        "conditions look like `success() && ref == 'refs/heads/main'`",
                    );
                }
            }
            Some(src)
        });
        let name = get(entries, "name").and_then(|n| self.templated_string(n, "job `name`", scope));
        let (runs_on, labels) = match get(entries, "runs-on") {
            None => (DEFAULT_QUEUE.to_string(), Vec::new()),
            Some(n) => {
                let list = self.strings(n, "`runs-on`").unwrap_or_default();
                for (s, at) in &list {
                    self.template(at, s, scope);
                }
                let mut names = list.into_iter().map(|(s, _)| s);
                match names.next() {
                    Some(queue) => (queue, names.collect()),
                    None => {
                        self.at(
                            n,
                            "`runs-on` is empty",
                            "name a queue, e.g. `runs-on: linux`",
                        );
                        (DEFAULT_QUEUE.to_string(), Vec::new())
                    }
                }
            }
        };
        let timeout_ms = match get(entries, "timeout-minutes") {
            None => DEFAULT_TIMEOUT_MS,
            Some(n) => match n.as_f64() {
                Some(m) if m > 0.0 && m <= MAX_TIMEOUT_MINUTES => {
                    // The range check above keeps this conversion in bounds.
                    ((m * 60_000.0).round() as u64).max(1)
                }
                Some(m) => {
                    self.at(n, format!("`timeout-minutes` must be greater than 0 and at most {MAX_TIMEOUT_MINUTES}, got {m}"), "fractions such as 0.5 are allowed");
                    DEFAULT_TIMEOUT_MS
                }
                None => {
                    self.wrong_type(n, "`timeout-minutes`", "a number");
                    DEFAULT_TIMEOUT_MS
                }
            },
        };
        let retry = get(entries, "retry")
            .map(|n| self.retry(n))
            .unwrap_or_default();
        let cache = get(entries, "cache")
            .and_then(|n| self.cache(n, top_cache))
            .unwrap_or(top_cache);
        let continue_on_error = get(entries, "continue-on-error")
            .and_then(|n| self.boolean(n, "`continue-on-error`"))
            .unwrap_or(false);

        let mut needs: Vec<NeedRef> = Vec::new();
        if let Some(n) = get(entries, "needs") {
            for (need, at) in self.strings(n, "`needs`").unwrap_or_default() {
                if !needs.iter().any(|x| x.name == need) {
                    needs.push(NeedRef {
                        name: need,
                        line: at.line,
                        column: at.column,
                    });
                }
            }
        }

        let mut steps = Vec::new();
        match get_entry(entries, "steps") {
            _ if trigger_entry.is_some() => {}
            None => self.at_key(
                entry,
                format!("job `{id}` has no steps"),
                "add a `steps:` list, or a `trigger:` to start another pipeline",
            ),
            Some(e) => match &e.value.kind {
                NodeKind::Seq(items) if items.is_empty() => self.at(
                    &e.value,
                    format!("job `{id}` has no steps"),
                    "add at least one step",
                ),
                NodeKind::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(step) = self.step(item, i, matrix_keys.as_ref(), &job_env) {
                            steps.push(step);
                        }
                    }
                }
                _ => self.wrong_type(&e.value, "`steps`", "a list"),
            },
        }
        let artifacts = get(entries, "artifacts")
            .and_then(|n| self.strings(n, "`artifacts`"))
            .unwrap_or_default()
            .into_iter()
            .map(|(s, at)| {
                self.template(at, &s, scope);
                s
            })
            .collect();

        let trigger = trigger_entry.and_then(|e| self.trigger(&e.value, scope));
        let (runs_on, labels, retry, cache) = if trigger_entry.is_some() {
            // The child run retries its own tasks; a trigger is tried once, and never
            // served from the cache (a child run is not an artifact).
            let once = RetrySpec {
                max_attempts: 1,
                on: Vec::new(),
                ..RetrySpec::default()
            };
            let off = CacheSpec {
                enabled: false,
                ..cache
            };
            (TRIGGER_QUEUE.to_owned(), Vec::new(), once, off)
        } else {
            (runs_on, labels, retry, cache)
        };
        let spec = JobSpec {
            trigger,
            id,
            name,
            line: entry.key_line,
            runs_on,
            labels,
            needs: needs.iter().map(|n| n.name.clone()).collect(),
            condition,
            continue_on_error,
            timeout_ms,
            retry,
            cache,
            env,
            steps,
            artifacts,
            matrix,
        };
        Some(ParsedJob {
            spec,
            needs,
            key_column: entry.key_column,
            tasks: task_count,
        })
    }

    /// `trigger: {pipeline, ref, wait}`. The pipeline is looked up when the pipeline is
    /// stored and when the job runs, not here: a file is checked on its own.
    fn trigger(&mut self, node: &Node, scope: Scope<'_>) -> Option<TriggerSpec> {
        let entries = self.mapping(node, "`trigger`", TRIGGER_JOB_KEYS)?;
        let pipeline = match get(entries, "pipeline") {
            None => {
                self.at(
                    node,
                    "`trigger` needs a `pipeline` to start",
                    "write e.g. `trigger: {pipeline: deploy}`",
                );
                None
            }
            Some(n) => self.string(n, "`trigger.pipeline`").and_then(|name| {
                let ok = !name.is_empty()
                    && name.len() <= 100
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if ok {
                    Some(name)
                } else {
                    self.at(
                        n,
                        format!("`trigger.pipeline` is not a pipeline name: `{name}`"),
                        "pipeline names are 1 to 100 letters, digits, '-', '_' or '.'",
                    );
                    None
                }
            }),
        };
        let r#ref =
            get(entries, "ref").and_then(|n| self.templated_string(n, "`trigger.ref`", scope));
        let wait = get(entries, "wait")
            .and_then(|n| self.boolean(n, "`trigger.wait`"))
            .unwrap_or(true);
        Some(TriggerSpec {
            pipeline: pipeline?,
            r#ref,
            wait,
        })
    }

    /// Needs must name existing jobs and must not loop. Missing needs are
    /// reported individually (with the entry's position) and left out of
    /// the graph so a cycle elsewhere is still found.
    fn graph(&mut self, jobs: &[ParsedJob]) {
        let ids: BTreeSet<&str> = jobs.iter().map(|j| j.spec.id.as_str()).collect();
        let mut nodes = Vec::with_capacity(jobs.len());
        for ParsedJob {
            spec: job, needs, ..
        } in jobs
        {
            let mut kept = Vec::new();
            for NeedRef {
                name: need,
                line,
                column,
            } in needs
            {
                if ids.contains(need.as_str()) {
                    kept.push(need.clone());
                } else {
                    let hint = match nearest(need, ids.iter().copied()) {
                        Some(n) => format!("did you mean `{n}`?"),
                        None => format!(
                            "defined jobs: {}",
                            ids.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    };
                    self.push(
                        *line,
                        *column,
                        format!(
                            "job `{}` needs `{need}`, which is not a job in this file",
                            job.id
                        ),
                        hint,
                    );
                }
            }
            nodes.push((job.id.clone(), kept));
        }
        match dag::topo_order(&nodes) {
            Ok(_) => {}
            Err(e @ DagError::Cycle(_)) => {
                let first = if let DagError::Cycle(names) = &e {
                    names.first().cloned()
                } else {
                    None
                };
                let (line, column) = jobs
                    .iter()
                    .find(|j| Some(&j.spec.id) == first.as_ref())
                    .map_or((1, 1), |j| (j.spec.line, j.key_column));
                self.push(
                    line,
                    column,
                    e.to_string(),
                    "remove one of the `needs` entries along the cycle",
                );
            }
            Err(e) => self.push(1, 1, e.to_string(), ""),
        }
    }
}

pub(crate) fn parse_file(text: &str) -> Result<PipelineFile, Vec<PipelineError>> {
    if text.len() > MAX_FILE_BYTES {
        return Err(vec![PipelineError::new(
            1,
            1,
            format!(
                "file is {} bytes, larger than the limit of {MAX_FILE_BYTES} bytes",
                text.len()
            ),
            "split the pipeline or move scripts into files",
        )]);
    }
    let (root, errors) = yaml::load(text);
    let mut c = Checker {
        errors,
        in_env_value: false,
    };
    let Some(root) = root else {
        return Err(c.errors);
    };
    let NodeKind::Map(_) = root.kind else {
        c.at(
            &root,
            format!(
                "the pipeline file must be a mapping at the top level, found {}",
                root.type_name()
            ),
            "start with `jobs:`",
        );
        return Err(c.errors);
    };
    let entries = c
        .mapping(&root, "the pipeline file", TOP_KEYS)
        .unwrap_or_default();
    let name = get(entries, "name").and_then(|n| c.string(n, "`name`"));
    let env = get(entries, "env")
        .map(|n| {
            c.env(
                n,
                "`env`",
                Scope {
                    matrix: None,
                    env: None,
                },
            )
        })
        .unwrap_or_default();
    let top_env: BTreeSet<String> = env.keys().cloned().collect();
    let concurrency = get(entries, "concurrency").and_then(|n| c.concurrency(n, &top_env));
    let cache = get(entries, "cache")
        .and_then(|n| c.cache(n, CacheSpec::default()))
        .unwrap_or_default();
    let on = get(entries, "on")
        .map(|n| c.triggers(n))
        .unwrap_or_default();
    let notify = get(entries, "notify")
        .map(|n| c.notify(n))
        .unwrap_or_default();

    let mut jobs = Vec::new();
    match get_entry(entries, "jobs") {
        None => c.at(
            &root,
            "missing required key `jobs`",
            "add a `jobs:` mapping with at least one job",
        ),
        Some(jobs_entry) => match &jobs_entry.value.kind {
            NodeKind::Map(job_entries) if job_entries.is_empty() => {
                c.at_key(jobs_entry, "`jobs` is empty", "define at least one job");
            }
            NodeKind::Map(job_entries) => {
                jobs.extend(job_entries.iter().filter_map(|e| c.job(e, &top_env, cache)));
                let total: usize = jobs.iter().map(|j| j.tasks).sum();
                if total > MAX_TOTAL_TASKS {
                    c.at_key(jobs_entry, format!("pipeline expands to {total} tasks, more than the limit of {MAX_TOTAL_TASKS}"), "reduce matrix sizes or split the pipeline");
                }
            }
            _ => c.wrong_type(&jobs_entry.value, "`jobs`", "a mapping of job ids to jobs"),
        },
    }
    c.graph(&jobs);

    if !c.errors.is_empty() {
        let mut errors = c.errors;
        errors.sort_by_key(|e| (e.line, e.column));
        errors.dedup();
        return Err(errors);
    }
    Ok(PipelineFile {
        name,
        env,
        concurrency,
        cache,
        on,
        notify,
        jobs: jobs.into_iter().map(|j| j.spec).collect(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pipeline::parse;

    pub(crate) const FULL: &str = r#"name: ci
on: { push: { branches: [main] }, schedule: [{cron: "0 * * * *"}] }
concurrency: { group: "ci-${{ ref }}", cancel-in-progress: true }
env: { CARGO_TERM_COLOR: always }
cache: { ttl: 7d }
jobs:
  build:
    name: Build
    runs-on: linux-large
    timeout-minutes: 20
    retry: { max-attempts: 3, on: [lost, infra, timeout], exit-codes: [137], backoff: { initial: 2s, factor: 2, max: 1m, jitter: full } }
    cache: { ttl: 1d }
    continue-on-error: false
    if: success() && ref == 'refs/heads/main'
    env: { A: b }
    steps:
      - uses: actions/checkout@v4
      - name: compile
        run: cargo build --release
        env: { X: y }
        working-directory: sub
        shell: bash
      - uses: actions/upload-artifact@v4
        with: { name: app, path: target/release/app }
    artifacts: [target/release/app]
  test:
    needs: build
    runs-on: [linux, gpu, big]
    timeout-minutes: 0.05
    strategy: { matrix: { shard: [1, 2, 3, 4], include: [{shard: 5, extra: x}], exclude: [{shard: 2}] }, fail-fast: false }
    steps:
      - run: ./ci/test.sh ${{ matrix.shard }} ${{ env.CARGO_TERM_COLOR }}
"#;

    fn errors(text: &str) -> Vec<PipelineError> {
        match parse(text) {
            Ok(f) => panic!("expected errors, parsed {f:?}"),
            Err(e) => e,
        }
    }

    /// Asserts exactly one error, at the given position, mentioning `needle`.
    fn one(text: &str, line: u32, column: u32, needle: &str) -> PipelineError {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        let e = errs[0].clone();
        assert_eq!((e.line, e.column), (line, column), "{e}");
        assert!(
            e.message.contains(needle),
            "`{}` lacks `{needle}`",
            e.message
        );
        e
    }

    const STEPS: &str = "    steps: [{run: echo}]\n";

    #[test]
    fn full_file_parses() {
        let f = parse(FULL).unwrap();
        assert_eq!(f.name.as_deref(), Some("ci"));
        assert_eq!(
            f.concurrency,
            Some(ConcurrencySpec {
                group: "ci-${{ ref }}".into(),
                cancel_in_progress: true
            })
        );
        assert_eq!(
            f.on.push,
            Some(BranchFilter {
                branches: vec!["main".into()],
                branches_ignore: vec![]
            })
        );
        assert_eq!(f.on.pull_request, None);
        assert_eq!(f.on.schedule, vec!["0 * * * *".to_string()]);
        assert_eq!(
            f.cache,
            CacheSpec {
                enabled: true,
                ttl_ms: 7 * 86_400_000
            }
        );
        assert_eq!(f.jobs.len(), 2);
        let build = &f.jobs[0];
        assert_eq!(
            (build.id.as_str(), build.line, build.name.as_deref()),
            ("build", 7, Some("Build"))
        );
        assert_eq!(build.runs_on, "linux-large");
        assert_eq!(build.timeout_ms, 20 * 60_000);
        assert_eq!(
            build.retry.on,
            vec![RetryOn::Lost, RetryOn::Infra, RetryOn::Timeout]
        );
        assert_eq!(build.retry.exit_codes, vec![137]);
        assert_eq!(
            build.retry.backoff,
            BackoffSpec {
                initial_ms: 2_000,
                factor: 2.0,
                max_ms: 60_000,
                jitter: Jitter::Full
            }
        );
        assert_eq!(build.cache.ttl_ms, 86_400_000);
        assert_eq!(
            build.condition.as_deref(),
            Some("success() && ref == 'refs/heads/main'")
        );
        assert_eq!(build.steps.len(), 3);
        assert_eq!(build.steps[0].kind, StepKind::Checkout);
        assert_eq!(
            build.steps[1].kind,
            StepKind::Run {
                script: "cargo build --release".into(),
                shell: Some("bash".into())
            }
        );
        assert_eq!(build.steps[1].working_directory.as_deref(), Some("sub"));
        assert_eq!(
            build.steps[2].kind,
            StepKind::UploadArtifact {
                name: "app".into(),
                path: "target/release/app".into()
            }
        );
        let test = &f.jobs[1];
        assert_eq!(test.needs, vec!["build".to_string()]);
        assert_eq!(
            (test.runs_on.as_str(), test.labels.clone()),
            ("linux", vec!["gpu".to_string(), "big".to_string()])
        );
        assert_eq!(test.timeout_ms, 3_000);
        assert_eq!(test.retry, RetrySpec::default());
        assert_eq!(test.cache, f.cache);
        let m = test.matrix.as_ref().unwrap();
        assert!(!m.fail_fast);
        // Stored specs must survive a JSON round trip unchanged.
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<PipelineFile>(&json).unwrap(), f);
    }

    #[test]
    fn defaults_apply() {
        let f = parse("jobs:\n  a:\n    steps: [{run: echo}]\n").unwrap();
        let a = &f.jobs[0];
        assert_eq!(a.runs_on, "default");
        assert_eq!(a.timeout_ms, 3_600_000);
        assert_eq!(a.retry, RetrySpec::default());
        assert_eq!(
            a.retry.backoff,
            BackoffSpec {
                initial_ms: 1_000,
                factor: 2.0,
                max_ms: 60_000,
                jitter: Jitter::Full
            }
        );
        assert_eq!(
            a.cache,
            CacheSpec {
                enabled: true,
                ttl_ms: 604_800_000
            }
        );
        let f = parse("cache: false\njobs:\n  a:\n    cache: true\n    steps: [{run: echo}]\n  b:\n    steps: [{run: echo}]\n").unwrap();
        assert!(f.jobs[0].cache.enabled && !f.jobs[1].cache.enabled);
        let f = parse("concurrency: grp\non: [push, pull_request]\njobs:\n  a:\n    retry: 5\n    steps: [{run: echo}]\n").unwrap();
        assert_eq!(f.concurrency.unwrap().group, "grp");
        assert!(f.on.push.is_some() && f.on.pull_request.is_some());
        assert_eq!(f.jobs[0].retry.max_attempts, 5);
    }

    #[test]
    fn invalid_yaml_has_parser_position() {
        let e = one("jobs:\n  a: [1, 2\n", 3, 1, "invalid YAML");
        assert!(e.to_string().starts_with("3:1: invalid YAML"), "{e}");
        one("jobs:\n  a:\n\tsteps: []\n", 3, 2, "invalid YAML");
    }

    #[test]
    fn root_must_be_mapping() {
        one("- a\n- b\n", 1, 1, "must be a mapping");
        one("", 1, 1, "must be a mapping");
        one("just text", 1, 1, "must be a mapping");
    }

    #[test]
    fn unknown_keys_suggest_nearest() {
        let e = one(
            "jobs:\n  a:\n    runs_on: x\n    steps: [{run: echo}]\n",
            3,
            5,
            "unknown key `runs_on`",
        );
        assert!(e.message.contains("allowed keys: name, runs-on"), "{e}");
        assert_eq!(e.hint, "did you mean `runs-on`?");
        let e = one(
            &format!("jobz: {{}}\njobs:\n  a:\n{STEPS}"),
            1,
            1,
            "unknown key `jobz`",
        );
        assert_eq!(e.hint, "did you mean `jobs`?");
        let errs = errors(
            "jobs:\n  a:\n    steps:\n      - run: x\n        wiht: {}\n        zzzzzzzz: 1\n",
        );
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert_eq!(
            (errs[0].line, errs[0].column, errs[0].hint.as_str()),
            (5, 9, "did you mean `with`?")
        );
        assert_eq!(
            (errs[1].line, errs[1].hint.as_str()),
            (6, "remove it or fix its spelling")
        );
        one(
            "jobs:\n  a:\n    retry: { max-attempts: 2, bakcoff: {} }\n    steps: [{run: echo}]\n",
            3,
            31,
            "unknown key `bakcoff`",
        );
    }

    #[test]
    fn wrong_types() {
        one(
            "jobs:\n  a:\n    timeout-minutes: soon\n    steps: [{run: echo}]\n",
            3,
            22,
            "`timeout-minutes` must be a number",
        );
        one(
            "jobs:\n  a:\n    continue-on-error: yes\n    steps: [{run: echo}]\n",
            3,
            24,
            "true or false",
        );
        one(
            "jobs:\n  a:\n    env: [a]\n    steps: [{run: echo}]\n",
            3,
            10,
            "must be a mapping",
        );
        one("jobs: [a]\n", 1, 7, "`jobs` must be a mapping");
        one("jobs:\n  a: 3\n", 2, 6, "job `a` must be a mapping");
        one(
            "jobs:\n  a:\n    steps: {run: x}\n",
            3,
            12,
            "`steps` must be a list",
        );
        one(
            "jobs:\n  a:\n    timeout-minutes: 0\n    steps: [{run: echo}]\n",
            3,
            22,
            "greater than 0",
        );
    }

    #[test]
    fn trigger_jobs_parse_and_plan() {
        let text = "jobs:\n  build:\n    steps: [{run: echo}]\n  deploy:\n    needs: build\n    trigger: {pipeline: deploy-prod, ref: \"${{ ref }}-x\", wait: false}\n  child:\n    trigger:\n      pipeline: child.v2\n";
        let f = parse(text).unwrap();
        let deploy = &f.jobs[1];
        assert_eq!(
            deploy.trigger,
            Some(TriggerSpec {
                pipeline: "deploy-prod".into(),
                r#ref: Some("${{ ref }}-x".into()),
                wait: false
            })
        );
        assert!(deploy.steps.is_empty());
        assert_eq!(deploy.runs_on, TRIGGER_QUEUE);
        assert_eq!(deploy.retry.max_attempts, 1);
        assert!(!deploy.cache.enabled);
        assert!(f.jobs[2].trigger.as_ref().unwrap().wait, "waits by default");
        let ctx = crate::pipeline::PlanContext {
            repository: "r".into(),
            sha: "s".into(),
            r#ref: "refs/heads/main".into(),
            run_number: 1,
        };
        let tasks = crate::pipeline::plan(&f, &ctx).unwrap();
        assert_eq!(
            tasks[1].trigger.as_ref().unwrap().r#ref.as_deref(),
            Some("refs/heads/main-x")
        );
        assert_eq!(tasks[2].trigger.as_ref().unwrap().r#ref, None);
        assert_eq!(tasks[0].trigger, None);
    }

    #[test]
    fn trigger_job_errors() {
        one(
            "jobs:\n  a:\n    trigger: {pipeline: b}\n    steps: [{run: echo}]\n",
            4,
            5,
            "job `a` has both `steps` and `trigger`; they are mutually exclusive",
        );
        one(
            "jobs:\n  a:\n    runs-on: linux\n    trigger: {pipeline: b}\n",
            3,
            5,
            "`runs-on` does not apply to trigger job `a`",
        );
        one(
            "jobs:\n  a:\n    trigger: {wait: true}\n",
            3,
            14,
            "`trigger` needs a `pipeline`",
        );
        one(
            "jobs:\n  a:\n    trigger: {pipeline: \"x y\"}\n",
            3,
            25,
            "is not a pipeline name",
        );
        one(
            "jobs:\n  a:\n    trigger: {pipeline: b, wiat: true}\n",
            3,
            28,
            "unknown key `wiat` in `trigger`",
        );
        one(
            "jobs:\n  a:\n    trigger: {pipeline: b, ref: \"${{ matrix.x }}\"}\n",
            3,
            33,
            "unknown variable `matrix.x`",
        );
        one(
            "jobs:\n  a:\n    trigger: {pipeline: b, wait: maybe}\n",
            3,
            34,
            "`trigger.wait` must be true or false",
        );
    }

    #[test]
    fn missing_or_empty_jobs_and_steps() {
        one("name: x\n", 1, 1, "missing required key `jobs`");
        one("jobs: {}\n", 1, 1, "`jobs` is empty");
        one("jobs:\n  a:\n    name: x\n", 2, 3, "job `a` has no steps");
        one(
            "jobs:\n  a:\n    steps: []\n",
            3,
            12,
            "job `a` has no steps",
        );
        one(
            "jobs:\n  a:\n    steps: [{name: x}]\n",
            3,
            13,
            "neither `run` nor `uses`",
        );
        one(
            "jobs:\n  a:\n    steps: [{run: x, uses: actions/checkout@v4}]\n",
            3,
            13,
            "both `run` and `uses`",
        );
    }

    #[test]
    fn bad_and_duplicate_job_ids() {
        one(
            &format!("jobs:\n  9lives:\n{STEPS}"),
            2,
            3,
            "invalid job id `9lives`",
        );
        one(
            &format!("jobs:\n  \"a b\":\n{STEPS}"),
            2,
            3,
            "invalid job id `a b`",
        );
        let e = one(
            &format!("jobs:\n  a:\n{STEPS}  b:\n{STEPS}  a:\n{STEPS}"),
            6,
            3,
            "duplicate key `a`",
        );
        assert!(e.message.contains("first defined at line 2"), "{e}");
    }

    #[test]
    fn needs_and_cycles() {
        let e = one(
            &format!("jobs:\n  build:\n{STEPS}  test:\n    needs: [build, bild]\n{STEPS}"),
            5,
            20,
            "needs `bild`",
        );
        assert_eq!(e.hint, "did you mean `build`?");
        let text = format!(
            "jobs:\n  a:\n    needs: c\n{STEPS}  b:\n    needs: a\n{STEPS}  c:\n    needs: [b]\n{STEPS}  d:\n{STEPS}"
        );
        let e = one(&text, 2, 3, "cycle: a → c → b → a");
        assert_eq!(
            e.to_string(),
            "2:3: cycle: a → c → b → a (remove one of the `needs` entries along the cycle)"
        );
        one(
            &format!("jobs:\n  x:\n{STEPS}  me:\n    needs: me\n{STEPS}"),
            4,
            3,
            "cycle: me → me",
        );
        // A missing need and a cycle are both reported.
        let errs = errors(&format!(
            "jobs:\n  a:\n    needs: [b, zz]\n{STEPS}  b:\n    needs: a\n{STEPS}"
        ));
        assert_eq!(errs.len(), 2, "{errs:#?}");
    }

    #[test]
    fn matrix_limits() {
        let values: Vec<String> = (0..257).map(|i| i.to_string()).collect();
        let text = format!(
            "jobs:\n  a:\n    strategy:\n      matrix:\n        n: [{}]\n{STEPS}",
            values.join(", ")
        );
        one(&text, 5, 9, "257 jobs, more than the limit of 256");
        let ok = format!(
            "jobs:\n  a:\n    strategy:\n      matrix:\n        n: [{}]\n        exclude: [{{n: 0}}]\n{STEPS}",
            values.join(", ")
        );
        assert_eq!(parse(&ok).unwrap().jobs.len(), 1);
        // Five jobs of 250 stay under the per-matrix cap but not the total.
        let v250 = (0..250)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut text = "jobs:\n".to_string();
        for j in 0..5 {
            text.push_str(&format!(
                "  j{j}:\n    strategy: {{matrix: {{n: [{v250}]}}}}\n{STEPS}"
            ));
        }
        one(&text, 1, 1, "1250 tasks, more than the limit of 1000");
        one(
            &format!("jobs:\n  a:\n    strategy: {{matrix: {{n: [1, 1]}}}}\n{STEPS}"),
            3,
            32,
            "duplicate value `1`",
        );
        one(
            &format!(
                "jobs:\n  a:\n    strategy: {{matrix: {{n: [1], exclude: [{{m: 1}}]}}}}\n{STEPS}"
            ),
            3,
            42,
            "not a matrix axis",
        );
        one(
            &format!(
                "jobs:\n  a:\n    strategy: {{matrix: {{n: [1], exclude: [{{n: 1}}]}}}}\n{STEPS}"
            ),
            3,
            24,
            "no jobs",
        );
    }

    #[test]
    fn bad_durations() {
        one(
            &format!("cache: {{ ttl: 7 }}\njobs:\n  a:\n{STEPS}"),
            1,
            15,
            "missing a unit",
        );
        one(
            &format!("jobs:\n  a:\n    retry: {{ backoff: {{ initial: 2x }} }}\n{STEPS}"),
            3,
            34,
            "unknown unit `x`",
        );
        one(
            &format!("jobs:\n  a:\n    retry: {{ backoff: {{ initial: 2m, max: 1m }} }}\n{STEPS}"),
            3,
            23,
            "larger than",
        );
        one(
            &format!("jobs:\n  a:\n    retry: {{ max-attempts: 0 }}\n{STEPS}"),
            3,
            28,
            "between 1 and 100",
        );
        one(
            &format!("jobs:\n  a:\n    retry: {{ on: [lost, cancelled] }}\n{STEPS}"),
            3,
            25,
            "`cancelled` cannot be retried",
        );
        one(
            &format!("jobs:\n  a:\n    retry: {{ on: [timout] }}\n{STEPS}"),
            3,
            19,
            "unknown retry kind `timout`",
        );
    }

    #[test]
    fn bad_expressions() {
        one(
            &format!("jobs:\n  a:\n    if: success() && nope()\n{STEPS}"),
            3,
            22,
            "unknown function `nope`",
        );
        one(
            &format!("jobs:\n  a:\n    if: (ref == 'x'\n{STEPS}"),
            3,
            20,
            "expected `)`",
        );
        one(
            "jobs:\n  a:\n    steps: [{run: \"echo ${{ matrix.os }}\"}]\n",
            3,
            19,
            "unknown variable `matrix.os`",
        );
        one(
            "jobs:\n  a:\n    steps:\n      - run: echo ${{ matrix.shard\n",
            4,
            19,
            "unterminated",
        );
        let e = one(
            "jobs:\n  a:\n    strategy: {matrix: {shard: [1]}}\n    steps:\n      - run: echo ${{ matrix.shrd }}\n",
            5,
            23,
            "unknown variable `matrix.shrd`",
        );
        assert!(e.hint.contains("did you mean `shard`?"), "{e}");
        one(
            &format!("env: {{ A: \"${{{{ env.B }}}}\" }}\njobs:\n  a:\n{STEPS}"),
            1,
            11,
            "unknown variable `env.B`",
        );
        one(
            &format!("jobs:\n  a:\n    if: secrets.X == 'y'\n{STEPS}"),
            3,
            9,
            "unknown variable `secrets.X`",
        );
        let ok = "env: {A: x}\njobs:\n  a:\n    env: {B: \"${{ env.A }}\"}\n    if: ${{ env.B == 'x' && github.ref != '' }}\n    steps:\n      - env: {C: \"${{ env.B }}\"}\n        run: echo ${{ env.C }} ${{ github.run_number }}\n";
        parse(ok).unwrap();
    }

    #[test]
    fn actions() {
        let e = one(
            "jobs:\n  a:\n    steps:\n      - uses: docker/build-push-action@v5\n",
            4,
            15,
            "unknown action `docker/build-push-action@v5`",
        );
        assert!(e.hint.contains("actions/checkout"));
        one(
            "jobs:\n  a:\n    steps:\n      - uses: actions/checkout@v4\n        with: {fetch-depth: 0}\n",
            5,
            16,
            "unknown key `fetch-depth`",
        );
        one(
            "jobs:\n  a:\n    steps:\n      - uses: actions/cache@v4\n        with: {path: x}\n",
            4,
            15,
            "needs `with.key`",
        );
        let f = parse("jobs:\n  a:\n    steps:\n      - uses: actions/download-artifact@v4\n      - uses: actions/cache@v3\n        with: {key: k, path: p}\n      - uses: Actions/Checkout\n").unwrap();
        let kinds: Vec<_> = f.jobs[0].steps.iter().map(|s| s.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                StepKind::DownloadArtifact {
                    name: None,
                    path: None
                },
                StepKind::Cache {
                    key: "k".into(),
                    path: "p".into()
                },
                StepKind::Checkout
            ]
        );
    }

    #[test]
    fn file_too_large() {
        let text = format!("jobs:\n  a:\n{STEPS}# {}\n", "x".repeat(MAX_FILE_BYTES));
        one(&text, 1, 1, "larger than the limit");
    }

    #[test]
    fn collects_many_errors_sorted() {
        let text = "jobz: 1\njobs:\n  a:\n    runs_on: x\n    timeout-minutes: -1\n    steps:\n      - uses: foo/bar@v1\n  b:\n    needs: c\n";
        let errs = errors(text);
        let lines: Vec<u32> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 4, 5, 7, 8, 9], "{errs:#?}");
    }

    #[test]
    fn anchors_and_limits() {
        let f = parse("x-common: &s\n  - run: echo\njobs:\n  a:\n    steps: *s\n");
        // `x-common` is not an allowed key, but the alias itself resolves.
        let errs = f.unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("unknown key `x-common`"));
        let deep = format!("jobs: {}{}\n", "[".repeat(500), "]".repeat(500));
        one(&deep, 1, 262, "invalid YAML");
        let deep = format!("jobs: {}{}\n", "[".repeat(100), "]".repeat(100));
        one(&deep, 1, 70, "nesting deeper");
        let mut bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n".to_string();
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let errs = errors(&bomb);
        assert!(
            errs.iter().any(|e| e.message.contains("aliases expand")),
            "{errs:#?}"
        );
    }

    #[test]
    fn step_env_is_scoped_to_its_step() {
        let text = "jobs:\n  a:\n    steps:\n      - env: {OUT: x}\n        run: echo\n      - run: echo ${{ env.OUT }}\n";
        let e = one(text, 6, 23, "unknown variable `env.OUT`");
        assert!(e.hint.contains("no env variables"), "{e}");
    }

    #[test]
    fn large_files_stay_fast() {
        let mut text = String::from("env:\n");
        for i in 0..20_000 {
            text.push_str(&format!("  V{i}: x\n"));
        }
        text.push_str("jobs:\n");
        for j in 0..400 {
            text.push_str(&format!(
                "  j{j}:\n    needs: [{}]\n    steps:\n",
                if j > 0 {
                    format!("j{}", j - 1)
                } else {
                    String::new()
                }
            ));
            for _ in 0..5 {
                text.push_str("      - run: echo ${{ env.V19999 }}\n");
            }
        }
        assert!(text.len() < MAX_FILE_BYTES);
        let start = std::time::Instant::now();
        let file = parse(&text).unwrap();
        assert_eq!(file.jobs.len(), 400);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
    }
}
