//! HTTP pieces of security: the request body limit with a clear refusal, and the
//! webhook endpoints (`POST /webhooks/github`, `POST /webhooks/gitlab`).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppState, MAX_BODY_BYTES};
use crate::service::{ServiceError, WebhookOutcome, WebhookRequest};
use crate::webhooks::Provider;

fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({
            "errors": [{ "message": message, "extensions": { "code": code } }]
        })),
    )
        .into_response()
}

/// Refuses bodies over [`MAX_BODY_BYTES`] with 413 and `PAYLOAD_TOO_LARGE`: at once when
/// `Content-Length` says so, and by cutting a streamed body off at the limit otherwise.
pub async fn limit_body(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            &format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        );
    }
    let (parts, body) = req.into_parts();
    let limited = Body::new(http_body_util::Limited::new(body, MAX_BODY_BYTES));
    next.run(Request::from_parts(parts, limited)).await
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn webhook_response(result: Result<WebhookOutcome, ServiceError>) -> Response {
    match result {
        Ok(WebhookOutcome::Triggered(runs)) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "status": "triggered", "runs": runs })),
        )
            .into_response(),
        Ok(WebhookOutcome::Duplicate(runs)) => (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "duplicate", "runs": runs })),
        )
            .into_response(),
        Ok(WebhookOutcome::Ignored(reason)) => (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ignored", "reason": reason })),
        )
            .into_response(),
        Err(e) => {
            let status = match &e {
                ServiceError::Unauthenticated => StatusCode::UNAUTHORIZED,
                ServiceError::BadInput(_) | ServiceError::InvalidPipeline(_) => {
                    StatusCode::BAD_REQUEST
                }
                ServiceError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                ServiceError::Unavailable(_) | ServiceError::Overloaded(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                ServiceError::Internal(cause) => {
                    tracing::error!(cause = %cause, "webhook failed");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            refusal(status, e.code(), &e.to_string())
        }
    }
}

pub async fn github(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let req = WebhookRequest {
        provider: Provider::Github,
        event: header_text(&headers, "x-github-event").unwrap_or_default(),
        delivery: header_text(&headers, "x-github-delivery"),
        signature: header_text(&headers, "x-hub-signature-256"),
        body: body.to_vec(),
    };
    webhook_response(app.service.receive_webhook(req).await)
}

pub async fn gitlab(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let req = WebhookRequest {
        provider: Provider::Gitlab,
        event: header_text(&headers, "x-gitlab-event").unwrap_or_default(),
        delivery: header_text(&headers, "x-gitlab-event-uuid")
            .or_else(|| header_text(&headers, "idempotency-key")),
        signature: header_text(&headers, "x-gitlab-token"),
        body: body.to_vec(),
    };
    webhook_response(app.service.receive_webhook(req).await)
}

/// Gives every error without a code one: the refusals of the query validator (depth,
/// complexity, syntax) come from the GraphQL library without `extensions.code`.
pub fn tag_errors(res: &mut async_graphql::Response) {
    for e in &mut res.errors {
        let has_code = e
            .extensions
            .as_ref()
            .is_some_and(|x| x.get("code").is_some());
        if has_code {
            continue;
        }
        let code = if e.message.contains("nested too deep") {
            "QUERY_TOO_DEEP"
        } else if e.message.contains("too complex") {
            "QUERY_TOO_COMPLEX"
        } else {
            "GRAPHQL_VALIDATION_FAILED"
        };
        e.extensions
            .get_or_insert_with(Default::default)
            .set("code", code);
    }
}
