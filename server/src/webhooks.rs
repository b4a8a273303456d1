//! Incoming webhooks: parsing GitHub and GitLab payloads into one [`WebhookEvent`],
//! verifying their signatures, and matching a pipeline's repository against the forms
//! a payload names it by. Pure functions, no I/O: the service decides what to trigger.
//!
//! Supported: GitHub `push` and `pull_request` (opened, synchronize, reopened), with
//! `X-Hub-Signature-256`; GitLab `Push Hook` with `X-Gitlab-Token`. Every other event
//! parses to [`EventKind::Ignored`] so that a `ping` is answered, not refused.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Largest accepted webhook payload (GitHub caps deliveries at 25 MB, but pushes with
/// more than 2 MiB of metadata are not worth planning from).
pub const MAX_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;

/// Where a webhook came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Github,
    Gitlab,
}

impl Provider {
    /// The provider name stored on pipelines.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
        }
    }
}

/// What a delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A branch or tag moved to `sha`.
    Push,
    /// A pull request was opened or updated; `ref` is `refs/pull/N/head`.
    PullRequest { number: u64, action: String },
    /// Nothing to build (a ping, a branch deletion, a closed pull request, another event).
    Ignored { reason: String },
}

/// The names a payload gives its repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoNames {
    /// `owner/name` (GitHub `full_name`, GitLab `path_with_namespace`).
    pub full_name: Option<String>,
    pub clone_url: Option<String>,
    pub html_url: Option<String>,
    pub ssh_url: Option<String>,
}

/// One parsed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub provider: Provider,
    /// The provider's event name (`push`, `pull_request`, `Push Hook`, …).
    pub event: String,
    pub kind: EventKind,
    pub repository: RepoNames,
    /// The commit to build (`after` of a push, the head sha of a pull request).
    pub sha: String,
    /// `refs/heads/…`, `refs/tags/…` or `refs/pull/N/head`.
    pub git_ref: String,
    /// The branch a pull request targets, for filters.
    pub base_ref: Option<String>,
}

/// Why a payload cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

fn bad(msg: impl Into<String>) -> PayloadError {
    PayloadError(msg.into())
}

fn text(v: &serde_json::Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str().map(str::to_owned)
}

const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

fn check_sha(sha: &str) -> Result<(), PayloadError> {
    if (7..=64).contains(&sha.len()) && sha.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(bad("the commit sha is not a hex digest"))
    }
}

fn check_ref(r: &str) -> Result<(), PayloadError> {
    if !r.is_empty()
        && r.len() <= 500
        && r.starts_with("refs/")
        && !r.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        Ok(())
    } else {
        Err(bad("the ref is not a full git ref"))
    }
}

fn ignored(
    provider: Provider,
    event: &str,
    repository: RepoNames,
    reason: impl Into<String>,
) -> WebhookEvent {
    WebhookEvent {
        provider,
        event: event.to_owned(),
        kind: EventKind::Ignored {
            reason: reason.into(),
        },
        repository,
        sha: String::new(),
        git_ref: String::new(),
        base_ref: None,
    }
}

/// Parses a GitHub delivery: `event` is the `X-GitHub-Event` header.
pub fn parse_github(event: &str, body: &[u8]) -> Result<WebhookEvent, PayloadError> {
    if body.len() > MAX_PAYLOAD_BYTES {
        return Err(bad("payload too large"));
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("payload is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad("payload is not a JSON object"));
    }
    let repo = RepoNames {
        full_name: text(&v, &["repository", "full_name"]),
        clone_url: text(&v, &["repository", "clone_url"]),
        html_url: text(&v, &["repository", "html_url"]),
        ssh_url: text(&v, &["repository", "ssh_url"]),
    };
    match event {
        "push" => {
            let git_ref = text(&v, &["ref"]).ok_or_else(|| bad("push without `ref`"))?;
            let sha = text(&v, &["after"]).ok_or_else(|| bad("push without `after`"))?;
            if v.get("deleted").and_then(|d| d.as_bool()) == Some(true) || sha == ZERO_SHA {
                return Ok(ignored(Provider::Github, event, repo, "ref deleted"));
            }
            check_ref(&git_ref)?;
            check_sha(&sha)?;
            Ok(WebhookEvent {
                provider: Provider::Github,
                event: event.to_owned(),
                kind: EventKind::Push,
                repository: repo,
                sha,
                git_ref,
                base_ref: None,
            })
        }
        "pull_request" => {
            let action = text(&v, &["action"]).unwrap_or_default();
            if !matches!(action.as_str(), "opened" | "synchronize" | "reopened") {
                return Ok(ignored(
                    Provider::Github,
                    event,
                    repo,
                    format!("pull request {action}"),
                ));
            }
            let number = v
                .get("number")
                .or_else(|| v.get("pull_request").and_then(|p| p.get("number")))
                .and_then(|n| n.as_u64())
                .ok_or_else(|| bad("pull_request without `number`"))?;
            let sha = text(&v, &["pull_request", "head", "sha"])
                .ok_or_else(|| bad("pull_request without `pull_request.head.sha`"))?;
            check_sha(&sha)?;
            let base_ref = text(&v, &["pull_request", "base", "ref"]).map(|b| {
                if b.starts_with("refs/") {
                    b
                } else {
                    format!("refs/heads/{b}")
                }
            });
            Ok(WebhookEvent {
                provider: Provider::Github,
                event: event.to_owned(),
                kind: EventKind::PullRequest { number, action },
                repository: repo,
                sha,
                git_ref: format!("refs/pull/{number}/head"),
                base_ref,
            })
        }
        other => Ok(ignored(
            Provider::Github,
            other,
            repo,
            format!("event `{other}` does not trigger runs"),
        )),
    }
}

/// Parses a GitLab delivery: `event` is the `X-Gitlab-Event` header.
pub fn parse_gitlab(event: &str, body: &[u8]) -> Result<WebhookEvent, PayloadError> {
    if body.len() > MAX_PAYLOAD_BYTES {
        return Err(bad("payload too large"));
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("payload is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad("payload is not a JSON object"));
    }
    let repo = RepoNames {
        full_name: text(&v, &["project", "path_with_namespace"]),
        clone_url: text(&v, &["project", "git_http_url"]),
        html_url: text(&v, &["project", "web_url"]),
        ssh_url: text(&v, &["project", "git_ssh_url"]),
    };
    if event != "Push Hook" && text(&v, &["object_kind"]).as_deref() != Some("push") {
        return Ok(ignored(
            Provider::Gitlab,
            event,
            repo,
            format!("event `{event}` does not trigger runs"),
        ));
    }
    let git_ref = text(&v, &["ref"]).ok_or_else(|| bad("push without `ref`"))?;
    let sha = text(&v, &["checkout_sha"])
        .or_else(|| text(&v, &["after"]))
        .ok_or_else(|| bad("push without `after`"))?;
    if sha == ZERO_SHA {
        return Ok(ignored(Provider::Gitlab, event, repo, "ref deleted"));
    }
    check_ref(&git_ref)?;
    check_sha(&sha)?;
    Ok(WebhookEvent {
        provider: Provider::Gitlab,
        event: event.to_owned(),
        kind: EventKind::Push,
        repository: repo,
        sha,
        git_ref,
        base_ref: None,
    })
}

/// Checks `X-Hub-Signature-256: sha256=<hex>` against the HMAC-SHA256 of the body under
/// `secret`, in constant time.
pub fn verify_github_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The `X-Hub-Signature-256` value of `body` under `secret` (for clients and tests).
pub fn github_signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC accepts keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Compares `X-Gitlab-Token` with the secret in constant time (both are hashed first, so
/// not even their lengths are compared directly).
pub fn verify_gitlab_token(secret: &[u8], header: &str) -> bool {
    let a = Sha256::digest(secret);
    let b = Sha256::digest(header.as_bytes());
    !secret.is_empty() && bool::from(a.ct_eq(&b))
}

/// A repository name reduced to compare equal across its URL forms:
/// `https://GitHub.com/Acme/App.git`, `git@github.com:acme/app.git` and
/// `github.com/acme/app/` all become `github.com/acme/app`; `acme/app` stays `acme/app`.
pub fn normalize_repository(repo: &str) -> String {
    let mut s = repo.trim().to_ascii_lowercase();
    for scheme in ["https://", "http://", "ssh://", "git://"] {
        if let Some(rest) = s.strip_prefix(scheme) {
            s = rest.to_owned();
            break;
        }
    }
    // The authority: `user@host`, `user@host:port` or scp-like `user@host:path`.
    let (head, tail) = match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s.as_str(), ""),
    };
    let host = head.rsplit('@').next().unwrap_or(head);
    let s = match host.split_once(':') {
        // A port (`host:22/owner/app`) is not part of the name.
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => format!("{h}{tail}"),
        Some((h, path)) => format!("{h}/{path}{tail}"),
        None => format!("{host}{tail}"),
    };
    // Trailing slashes, `.git` and spaces, until none is left (`a.git/ .git` → `a`).
    let mut s = s.as_str();
    loop {
        let t = s.trim().trim_end_matches('/');
        let t = t.strip_suffix(".git").unwrap_or(t);
        if t == s {
            return t.to_owned();
        }
        s = t;
    }
}

/// Whether a pipeline attached to `repository` is the one this delivery is about. The
/// pipeline may name it by clone URL, web URL, SSH URL or `owner/name`.
pub fn repository_matches(repository: &str, names: &RepoNames) -> bool {
    let want = normalize_repository(repository);
    if want.is_empty() {
        return false;
    }
    let candidates = [&names.clone_url, &names.html_url, &names.ssh_url];
    if candidates
        .iter()
        .filter_map(|c| c.as_deref())
        .any(|c| normalize_repository(c) == want)
    {
        return true;
    }
    match &names.full_name {
        Some(full) => {
            let full = normalize_repository(full);
            // `owner/name` given on the pipeline, or a URL of an unknown host form.
            want == full
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn push(sha: &str) -> Vec<u8> {
        serde_json::json!({
            "ref": "refs/heads/main", "after": sha, "deleted": false,
            "repository": {
                "full_name": "acme/app",
                "clone_url": "https://github.com/acme/app.git",
                "html_url": "https://github.com/acme/app",
                "ssh_url": "git@github.com:acme/app.git",
            }
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn github_push_parses() {
        let e = parse_github("push", &push("0123456789abcdef0123456789abcdef01234567")).unwrap();
        assert_eq!(e.kind, EventKind::Push);
        assert_eq!(e.git_ref, "refs/heads/main");
        assert_eq!(e.sha, "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(e.repository.full_name.as_deref(), Some("acme/app"));
    }

    #[test]
    fn deleted_branches_and_pings_are_ignored() {
        let e = parse_github("push", &push(ZERO_SHA)).unwrap();
        assert!(matches!(e.kind, EventKind::Ignored { .. }));
        let e = parse_github("ping", br#"{"zen": "hi"}"#).unwrap();
        assert!(matches!(e.kind, EventKind::Ignored { .. }));
    }

    #[test]
    fn pull_requests_build_their_head() {
        let body = serde_json::json!({
            "action": "synchronize", "number": 42,
            "pull_request": { "head": { "sha": "abcdef1234567", "ref": "feature" }, "base": { "ref": "main" } },
            "repository": { "full_name": "acme/app" }
        });
        let e = parse_github("pull_request", body.to_string().as_bytes()).unwrap();
        assert_eq!(e.git_ref, "refs/pull/42/head");
        assert_eq!(e.sha, "abcdef1234567");
        assert_eq!(e.base_ref.as_deref(), Some("refs/heads/main"));
        let closed = body.to_string().replace("synchronize", "closed");
        assert!(matches!(
            parse_github("pull_request", closed.as_bytes())
                .unwrap()
                .kind,
            EventKind::Ignored { .. }
        ));
    }

    #[test]
    fn malformed_payloads_are_refused() {
        assert!(parse_github("push", b"not json").is_err());
        assert!(parse_github("push", b"[]").is_err());
        assert!(parse_github("push", br#"{"ref": "main", "after": "abcdef1"}"#).is_err());
        assert!(parse_github("push", br#"{"ref": "refs/heads/x", "after": "zz"}"#).is_err());
        assert!(parse_github("push", br#"{"ref": "refs/heads/a b", "after": "abcdef1"}"#).is_err());
    }

    #[test]
    fn gitlab_push_parses() {
        let body = serde_json::json!({
            "object_kind": "push", "ref": "refs/heads/main", "after": "abcdef1234567", "checkout_sha": "abcdef1234567",
            "project": { "path_with_namespace": "acme/app", "git_http_url": "https://gitlab.com/acme/app.git", "web_url": "https://gitlab.com/acme/app" }
        });
        let e = parse_gitlab("Push Hook", body.to_string().as_bytes()).unwrap();
        assert_eq!(e.kind, EventKind::Push);
        assert_eq!(e.provider, Provider::Gitlab);
        assert!(repository_matches(
            "https://gitlab.com/acme/app",
            &e.repository
        ));
    }

    #[test]
    fn signatures_verify_only_with_the_right_secret() {
        let body = b"{\"a\":1}";
        let sig = github_signature(b"s3cret", body);
        assert!(verify_github_signature(b"s3cret", body, &sig));
        assert!(!verify_github_signature(b"other", body, &sig));
        assert!(!verify_github_signature(b"s3cret", b"{\"a\":2}", &sig));
        assert!(!verify_github_signature(b"s3cret", body, "sha1=abc"));
        assert!(!verify_github_signature(b"s3cret", body, "sha256=zz"));
        assert!(verify_gitlab_token(b"tok", "tok"));
        assert!(!verify_gitlab_token(b"tok", "tok2"));
        assert!(!verify_gitlab_token(b"", ""));
    }

    #[test]
    fn repository_forms_match() {
        let names = RepoNames {
            full_name: Some("Acme/App".into()),
            clone_url: Some("https://github.com/Acme/App.git".into()),
            html_url: Some("https://github.com/Acme/App".into()),
            ssh_url: Some("git@github.com:Acme/App.git".into()),
        };
        for repo in [
            "https://github.com/acme/app.git",
            "https://github.com/acme/app",
            "https://github.com/acme/app/",
            "git@github.com:acme/app.git",
            "ssh://git@github.com/acme/app.git",
            "acme/app",
            "github.com/acme/app",
        ] {
            assert!(repository_matches(repo, &names), "{repo}");
        }
        for repo in ["acme/other", "https://github.com/acme/app2", "app", ""] {
            assert!(!repository_matches(repo, &names), "{repo}");
        }
    }

    fn json_fragment() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("\"refs/heads/main\"".to_owned()),
            Just("\"0000000000000000000000000000000000000000\"".to_owned()),
            Just("\"abcdef1\"".to_owned()),
            Just("42".to_owned()),
            "\"[^\"\\\\]{0,12}\"".prop_map(|s| s),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            let keys = prop::sample::select(vec![
                "ref",
                "after",
                "deleted",
                "action",
                "number",
                "pull_request",
                "head",
                "sha",
                "base",
                "repository",
                "full_name",
                "clone_url",
                "project",
                "object_kind",
                "checkout_sha",
                "x",
            ]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((keys, inner), 0..6).prop_map(|kv| {
                    let parts: Vec<String> = kv
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect();
                    format!("{{{}}}", parts.join(","))
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("GANTRY_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
        ))]

        /// Fuzz target: no payload, structured or not, makes the parsers panic, and
        /// whatever they accept is a usable trigger.
        #[test]
        fn webhook_parsers_never_panic(
            body in json_fragment(),
            raw in prop::collection::vec(any::<u8>(), 0..200),
            event in prop::sample::select(vec!["push", "pull_request", "ping", "Push Hook", "x"]),
        ) {
            for b in [body.as_bytes(), raw.as_slice()] {
                for e in [parse_github(event, b), parse_gitlab(event, b)].into_iter().flatten() {
                    if !matches!(e.kind, EventKind::Ignored { .. }) {
                        prop_assert!(check_sha(&e.sha).is_ok());
                        prop_assert!(check_ref(&e.git_ref).is_ok());
                    }
                }
            }
        }

        #[test]
        fn signature_checks_never_panic(secret in ".{0,40}", body in ".{0,100}", header in ".{0,80}") {
            let _ = verify_github_signature(secret.as_bytes(), body.as_bytes(), &header);
            let _ = verify_gitlab_token(secret.as_bytes(), &header);
            let sig = github_signature(secret.as_bytes(), body.as_bytes());
            prop_assert!(verify_github_signature(secret.as_bytes(), body.as_bytes(), &sig));
        }

        #[test]
        fn normalization_never_panics_and_is_idempotent(repo in ".{0,60}") {
            let once = normalize_repository(&repo);
            prop_assert_eq!(normalize_repository(&once), once.clone());
        }
    }
}
