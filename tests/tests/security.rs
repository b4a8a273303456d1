//! Security: every query, mutation and subscription under every kind of wrong caller,
//! signed webhooks with replay protection, limits, and secrets masked in logs.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gantry_tests::{Backend, Server, ServerOptions, backends};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Strings that only tenant A's objects contain: no refusal may carry them.
const A_MARKERS: [&str; 3] = ["alpha-pipeline", "/repo/of-tenant-a", "a1a1a1a1"];

const FILE: &str = "jobs:\n  build:\n    steps:\n      - run: echo hi\n";

async fn idle_server(backend: Backend) -> Server {
    let mut o = ServerOptions::new(backend);
    o.workers = 0;
    Server::start(o).await
}

async fn token(s: &Server, tenant: &str, scopes: &[&str]) -> (String, String) {
    let d = s
        .data(
            "mutation($t: String, $s: [Scope!]!) { createApiToken(input: {tenant: $t, name: \"t\", scopes: $s}) { token apiToken { id } } }",
            json!({ "t": tenant, "s": scopes.iter().map(|x| x.to_ascii_uppercase()).collect::<Vec<_>>() }),
        )
        .await;
    (
        d["createApiToken"]["token"].as_str().unwrap().to_owned(),
        d["createApiToken"]["apiToken"]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

fn code(res: &Value) -> Option<String> {
    res["errors"][0]["extensions"]["code"]
        .as_str()
        .map(str::to_owned)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    NoToken,
    Revoked,
    OtherTenant,
    Agent,
    ReadOnly,
}

/// What an operation touches, which decides each caller's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Needs any valid token.
    Any,
    /// Reads one of A's objects.
    ReadObj,
    /// Lists what the caller sees.
    ReadList,
    /// Changes one of A's objects (write scope).
    WriteObj,
    /// Tenant administration.
    Admin,
    /// A worker call on A's worker or attempt.
    AgentObj,
}

/// `None` means "succeeds (without A's data, for another tenant)".
fn expected(who: Who, kind: Kind, name: &str) -> Option<&'static str> {
    use Kind::*;
    match who {
        Who::NoToken | Who::Revoked => Some("UNAUTHENTICATED"),
        Who::OtherTenant => match kind {
            Any | ReadList => None,
            ReadObj | WriteObj | AgentObj => Some("NOT_FOUND"),
            Admin => Some("FORBIDDEN"),
        },
        Who::Agent => match kind {
            Any => None,
            // A's own agent may lease from A's worker; its lease token is wrong elsewhere.
            AgentObj if name == "leaseAttempt" => None,
            AgentObj => Some("CONFLICT"),
            _ => Some("FORBIDDEN"),
        },
        Who::ReadOnly => match kind {
            Any | ReadObj | ReadList => None,
            _ => Some("FORBIDDEN"),
        },
    }
}

struct Fixture {
    tenant_a: String,
    pipeline: String,
    run: String,
    task: String,
    attempt: String,
    worker: String,
    secret: String,
    token_id: String,
}

fn operations(f: &Fixture) -> Vec<(&'static str, Kind, String, Value)> {
    use Kind::*;
    let ops: Vec<(&'static str, Kind, &str, Value)> = vec![
        ("serverInfo", Any, "{ serverInfo { version } }", json!({})),
        (
            "viewer",
            ReadList,
            "{ viewer { tenant { id name } scopes } }",
            json!({}),
        ),
        ("tenants", ReadList, "{ tenants { id name } }", json!({})),
        (
            "pipelines",
            ReadList,
            "{ pipelines { edges { node { id name repository } } } }",
            json!({}),
        ),
        (
            "pipeline",
            ReadObj,
            "query($id: ID!) { pipeline(id: $id) { id name repository file } }",
            json!({ "id": f.pipeline }),
        ),
        (
            "runs",
            ReadList,
            "{ runs { edges { node { id sha } } } }",
            json!({}),
        ),
        (
            "runsOfA",
            ReadList,
            "query($t: ID) { runs(filter: {tenant: $t}) { edges { node { id sha } } } }",
            json!({ "t": f.tenant_a }),
        ),
        (
            "run",
            ReadObj,
            "query($id: ID!) { run(id: $id) { id sha tasks { id } } }",
            json!({ "id": f.run }),
        ),
        (
            "task",
            ReadObj,
            "query($id: ID!) { task(id: $id) { id name } }",
            json!({ "id": f.task }),
        ),
        (
            "attempt",
            ReadObj,
            "query($id: ID!) { attempt(id: $id) { id state } }",
            json!({ "id": f.attempt }),
        ),
        ("workers", ReadList, "{ workers { id name } }", json!({})),
        ("queues", ReadList, "{ queues { name depth } }", json!({})),
        (
            "queueStats",
            ReadList,
            "{ queueStats(queue: \"default\") { depth } }",
            json!({}),
        ),
        (
            "events",
            ReadList,
            "{ events { edges { node { seq run } } } }",
            json!({}),
        ),
        (
            "eventsOfA",
            ReadList,
            "query($t: ID) { events(filter: {tenant: $t}) { edges { node { seq run } } } }",
            json!({ "t": f.tenant_a }),
        ),
        ("apiTokens", Admin, "{ apiTokens { id name } }", json!({})),
        ("secrets", ReadList, "{ secrets { id name } }", json!({})),
        (
            "secretsOfPipeline",
            ReadObj,
            "query($p: ID) { secrets(pipeline: $p) { id name } }",
            json!({ "p": f.pipeline }),
        ),
        (
            "createTenant",
            Admin,
            "mutation { createTenant(input: {name: \"intruder\"}) { id } }",
            json!({}),
        ),
        (
            "createApiToken",
            Admin,
            "mutation($t: String) { createApiToken(input: {tenant: $t, name: \"x\", scopes: [ADMIN]}) { token } }",
            json!({ "t": "tenant-a" }),
        ),
        (
            "revokeApiToken",
            Admin,
            "mutation($id: ID!) { revokeApiToken(id: $id) { id } }",
            json!({ "id": f.token_id }),
        ),
        (
            "createPipeline",
            WriteObj,
            "mutation($f: String!) { createPipeline(input: {tenant: \"tenant-a\", name: \"evil\", provider: GIT, repository: \"/x\", file: $f}) { id } }",
            json!({ "f": FILE }),
        ),
        (
            "updatePipeline",
            WriteObj,
            "mutation($id: ID!) { updatePipeline(input: {id: $id, name: \"renamed\"}) { id } }",
            json!({ "id": f.pipeline }),
        ),
        (
            "triggerRun",
            WriteObj,
            "mutation($p: ID!) { triggerRun(input: {pipeline: $p, sha: \"b2b2b2b2\", ref: \"refs/heads/x\"}) { id } }",
            json!({ "p": f.pipeline }),
        ),
        (
            "cancelRun",
            WriteObj,
            "mutation($id: ID!) { cancelRun(id: $id) { id } }",
            json!({ "id": f.run }),
        ),
        (
            "retryTask",
            WriteObj,
            "mutation($id: ID!) { retryTask(id: $id) { id } }",
            json!({ "id": f.task }),
        ),
        (
            "rerunFailed",
            WriteObj,
            "mutation($id: ID!) { rerunFailed(run: $id) { id } }",
            json!({ "id": f.run }),
        ),
        (
            "setSecret",
            WriteObj,
            "mutation($p: ID!) { setSecret(input: {pipeline: $p, name: \"X\", value: \"v\"}) { id } }",
            json!({ "p": f.pipeline }),
        ),
        (
            "deleteSecret",
            WriteObj,
            "mutation($id: ID!) { deleteSecret(id: $id) }",
            json!({ "id": f.secret }),
        ),
        (
            "leaseAttempt",
            AgentObj,
            "mutation($w: ID!) { leaseAttempt(worker: $w, waitMs: 0) { leaseToken spec } }",
            json!({ "w": f.worker }),
        ),
        (
            "heartbeat",
            AgentObj,
            "mutation($a: ID!) { heartbeat(attempt: $a, leaseToken: \"forged\") { cancel } }",
            json!({ "a": f.attempt }),
        ),
        (
            "appendLog",
            AgentObj,
            "mutation($a: ID!) { appendLog(attempt: $a, leaseToken: \"forged\", chunks: [{stream: \"stdout\", data: \"x\"}]) }",
            json!({ "a": f.attempt }),
        ),
        (
            "completeAttempt",
            AgentObj,
            "mutation($a: ID!) { completeAttempt(input: {attempt: $a, leaseToken: \"forged\"}) { id } }",
            json!({ "a": f.attempt }),
        ),
    ];
    ops.into_iter()
        .map(|(n, k, q, v)| (n, k, q.to_owned(), v))
        .collect()
}

/// The first answer of a subscription: the error code, or `None` with data.
async fn subscribe_once(
    s: &Server,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> (Option<String>, String) {
    let url = format!("ws://{}/graphql", s.addr());
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let payload = match token {
        Some(t) => json!({ "Authorization": format!("Bearer {t}") }),
        None => json!({}),
    };
    ws.send(Message::text(
        json!({ "type": "connection_init", "payload": payload }).to_string(),
    ))
    .await
    .unwrap();
    ws.send(Message::text(
        json!({ "id": "1", "type": "subscribe", "payload": { "query": query, "variables": variables } }).to_string(),
    ))
    .await
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            match v["type"].as_str() {
                Some("next") => return v["payload"].clone(),
                Some("error") => return json!({ "errors": v["payload"] }),
                _ => {}
            }
        }
        json!({ "closed": true })
    })
    .await
    .expect("a subscription answers");
    (code(&first), first.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_refuses_wrong_callers_without_leaking() {
    for backend in backends().await {
        let s = idle_server(backend).await;
        let a = s
            .data(
                "mutation { createTenant(input: {name: \"tenant-a\"}) { id } }",
                json!({}),
            )
            .await["createTenant"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        s.data(
            "mutation { createTenant(input: {name: \"tenant-b\"}) { id } }",
            json!({}),
        )
        .await;
        let pipeline = s
            .data(
                "mutation($f: String!) { createPipeline(input: {tenant: \"tenant-a\", name: \"alpha-pipeline\", provider: GIT, repository: \"/repo/of-tenant-a\", file: $f}) { id } }",
                json!({ "f": FILE }),
            )
            .await["createPipeline"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let run_id = s.trigger(&pipeline, "a1a1a1a1").await;
        let run = s.run(&run_id).await;
        let task = run["tasks"][0]["id"].as_str().unwrap().to_owned();
        let attempt = run["tasks"][0]["attempts"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();

        let (read_a, _) = token(&s, "tenant-a", &["read"]).await;
        let (agent_a, _) = token(&s, "tenant-a", &["agent"]).await;
        let (other_b, _) = token(&s, "tenant-b", &["read", "write", "agent"]).await;
        let (revoked, revoked_id) = token(&s, "tenant-a", &["read", "write", "admin"]).await;
        let r = s
            .gql(
                "mutation($id: ID!) { revokeApiToken(id: $id) { revokedAt } }",
                json!({ "id": revoked_id }),
            )
            .await;
        assert!(r["data"]["revokeApiToken"]["revokedAt"].is_string(), "{r}");
        let worker = s
            .gql_as(
                Some(&agent_a),
                "mutation { registerWorker(input: {name: \"a-worker\"}) { id } }",
                json!({}),
            )
            .await["data"]["registerWorker"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        // No secret key on this server: setting one is refused with a clear code.
        let r = s
            .gql(
                "mutation($p: ID!) { setSecret(input: {pipeline: $p, name: \"X\", value: \"v\"}) { id } }",
                json!({ "p": pipeline }),
            )
            .await;
        assert_eq!(code(&r).as_deref(), Some("SECRET_KEY_MISSING"), "{r}");
        let (_, token_id) = token(&s, "tenant-a", &["read"]).await;
        let f = Fixture {
            tenant_a: a,
            pipeline: pipeline.clone(),
            run: run_id.clone(),
            task,
            attempt: attempt.clone(),
            worker,
            secret: "00000000-0000-0000-0000-000000000000".into(),
            token_id,
        };

        let callers = [
            (Who::NoToken, None),
            (Who::Revoked, Some(revoked.as_str())),
            (Who::OtherTenant, Some(other_b.as_str())),
            (Who::ReadOnly, Some(read_a.as_str())),
            // Last: its allowed lease changes A's attempt.
            (Who::Agent, Some(agent_a.as_str())),
        ];
        let mut checked = 0;
        for (who, tok) in callers {
            for (name, kind, query, vars) in operations(&f) {
                // A secret id that does not exist: NOT_FOUND for whoever may write.
                let want = if name == "deleteSecret" && who == Who::ReadOnly {
                    Some("FORBIDDEN")
                } else {
                    expected(who, kind, name)
                };
                let res = s.gql_as(tok, &query, vars).await;
                let got = code(&res);
                assert_eq!(got.as_deref(), want, "{backend:?} {who:?} {name}: {res}");
                if want.is_some() {
                    let field = query
                        .split(['{', '('])
                        .nth(1)
                        .unwrap_or("")
                        .trim()
                        .to_owned();
                    assert!(
                        res["data"].is_null() || res["data"][field.as_str()].is_null(),
                        "{who:?} {name} returned data: {res}"
                    );
                }
                if who != Who::ReadOnly && name != "leaseAttempt" {
                    let text = res.to_string();
                    for m in A_MARKERS {
                        assert!(!text.contains(m), "{who:?} {name} leaked {m}: {text}");
                    }
                }
                checked += 1;
            }
            for (name, query, vars) in [
                (
                    "runEvents",
                    "subscription($r: ID!) { runEvents(run: $r) { seq } }",
                    json!({ "r": run_id }),
                ),
                (
                    "attemptLog",
                    "subscription($a: ID!) { attemptLog(attempt: $a) { data } }",
                    json!({ "a": attempt }),
                ),
            ] {
                let want = expected(who, Kind::ReadObj, name);
                if want.is_none() && name == "attemptLog" {
                    // Allowed, and the attempt has no output yet: it would wait for some.
                    continue;
                }
                let (got, text) = subscribe_once(&s, tok, query, vars).await;
                if want.is_some() {
                    assert_eq!(got.as_deref(), want, "{backend:?} {who:?} {name}: {text}");
                    for m in A_MARKERS {
                        assert!(!text.contains(m), "{who:?} {name} leaked {m}: {text}");
                    }
                }
                checked += 1;
            }
        }
        println!("{backend:?}: {checked} operation × caller checks");

        // The tenant's own agent leased A's attempt above; tenant B's agent never sees it.
        let rb = s
            .gql_as(
                Some(&other_b),
                "mutation { registerWorker(input: {name: \"b-worker\"}) { id } }",
                json!({}),
            )
            .await;
        let wb = rb["data"]["registerWorker"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        s.trigger(&pipeline, "a1a1a1a2").await;
        let res = s
            .gql_as(
                Some(&other_b),
                "mutation($w: ID!) { leaseAttempt(worker: $w, waitMs: 0) { leaseToken } }",
                json!({ "w": wb }),
            )
            .await;
        assert!(res.get("errors").is_none(), "{res}");
        assert!(
            res["data"]["leaseAttempt"].is_null(),
            "tenant B's agent leased tenant A's attempt: {res}"
        );
        let a_run = s.run(&run_id).await;
        assert_eq!(a_run["tasks"][0]["attempts"][0]["state"], "RUNNING");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_tokens_stop_working_and_use_is_recorded() {
    for backend in backends().await {
        let s = idle_server(backend).await;
        let (tok, id) = token(&s, "default", &["read"]).await;
        let r = s
            .gql_as(Some(&tok), "{ viewer { scopes } }", json!({}))
            .await;
        assert_eq!(r["data"]["viewer"]["scopes"], json!(["READ"]), "{r}");
        let list = s
            .data("{ apiTokens { id lastUsedAt revokedAt } }", json!({}))
            .await;
        let me = list["apiTokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id.as_str())
            .unwrap()
            .clone();
        assert!(me["lastUsedAt"].is_string(), "{me}");
        assert!(me["revokedAt"].is_null());
        assert!(
            !list.to_string().contains(&tok),
            "the secret is never listed"
        );
        s.data(
            "mutation($id: ID!) { revokeApiToken(id: $id) { id } }",
            json!({ "id": id }),
        )
        .await;
        let r = s
            .gql_as(Some(&tok), "{ viewer { scopes } }", json!({}))
            .await;
        assert_eq!(code(&r).as_deref(), Some("UNAUTHENTICATED"), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_queries_and_large_bodies_are_refused() {
    let s = idle_server(Backend::Sqlite).await;
    let mut q = String::from("id");
    for i in 0..30 {
        q = if i % 2 == 0 {
            format!("tasks {{ {q} }}")
        } else {
            format!("run {{ {q} }}")
        };
    }
    let query = format!("query($id: ID!) {{ run(id: $id) {{ {q} }} }}");
    let r = s.gql(&query, json!({ "id": "x" })).await;
    assert_eq!(code(&r).as_deref(), Some("QUERY_TOO_DEEP"), "{r}");
    assert!(r["data"].is_null());

    let big = "x".repeat(3 * 1024 * 1024);
    let res = reqwest::Client::new()
        .post(format!("{}/graphql", s.url))
        .bearer_auth(gantry_tests::ADMIN_TOKEN)
        .json(&json!({ "query": "{ viewer { scopes } }", "variables": { "pad": big } }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let body: Value = res.json().await.unwrap();
    assert_eq!(code(&body).as_deref(), Some("PAYLOAD_TOO_LARGE"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_connections_per_token_are_bounded() {
    let s = idle_server(Backend::Sqlite).await;
    let (tok, _) = token(&s, "default", &["read"]).await;
    let url = format!("ws://{}/graphql", s.addr());
    let mut open = Vec::new();
    let mut refused_at = None;
    for i in 0..40 {
        let mut req = url.clone().into_client_request().unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(Message::text(
            json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {tok}") } }).to_string(),
        ))
        .await
        .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer to connection_init");
        match reply {
            Some(Ok(Message::Text(t))) if t.contains("connection_ack") => open.push(ws),
            other => {
                refused_at = Some((i, format!("{other:?}")));
                break;
            }
        }
    }
    let (at, how) = refused_at.expect("the connection limit refuses at some point");
    assert_eq!(at, 32, "refused at {at}: {how}");
    assert!(
        how.contains("LIMIT_EXCEEDED") || how.contains("Close"),
        "{how}"
    );
    drop(open);
}

fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post_hook(s: &Server, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", s.url))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn runs_of(s: &Server, pipeline: &str) -> Vec<Value> {
    s.data(
        "query($p: ID) { runs(filter: {pipeline: $p}) { edges { node { id sha ref trigger } } } }",
        json!({ "p": pipeline }),
    )
    .await["runs"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_webhooks_trigger_once_and_forgeries_are_refused() {
    for backend in backends().await {
        let s = idle_server(backend).await;
        let d = s
            .data(
                "mutation($f: String!) { createPipeline(input: {name: \"hooked\", provider: GITHUB, repository: \"https://github.com/acme/app.git\", file: $f, webhookSecret: \"whsec\"}) { id } }",
                json!({ "f": FILE }),
            )
            .await;
        let pipeline = d["createPipeline"]["id"].as_str().unwrap().to_owned();
        let push = json!({
            "ref": "refs/heads/main", "after": "0123456789abcdef0123456789abcdef01234567",
            "repository": { "full_name": "acme/app", "clone_url": "https://github.com/acme/app.git", "html_url": "https://github.com/acme/app" }
        })
        .to_string();
        let body = push.as_bytes();
        let good = sign("whsec", body);

        for (sig, what) in [
            (sign("wrong", body), "wrong secret"),
            ("sha256=00".to_owned(), "garbage"),
            (sign("whsec", b"other body"), "other body"),
        ] {
            let (status, res) = post_hook(
                &s,
                "/webhooks/github",
                &[
                    ("x-github-event", "push"),
                    ("x-github-delivery", "d-bad"),
                    ("x-hub-signature-256", &sig),
                ],
                body,
            )
            .await;
            assert_eq!(status, 401, "{what}: {res}");
            assert_eq!(res["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
        }
        let (status, _) = post_hook(
            &s,
            "/webhooks/github",
            &[("x-github-event", "push"), ("x-github-delivery", "d-none")],
            body,
        )
        .await;
        assert_eq!(status, 401, "unsigned");
        assert!(runs_of(&s, &pipeline).await.is_empty());

        let headers = [
            ("x-github-event", "push"),
            ("x-github-delivery", "d-1"),
            ("x-hub-signature-256", good.as_str()),
        ];
        let (status, res) = post_hook(&s, "/webhooks/github", &headers, body).await;
        assert_eq!(status, 202, "{res}");
        assert_eq!(res["runs"].as_array().unwrap().len(), 1);
        // Replayed delivery: answered, nothing new.
        let (status, again) = post_hook(&s, "/webhooks/github", &headers, body).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["status"], "duplicate");
        assert_eq!(again["runs"], res["runs"]);
        let runs = runs_of(&s, &pipeline).await;
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(runs[0]["trigger"], "webhook");
        assert_eq!(runs[0]["sha"], "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(runs[0]["ref"], "refs/heads/main");

        let pr = json!({
            "action": "opened", "number": 7,
            "pull_request": { "head": { "sha": "abcdef0123456" }, "base": { "ref": "main" } },
            "repository": { "full_name": "acme/app", "html_url": "https://github.com/acme/app" }
        })
        .to_string();
        let sig = sign("whsec", pr.as_bytes());
        let (status, res) = post_hook(
            &s,
            "/webhooks/github",
            &[
                ("x-github-event", "pull_request"),
                ("x-github-delivery", "d-2"),
                ("x-hub-signature-256", &sig),
            ],
            pr.as_bytes(),
        )
        .await;
        assert_eq!(status, 202, "{res}");
        let runs = runs_of(&s, &pipeline).await;
        assert!(
            runs.iter()
                .any(|r| r["ref"] == "refs/pull/7/head" && r["sha"] == "abcdef0123456"),
            "{runs:?}"
        );

        // GitLab: the token header is compared with the pipeline's secret.
        let d = s
            .data(
                "mutation($f: String!) { createPipeline(input: {name: \"lab\", provider: GITLAB, repository: \"acme/lab\", file: $f, webhookSecret: \"gltok\"}) { id } }",
                json!({ "f": FILE }),
            )
            .await;
        let lab = d["createPipeline"]["id"].as_str().unwrap().to_owned();
        let gl = json!({
            "object_kind": "push", "ref": "refs/heads/dev", "after": "fedcba9876543", "checkout_sha": "fedcba9876543",
            "project": { "path_with_namespace": "acme/lab", "web_url": "https://gitlab.example/acme/lab" }
        })
        .to_string();
        let (status, _) = post_hook(
            &s,
            "/webhooks/gitlab",
            &[
                ("x-gitlab-event", "Push Hook"),
                ("x-gitlab-event-uuid", "g-1"),
                ("x-gitlab-token", "nope"),
            ],
            gl.as_bytes(),
        )
        .await;
        assert_eq!(status, 401);
        let (status, res) = post_hook(
            &s,
            "/webhooks/gitlab",
            &[
                ("x-gitlab-event", "Push Hook"),
                ("x-gitlab-event-uuid", "g-1"),
                ("x-gitlab-token", "gltok"),
            ],
            gl.as_bytes(),
        )
        .await;
        assert_eq!(status, 202, "{res}");
        assert_eq!(runs_of(&s, &lab).await.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_the_job_masked_and_never_the_api() {
    use base64::Engine;
    for backend in backends().await {
        let mut o = ServerOptions::new(backend);
        o.workers = 1;
        o.extra_env.push((
            "GANTRY_SECRET_KEY".into(),
            base64::engine::general_purpose::STANDARD.encode([42u8; 32]),
        ));
        let s = Server::start(o).await;
        let file = "jobs:\n  show:\n    env:\n      TOKEN: ${{ secrets.DEPLOY_TOKEN }}\n    steps:\n      - run: |\n          echo \"token=$TOKEN\"\n          test ${#TOKEN} -eq 15\n";
        let pipeline = s.create_pipeline("masked", "/nowhere", file).await;
        let r = s
            .gql(
                "mutation { setSecret(input: {name: \"DEPLOY_TOKEN\", value: \"s3cr3t-value-42\"}) { id name pipelineId } }",
                json!({}),
            )
            .await;
        assert_eq!(r["data"]["setSecret"]["name"], "DEPLOY_TOKEN", "{r}");
        let listed = s.data("{ secrets { id name } }", json!({})).await;
        assert!(!listed.to_string().contains("s3cr3t"), "{listed}");

        let run_id = s.trigger(&pipeline, "0000aaaa").await;
        let run = s.wait_run(&run_id, Duration::from_secs(60)).await;
        assert_eq!(run["state"], "SUCCEEDED", "the job saw the value: {run:#}");
        let log = run["tasks"][0]["attempts"][0]["log"].as_str().unwrap();
        assert!(log.contains("token=***"), "{log}");
        assert!(!log.contains("s3cr3t-value-42"), "{log}");
        // Nor does the stored spec or anything else the API returns hold the value.
        let everything = s
            .data(
                "query($id: ID!) { run(id: $id) { tasks { id name } events(first: 1000) { details } pipeline { file } } }",
                json!({ "id": run_id }),
            )
            .await;
        assert!(!everything.to_string().contains("s3cr3t"), "{everything}");
    }
}
