//! A real WebSocket GraphQL client (`graphql-transport-ws`) for subscription tests.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::{ADMIN_TOKEN, Server};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects with `graphql-transport-ws`, authenticates with `token` and starts one
/// subscription (id "1").
async fn start(server: &Server, token: &str, query: &str, variables: Value) -> Socket {
    let url = format!("ws://{}/graphql", server.addr());
    let mut req = url.into_client_request().expect("ws request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    let (mut ws, _) = connect(req).await.expect("ws connect");
    ws.send(Message::text(
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }).to_string(),
    ))
    .await
    .expect("send init");
    ws.send(Message::text(
        json!({ "id": "1", "type": "subscribe", "payload": { "query": query, "variables": variables } }).to_string(),
    ))
    .await
    .expect("send subscribe");
    ws
}

/// Subscribes with `query` and collects the payloads until the server completes the
/// subscription (or `within` passes, which fails the test).
pub async fn subscribe(
    server: &Server,
    token: &str,
    query: &str,
    variables: Value,
    within: Duration,
) -> Vec<Value> {
    let mut ws = start(server, token, query, variables).await;
    let mut out = Vec::new();
    let collect = async {
        while let Some(msg) = ws.next().await {
            let msg = msg.expect("ws message");
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).expect("json message");
            match v["type"].as_str() {
                Some("next") => {
                    assert!(
                        v["payload"].get("errors").is_none(),
                        "subscription error: {v}"
                    );
                    out.push(v["payload"]["data"].clone());
                }
                Some("complete") => return,
                Some("error") => panic!("subscription refused: {v}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(within, collect)
        .await
        .expect("subscription did not complete in time");
    out
}

/// The events of a run from `after`, until its terminal event.
pub async fn run_events(
    server: &Server,
    run: &str,
    after: Option<&str>,
    within: Duration,
) -> Vec<Value> {
    subscribe(
        server,
        ADMIN_TOKEN,
        "subscription($r: ID!, $a: String) { runEvents(run: $r, after: $a) { seq entity entityId task from to reason } }",
        json!({ "r": run, "a": after }),
        within,
    )
    .await
    .into_iter()
    .map(|d| d["runEvents"].clone())
    .collect()
}

/// Subscribes with `query` and returns the first payload for which `pred` holds, without
/// waiting for the subscription to end (fails the test after `within`).
pub async fn first_match(
    server: &Server,
    query: &str,
    variables: Value,
    within: Duration,
    mut pred: impl FnMut(&Value) -> bool,
) -> Value {
    let mut ws = start(server, ADMIN_TOKEN, query, variables).await;
    let found = async {
        while let Some(msg) = ws.next().await {
            let Message::Text(text) = msg.expect("ws message") else {
                continue;
            };
            let v: Value = serde_json::from_str(&text).expect("json message");
            match v["type"].as_str() {
                Some("next") => {
                    let data = v["payload"]["data"].clone();
                    if pred(&data) {
                        return data;
                    }
                }
                Some("complete") => panic!("subscription ended without a match"),
                Some("error") => panic!("subscription refused: {v}"),
                _ => {}
            }
        }
        panic!("connection closed without a match");
    };
    tokio::time::timeout(within, found)
        .await
        .expect("no match in time")
}

/// Waits for the first event of `run` matching `pred` (replaying from the start).
pub async fn wait_event(
    server: &Server,
    run: &str,
    within: Duration,
    mut pred: impl FnMut(&Value) -> bool,
) -> Value {
    first_match(
        server,
        "subscription($r: ID!) { runEvents(run: $r) { seq entity entityId task attempt from to reason } }",
        json!({ "r": run }),
        within,
        |d| pred(&d["runEvents"]),
    )
    .await["runEvents"]
        .clone()
}

/// Waits until the log of `attempt` contains `needle`.
pub async fn wait_log(server: &Server, attempt: &str, needle: &str, within: Duration) {
    let mut seen = String::new();
    first_match(
        server,
        "subscription($a: ID!) { attemptLog(attempt: $a) { offset data } }",
        json!({ "a": attempt }),
        within,
        |d| {
            seen.push_str(d["attemptLog"]["data"].as_str().unwrap_or_default());
            seen.contains(needle)
        },
    )
    .await;
}

/// An open subscription whose payloads are read one at a time.
pub struct Subscription {
    ws: Socket,
}

/// What the server sent next on a subscription.
#[derive(Debug, Clone)]
pub enum Item {
    Data(Value),
    /// A `next` carrying errors (the stream then completes).
    Errors(Value),
    Complete,
}

/// Connects with a 16 KiB read buffer: the client library zeroes its whole read buffer
/// (128 KiB by default) before every read, which would cost the client more than reading
/// the messages, on the cores it shares with the server it measures.
async fn connect(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<
    (
        Socket,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(16 * 1024);
    tokio_tungstenite::connect_async_with_config(req, Some(config), false).await
}

impl Subscription {
    /// Opens a subscription with `protocol` (`graphql-transport-ws` or the legacy
    /// `graphql-ws`) and waits until the server acknowledged the connection.
    pub async fn open(
        server: &Server,
        protocol: &str,
        query: &str,
        variables: Value,
    ) -> Subscription {
        Self::open_as(server, ADMIN_TOKEN, protocol, query, variables).await
    }

    /// Like [`Subscription::open`], signed in with `token`.
    pub async fn open_as(
        server: &Server,
        token: &str,
        protocol: &str,
        query: &str,
        variables: Value,
    ) -> Subscription {
        let url = format!("ws://{}/graphql", server.addr());
        let mut req = url.into_client_request().expect("ws request");
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol.parse().expect("header"));
        let (mut ws, _) = connect(req).await.expect("ws connect");
        ws.send(Message::text(
            json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }).to_string(),
        ))
        .await
        .expect("send init");
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("connection_ack in time")
                .expect("open socket")
                .expect("ws message");
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["type"] == "connection_ack" {
                    break;
                }
            }
        }
        let start = if protocol == "graphql-ws" {
            "start"
        } else {
            "subscribe"
        };
        ws.send(Message::text(
            json!({ "id": "1", "type": start, "payload": { "query": query, "variables": variables } }).to_string(),
        ))
        .await
        .expect("send subscribe");
        Subscription { ws }
    }

    /// The next item, or None when nothing came within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Item> {
        let read = async {
            while let Some(msg) = self.ws.next().await {
                let Ok(Message::Text(text)) = msg else {
                    continue;
                };
                let v: Value = serde_json::from_str(&text).expect("json message");
                match v["type"].as_str() {
                    Some("next") | Some("data") => {
                        if v["payload"].get("errors").is_some() {
                            return Item::Errors(v["payload"]["errors"].clone());
                        }
                        return Item::Data(v["payload"]["data"].clone());
                    }
                    Some("complete") => return Item::Complete,
                    Some("error") => return Item::Errors(v["payload"].clone()),
                    _ => {}
                }
            }
            Item::Complete
        };
        tokio::time::timeout(within, read).await.ok()
    }

    /// Sends a protocol message as it is (`subscribe` with another id, `complete`, …).
    pub async fn send(&mut self, message: Value) {
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .expect("send message");
    }

    /// The next protocol message, whole (with its `id` and `type`), or None when the
    /// socket closed or nothing came within `within`.
    pub async fn next_message(&mut self, within: Duration) -> Option<Value> {
        let read = async {
            while let Some(msg) = self.ws.next().await {
                match msg {
                    Ok(Message::Text(text)) => {
                        return Some(serde_json::from_str(&text).expect("json message"));
                    }
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
            None
        };
        tokio::time::timeout(within, read).await.ok().flatten()
    }

    /// The text of the next message, unparsed, or None when the socket closed or nothing
    /// came within `within`. For a benchmark client, whose decoding shares the machine's
    /// cores with the server it measures.
    pub async fn next_text(&mut self, within: Duration) -> Option<String> {
        let read = async {
            while let Some(msg) = self.ws.next().await {
                match msg {
                    Ok(Message::Text(text)) => return Some(text.to_string()),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
            None
        };
        tokio::time::timeout(within, read).await.ok().flatten()
    }
}
