//! The GraphQL WebSocket connection (`graphql-transport-ws` and the legacy `graphql-ws`).
//!
//! The protocol itself is async-graphql's; what is ours is the write side. A commit of
//! many events makes every subscription of a connection produce a message per event at
//! once: those that are ready are written together and flushed once, so a burst costs
//! one system call (and one TCP segment, and one wake-up of the client) per connection,
//! not one per message.

use std::str::FromStr;

use async_graphql::Data;
use async_graphql::http::{WebSocket as GraphQLStream, WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::{HeaderMap, header};
use futures::{FutureExt, SinkExt, StreamExt, future};

use super::authenticate;
use crate::graphql::GantrySchema;
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
    let (mut sink, stream) = socket.split();
    let input = stream
        .take_while(|res| future::ready(res.is_ok()))
        .filter_map(|res| {
            future::ready(match res {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => Some(m.into_data()),
                _ => None,
            })
        });
    let output = GraphQLStream::new(schema, input, protocol)
        .on_connection_init(move |payload| connection_init(service, payload))
        .map(|msg| match msg {
            WsMessage::Text(text) => Message::Text(text.into()),
            WsMessage::Close(code, reason) => Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })),
        });
    futures::pin_mut!(output);
    while let Some(first) = output.next().await {
        if sink.feed(first).await.is_err() {
            return;
        }
        // Take what is ready without waiting, then write it all at once.
        let mut ended = false;
        while let Some(next) = output.next().now_or_never() {
            match next {
                Some(m) => {
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        if sink.flush().await.is_err() || ended {
            return;
        }
    }
}

/// Authenticates the connection with the token of its `connection_init` payload.
async fn connection_init(
    service: Service,
    payload: serde_json::Value,
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
    data.insert(auth);
    Ok(data)
}
