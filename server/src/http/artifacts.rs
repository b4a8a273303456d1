//! Artifact transfer over HTTP, streaming both ways so that no whole file is ever held in
//! memory: `PUT /artifacts` (a worker uploads for its leased attempt),
//! `GET /artifacts/{id}` (anyone of the tenant downloads), and
//! `GET /attempts/{id}/inputs` (a worker lists the artifacts of the tasks its task needs).
//!
//! Requests authenticate with the bearer token; the lease token travels in the
//! `X-Gantry-Lease-Token` header. Permissions are the service's business.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::json;

use super::{AppState, bearer};
use crate::service::{Caller, ServiceError};

pub use crate::artifacts::LEASE_HEADER;

/// The artifact routes, to merge into the main router.
pub fn routes() -> Router<AppState> {
    use axum::routing::{get, put};
    Router::new()
        .route("/artifacts", put(upload).post(upload))
        .route("/artifacts/{id}", get(download))
        .route("/attempts/{id}/inputs", get(inputs))
        .layer(axum::extract::DefaultBodyLimit::disable())
}

fn error(e: ServiceError) -> Response {
    let status = match &e {
        ServiceError::NotFound { .. } => StatusCode::NOT_FOUND,
        ServiceError::BadInput(_) => StatusCode::BAD_REQUEST,
        ServiceError::Conflict(_) | ServiceError::InvalidTransition(_) => StatusCode::CONFLICT,
        ServiceError::Unauthenticated => StatusCode::UNAUTHORIZED,
        ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
        ServiceError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = match &e {
        ServiceError::Internal(cause) => {
            tracing::error!(cause = %cause, "artifact request failed");
            "internal error".to_owned()
        }
        other => other.to_string(),
    };
    (
        status,
        Json(json!({ "error": { "code": e.code(), "message": message } })),
    )
        .into_response()
}

async fn caller(app: &AppState, headers: &HeaderMap) -> Result<Caller, ServiceError> {
    let token = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    if token.is_none() {
        return Err(ServiceError::Unauthenticated);
    }
    app.service.authenticate(token).await.map_err(|e| match e {
        ServiceError::Internal(_) | ServiceError::Unavailable(_) => e,
        _ => ServiceError::Unauthenticated,
    })
}

fn lease_token(headers: &HeaderMap) -> Result<String, ServiceError> {
    headers
        .get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| ServiceError::BadInput(format!("the {LEASE_HEADER} header is required")))
}

#[derive(Deserialize)]
struct UploadQuery {
    attempt: String,
    name: String,
    sha256: Option<String>,
}

async fn upload(
    State(app): State<AppState>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let go = async {
        let caller = caller(&app, &headers).await?;
        let token = lease_token(&headers)?;
        let spooled = app.service.spool_upload(body.into_data_stream()).await?;
        let a = app
            .service
            .upload_artifact(
                &caller,
                &q.attempt,
                &token,
                &q.name,
                q.sha256.as_deref(),
                spooled,
            )
            .await?;
        Ok::<_, ServiceError>(
            (
                StatusCode::CREATED,
                Json(json!({ "id": a.id, "name": a.name, "size": a.size, "sha256": a.digest })),
            )
                .into_response(),
        )
    };
    go.await.unwrap_or_else(error)
}

async fn download(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let go = async {
        let caller = caller(&app, &headers).await?;
        let (a, stream) = app.service.open_artifact(&caller, &id).await?;
        let file_name = a
            .name
            .rsplit('/')
            .next()
            .unwrap_or("artifact")
            .replace('"', "");
        let mut res = Response::new(Body::from_stream(stream.map_err(std::io::Error::other)));
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(a.size as u64));
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
        if let Ok(v) = HeaderValue::from_str(&a.digest) {
            h.insert("x-gantry-sha256", v);
        }
        Ok::<_, ServiceError>(res)
    };
    go.await.unwrap_or_else(error)
}

async fn inputs(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let go = async {
        let caller = caller(&app, &headers).await?;
        let token = lease_token(&headers)?;
        let list = app.service.input_artifacts(&caller, &id, &token).await?;
        Ok::<_, ServiceError>(
            Json(
                list.into_iter()
                    .map(|(task, a)| {
                        json!({ "id": a.id, "task": task, "name": a.name, "size": a.size, "sha256": a.digest })
                    })
                    .collect::<Vec<_>>(),
            )
            .into_response(),
        )
    };
    go.await.unwrap_or_else(error)
}
