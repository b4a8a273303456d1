//! The GraphQL WebSocket connection (`graphql-transport-ws` and the legacy `graphql-ws`).
//!
//! The protocol itself is async-graphql's, with two parts of ours. Subscriptions to
//! `runEvents` and `events` are served here: each event is rendered once for all the
//! subscribers that select the same fields (`graphql::shared`), and this loop sends the
//! text. And the write side: a commit of many events makes every subscription of a
//! connection produce a message per event at once; those that are ready are written
//! together and flushed once, so a burst costs one system call (and one TCP segment, and
//! one wake-up of the client) per connection, not one per message.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use async_graphql::Data;
use async_graphql::http::{
    ClientMessage, WebSocket as GraphQLStream, WebSocketProtocols, WsMessage,
};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::{HeaderMap, header};
use futures::channel::mpsc;
use futures::stream::BoxStream;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio_stream::StreamMap;

use super::authenticate;
use crate::graphql::{GantrySchema, shared};
use crate::service::Service;

/// The first protocol of the request's `Sec-WebSocket-Protocol` that is spoken here.
pub(super) fn protocol(headers: &HeaderMap) -> Option<WebSocketProtocols> {
    headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|list| {
            list.split(',')
                .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok())
        })
}

/// Serves one upgraded connection until either side closes it.
pub(super) async fn serve(
    socket: WebSocket,
    schema: GantrySchema,
    service: Service,
    protocol: WebSocketProtocols,
) {
    let (mut sink, mut input) = socket.split();
    // What the connection's `connection_init` authenticated, for the event subscriptions
    // served here rather than by the protocol stream.
    let session: Arc<OnceLock<Arc<Data>>> = Arc::default();
    let (to_protocol, protocol_input) = mpsc::unbounded();
    let output = GraphQLStream::from_message_stream(schema.clone(), protocol_input, protocol)
        .on_connection_init({
            let session = session.clone();
            move |payload| connection_init(service, payload, session)
        })
        .map(|msg| match msg {
            WsMessage::Text(text) => Message::Text(text.into()),
            WsMessage::Close(code, reason) => Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })),
        });
    futures::pin_mut!(output);
    let mut events = Events {
        schema,
        protocol,
        streams: StreamMap::new(),
    };
    loop {
        let first = tokio::select! {
            m = input.next() => match m {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    let message = ClientMessage::from_bytes(m.into_data());
                    match events.route(message, session.get()).await {
                        Route::Reply(reply) => reply,
                        Route::Handled => continue,
                        Route::Pass(message) => {
                            // The protocol stream lives as long as this loop.
                            let _ = to_protocol.unbounded_send(*message);
                            continue;
                        }
                    }
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            },
            m = output.next() => match m {
                Some(m) => m,
                None => return,
            },
            Some((_, m)) = events.streams.next(), if !events.streams.is_empty() => m,
        };
        if sink.feed(first).await.is_err() {
            return;
        }
        // Take what is ready without waiting, then write it all at once.
        loop {
            let next = match output.next().now_or_never() {
                Some(Some(m)) => m,
                Some(None) => {
                    let _ = sink.flush().await;
                    return;
                }
                None => match events.streams.next().now_or_never() {
                    Some(Some((_, m))) => m,
                    _ => break,
                },
            };
            if sink.feed(next).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// What to do with a client message.
enum Route {
    /// Handled here; send this reply.
    Reply(Message),
    /// Handled here; nothing to send.
    Handled,
    /// For the protocol stream.
    Pass(Box<serde_json::Result<ClientMessage>>),
}

/// A connection's event subscriptions that are rendered once for all subscribers
/// (`graphql::shared`), by subscription id.
struct Events {
    schema: GantrySchema,
    protocol: WebSocketProtocols,
    streams: StreamMap<String, BoxStream<'static, Message>>,
}

impl Events {
    async fn route(
        &mut self,
        message: serde_json::Result<ClientMessage>,
        session: Option<&Arc<Data>>,
    ) -> Route {
        match message {
            Ok(ClientMessage::Start { id, payload }) => {
                // Before `connection_init` has completed, the protocol stream answers.
                let Some(session) = session else {
                    return Route::Pass(Box::new(Ok(ClientMessage::Start { id, payload })));
                };
                let query = shared::Query::of(&payload);
                match shared::probe(&self.schema, session, &query).await {
                    Some(plan) => {
                        let stream = self.deliver(&id, session.clone(), query, plan);
                        // A new subscription under a live id replaces it, as in the
                        // protocol stream.
                        self.streams.insert(id, stream);
                        Route::Handled
                    }
                    None => Route::Pass(Box::new(Ok(ClientMessage::Start { id, payload }))),
                }
            }
            Ok(ClientMessage::Stop { id }) if self.streams.contains_key(&id) => {
                self.streams.remove(&id);
                Route::Reply(complete(&id))
            }
            other => Route::Pass(Box::new(other)),
        }
    }

    /// The messages of one subscription: a message per event, then `complete`.
    fn deliver(
        &self,
        id: &str,
        session: Arc<Data>,
        query: shared::Query,
        plan: shared::Plan,
    ) -> BoxStream<'static, Message> {
        let kind = match self.protocol {
            WebSocketProtocols::GraphQLWS => "next",
            WebSocketProtocols::SubscriptionsTransportWS => "data",
        };
        let head = format!(r#"{{"type":"{kind}","id":{},"payload":"#, json_string(id));
        let schema = self.schema.clone();
        let id = id.to_owned();
        let shared::Plan { source, key } = plan;
        async_stream::stream! {
            let Some(renders) = schema.data::<shared::Renders>() else { return };
            let messages = crate::metrics::global().subscription_messages.with(&[]);
            let mut items = source.items();
            while let Some(item) = items.next().await {
                let payload = renders.render(&schema, &session, &query, &key, item).await;
                let mut text = String::with_capacity(head.len() + payload.len() + 1);
                text.push_str(&head);
                text.push_str(&payload);
                text.push('}');
                messages.inc();
                yield Message::Text(text.into());
            }
            yield complete(&id);
        }
        .boxed()
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn complete(id: &str) -> Message {
    Message::Text(format!(r#"{{"type":"complete","id":{}}}"#, json_string(id)).into())
}

/// Authenticates the connection with the token of its `connection_init` payload.
async fn connection_init(
    service: Service,
    payload: serde_json::Value,
    session: Arc<OnceLock<Arc<Data>>>,
) -> async_graphql::Result<Data> {
    let header = payload
        .get("Authorization")
        .or_else(|| payload.get("authorization"))
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let auth = authenticate(&service, super::bearer(header.as_deref())).await;
    let mut data = Data::default();
    // Each token holds a bounded number of connections; the slot is freed when the
    // connection (and its data) is dropped.
    if let Ok(caller) = &auth.0 {
        let guard = service
            .open_ws_connection(caller)
            .map_err(crate::graphql::gql_error)?;
        data.insert(guard);
    }
    let mut shared = Data::default();
    shared.insert(auth.clone());
    let _ = session.set(Arc::new(shared));
    data.insert(auth);
    Ok(data)
}
