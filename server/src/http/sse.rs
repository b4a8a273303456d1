//! `GET /events`: the event feed as Server-Sent Events, for integrations that want plain
//! HTTP. Query parameters `run`, `pipeline`, `tenant`, `state` filter like the `events`
//! subscription; `after` (a seq) or the `Last-Event-ID` header resumes. Each event's SSE
//! `id` is its `seq`, so a reconnecting `EventSource` resumes by itself. A stream of one
//! `run` replays it from its start and ends after its terminal event; a subscriber that
//! falls behind gets an `event: lagged` with the last `seq` and is closed, and reconnects.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;

use super::{AppState, authenticate, bearer};
use crate::graphql::live::{Feed, Next};
use crate::service::{EventFilter, ServiceError, event_json};

/// Query parameters of `GET /events`.
#[derive(Debug, Deserialize)]
pub struct EventsParams {
    run: Option<String>,
    pipeline: Option<String>,
    tenant: Option<String>,
    state: Option<String>,
    after: Option<String>,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

pub async fn events(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<EventsParams>,
) -> Response {
    let token = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let caller = match authenticate(&app.service, token).await.0 {
        Ok(c) => c,
        Err(_) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "bearer token required",
            );
        }
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(params.after.clone());
    let after = match resume.as_deref().map(str::parse::<i64>) {
        None => None,
        Some(Ok(n)) if n >= 0 => Some(n),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "after is a seq: a string of digits",
            );
        }
    };
    if let Some(run) = &params.run {
        match app.service.run(&caller, run).await {
            Ok(_) => {}
            Err(ServiceError::NotFound { .. }) => {
                return error(StatusCode::NOT_FOUND, "NOT_FOUND", "run not found");
            }
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.code(), &e.to_string()),
        }
    }
    let single_run = params.run.is_some();
    let filter = EventFilter {
        tenant: params.tenant,
        pipeline: params.pipeline,
        run: params.run,
        state: params.state.map(|s| s.to_ascii_lowercase()),
    };
    // One run's stream starts at its beginning, like `runEvents`.
    let after = after.or(single_run.then_some(0));
    let feed = Feed::new(app.service.clone(), caller, filter, after);
    Sse::new(stream(feed, single_run))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn stream(mut feed: Feed, single_run: bool) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    async_stream::stream! {
        loop {
            match feed.next().await {
                Ok(Next::Event(e)) => {
                    let end = single_run && e.ends_run();
                    yield Ok(SseEvent::default()
                        .id(e.seq.to_string())
                        .event("event")
                        .data(event_json(&e).to_string()));
                    if end { return; }
                }
                Ok(Next::Lagged) => {
                    crate::metrics::global().subscribers_lagged.with(&[]).inc();
                    yield Ok(SseEvent::default()
                        .event("lagged")
                        .data(serde_json::json!({ "lastSeq": feed.last.to_string() }).to_string()));
                    return;
                }
                Ok(Next::Closed) => return,
                Err(e) => {
                    yield Ok(SseEvent::default()
                        .event("error")
                        .data(serde_json::json!({ "code": e.code(), "message": e.to_string() }).to_string()));
                    return;
                }
            }
        }
    }
}
