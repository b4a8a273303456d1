//! The HTTP surface: `/graphql` (POST and WebSocket), `/graphiql`, `/healthz`, `/readyz`,
//! `/metrics`, artifact upload and download (`/artifacts`), and the dashboard's static
//! files at `/`.
//!
//! Handlers authenticate the request and hand it to GraphQL or the service; they hold no
//! rules of their own. Every request runs in a `request` tracing span (method, route,
//! request id, and the GraphQL operation) and is timed into
//! `gantry_http_request_duration_seconds`.

pub mod artifacts;

use std::path::PathBuf;
use std::time::Instant;

use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, GraphiQLSource};
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tower_http::services::{ServeDir, ServeFile};
use tracing::Instrument;

mod security;
mod sse;
mod ws;

use crate::graphql::{Auth, AuthFailure, GantrySchema};
use crate::service::{Service, ServiceError};

/// Largest request body accepted (a pipeline file is at most 1 MiB).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Initial read and write buffer of a WebSocket connection.
const WS_BUFFER_BYTES: usize = 4 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub schema: GantrySchema,
    pub service: Service,
}

/// Builds the router. `web_dir` holds the built dashboard (`index.html` and the WASM).
pub fn router(state: AppState, web_dir: PathBuf) -> Router {
    let index = web_dir.join("index.html");
    let web = ServeDir::new(&web_dir).fallback(ServeFile::new(index));
    Router::new()
        .route("/graphql", get(graphql_ws).post(graphql_post))
        .route("/graphiql", get(graphiql))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/webhooks/github", axum::routing::post(security::github))
        .route("/webhooks/gitlab", axum::routing::post(security::gitlab))
        .route("/events", get(sse::events))
        .fallback_service(web)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(security::limit_body))
        // Artifacts stream bodies of any size to the blob store (never whole in memory),
        // so they are merged after the request-size limit that guards everything else.
        .merge(artifacts::routes())
        .layer(axum::middleware::from_fn(observe))
        .with_state(state)
}

/// The header carrying a request's id: taken from the client (or a proxy) when present,
/// made up otherwise, and sent back on the response.
const REQUEST_ID: &str = "x-request-id";

/// Runs the request in its span and times it by route (the router's pattern, never the
/// concrete path, so ids do not become label values).
async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("fallback", MatchedPath::as_str)
        .to_owned();
    let method = req.method().clone();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| uuid::Uuid::now_v7().simple().to_string(), str::to_owned);
    let span = tracing::info_span!(
        "request",
        method = %method,
        route = %route,
        request_id = %request_id,
        operation = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status();
    span.record("status", status.as_u16());
    crate::metrics::global()
        .http_requests
        .with(&[&route, method.as_str(), status.as_str()])
        .observe(started.elapsed());
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

fn bearer(value: Option<&str>) -> Option<&str> {
    let v = value?.trim();
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

async fn authenticate(service: &Service, token: Option<&str>) -> Auth {
    if token.is_none() {
        return Auth(Err(AuthFailure::Missing));
    }
    Auth(match service.authenticate(token).await {
        Ok(caller) => Ok(caller),
        Err(ServiceError::Unavailable(_)) => Err(AuthFailure::Unavailable),
        Err(ServiceError::Internal(cause)) => {
            tracing::error!(cause = %cause, "authentication failed");
            Err(AuthFailure::Unavailable)
        }
        Err(_) => Err(AuthFailure::Invalid),
    })
}

async fn graphql_post(
    State(app): State<AppState>,
    headers: HeaderMap,
    req: GraphQLRequest,
) -> GraphQLResponse {
    let token = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let auth = authenticate(&app.service, token).await;
    let mut res = app.schema.execute(req.into_inner().data(auth)).await;
    security::tag_errors(&mut res);
    res.into()
}

async fn graphql_ws(
    State(app): State<AppState>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(protocol) = ws::protocol(&headers) else {
        return (
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Protocol must name graphql-transport-ws or graphql-ws",
        )
            .into_response();
    };
    let max_message = app.service.config().max_ws_message_bytes;
    // Small buffers: most connections are idle subscriptions, and the 128 KiB default
    // read buffer would dominate their memory; buffers still grow for large messages.
    upgrade
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .read_buffer_size(WS_BUFFER_BYTES)
        .write_buffer_size(WS_BUFFER_BYTES)
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| {
            ws::serve(socket, app.schema.clone(), app.service.clone(), protocol)
        })
}

async fn graphiql() -> impl IntoResponse {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql")
            .finish(),
    )
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Prometheus scrape endpoint; like `/healthz` it needs no token (it names queues and
/// states, never tenants, pipelines or runs).
async fn metrics(State(app): State<AppState>) -> Response {
    match app.service.metrics_text().await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics unavailable");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

async fn readyz(State(app): State<AppState>) -> Response {
    match app.service.store().ready().await {
        Ok(true) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "migrations pending" })),
        )
            .into_response(),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "database unreachable", "error": err.to_string() })),
        )
            .into_response(),
    }
}
