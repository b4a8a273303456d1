//! GraphQL subscriptions over WebSocket with the `graphql-transport-ws` protocol.
//!
//! One socket per subscription keeps the bookkeeping trivial (the dashboard follows at most
//! a run and a log at a time). The token travels in `connection_init`, as the server
//! expects. Dropping a [`Subscription`] completes it and closes the socket, so a view that
//! goes away stops its stream by dropping its handle.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

use super::{ApiError, EVENT_FIELDS, Event};

/// What a subscription reports to its owner.
#[derive(Debug, Clone, PartialEq)]
pub enum Live<T> {
    /// The server accepted the connection; items follow.
    Connected,
    Next(T),
    /// The server refused the subscription or sent a payload that did not decode.
    Failed(ApiError),
    /// The stream ended normally (e.g. after a run's terminal event).
    Completed,
    /// The connection dropped before the stream ended; resubscribe to resume.
    Disconnected,
}

/// A live subscription; dropping it stops the stream.
pub struct Subscription {
    socket: WebSocket,
    _on_open: Closure<dyn FnMut()>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.socket.set_onopen(None);
        self.socket.set_onmessage(None);
        self.socket.set_onclose(None);
        if self.socket.ready_state() == WebSocket::OPEN {
            let _ = self.socket.send_with_str(r#"{"id":"1","type":"complete"}"#);
        }
        let _ = self.socket.close();
    }
}

/// A chunk of an attempt's log.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct LogChunk {
    pub offset: i64,
    pub stream: String,
    pub data: String,
}

/// Every event of a run after `after`, then live ones, until its terminal event.
pub fn run_events(
    token: &str,
    run: &str,
    after: Option<&str>,
    on: impl Fn(Live<Event>) + 'static,
) -> Result<Subscription, ApiError> {
    subscribe(
        token,
        &format!(
            "subscription RunEvents($run: ID!, $after: String) {{ runEvents(run: $run, after: $after) {{ {EVENT_FIELDS} }} }}"
        ),
        json!({ "run": run, "after": after }),
        "runEvents",
        on,
    )
}

/// An attempt's log from `from_offset`: what exists, then live output until it ends.
pub fn attempt_log(
    token: &str,
    attempt: &str,
    from_offset: i64,
    on: impl Fn(Live<LogChunk>) + 'static,
) -> Result<Subscription, ApiError> {
    subscribe(
        token,
        "subscription AttemptLog($attempt: ID!, $from: Int!) { attemptLog(attempt: $attempt, fromOffset: $from) { offset stream data } }",
        json!({ "attempt": attempt, "from": from_offset }),
        "attemptLog",
        on,
    )
}

fn subscribe<T: DeserializeOwned + 'static>(
    token: &str,
    query: &str,
    variables: Value,
    field: &'static str,
    on: impl Fn(Live<T>) + 'static,
) -> Result<Subscription, ApiError> {
    let url = socket_url()?;
    let socket = WebSocket::new_with_str(&url, "graphql-transport-ws").map_err(|err| ApiError {
        message: format!("could not open a WebSocket: {err:?}"),
        code: Some("NETWORK_ERROR".to_owned()),
    })?;
    let on = std::rc::Rc::new(on);

    let init = json!({
        "type": "connection_init",
        "payload": { "Authorization": format!("Bearer {token}") },
    })
    .to_string();
    let open_socket = socket.clone();
    let on_open = Closure::<dyn FnMut()>::new(move || {
        let _ = open_socket.send_with_str(&init);
    });

    let subscribe_message = json!({
        "id": "1",
        "type": "subscribe",
        "payload": { "query": query, "variables": variables },
    })
    .to_string();
    let message_socket = socket.clone();
    let message_on = on.clone();
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        let Some(text) = event.data().as_string() else {
            return;
        };
        let Ok(message) = serde_json::from_str::<Value>(&text) else {
            return;
        };
        match message["type"].as_str() {
            Some("connection_ack") => {
                let _ = message_socket.send_with_str(&subscribe_message);
                message_on(Live::Connected);
            }
            Some("ping") => {
                let _ = message_socket.send_with_str(r#"{"type":"pong"}"#);
            }
            Some("next") => {
                let payload = &message["payload"];
                if let Some(error) = payload["errors"].get(0) {
                    message_on(Live::Failed(error_of(error)));
                    return;
                }
                match serde_json::from_value::<T>(payload["data"][field].clone()) {
                    Ok(item) => message_on(Live::Next(item)),
                    Err(err) => message_on(Live::Failed(ApiError {
                        message: format!("could not read a live update: {err}"),
                        code: Some("BAD_RESPONSE".to_owned()),
                    })),
                }
            }
            Some("error") => {
                let error = message["payload"].get(0).map(error_of).unwrap_or(ApiError {
                    message: "the subscription was refused".to_owned(),
                    code: None,
                });
                message_on(Live::Failed(error));
            }
            Some("complete") => message_on(Live::Completed),
            _ => {}
        }
    });

    let close_on = on;
    let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |event: CloseEvent| {
        // 4401/4403: the server rejected the token in connection_init.
        if matches!(event.code(), 4401 | 4403) {
            close_on(Live::Failed(ApiError {
                message: "the server rejected the token".to_owned(),
                code: Some(super::UNAUTHENTICATED.to_owned()),
            }));
        } else {
            close_on(Live::Disconnected);
        }
    });

    socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    Ok(Subscription {
        socket,
        _on_open: on_open,
        _on_message: on_message,
        _on_close: on_close,
    })
}

fn error_of(error: &Value) -> ApiError {
    ApiError {
        message: error["message"]
            .as_str()
            .unwrap_or("subscription error")
            .to_owned(),
        code: error["extensions"]["code"].as_str().map(str::to_owned),
    }
}

fn socket_url() -> Result<String, ApiError> {
    let location = web_sys::window()
        .map(|w| w.location())
        .ok_or_else(|| ApiError {
            message: "no window".to_owned(),
            code: Some("CLIENT_ERROR".to_owned()),
        })?;
    let scheme = match location.protocol().as_deref() {
        Ok("https:") => "wss",
        _ => "ws",
    };
    let host = location.host().unwrap_or_default();
    Ok(format!("{scheme}://{host}{}", super::GRAPHQL_PATH))
}
