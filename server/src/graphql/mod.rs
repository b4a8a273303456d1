//! The GraphQL API: thin resolvers over `service`, Relay connections, error codes in
//! `extensions.code`, and subscriptions fed by the event bus.
//!
//! Resolvers translate between GraphQL and the service layer and nothing else: every
//! rule and every authorization check lives in `service`.

pub(crate) mod live;
mod metrics;
mod mutation;
mod query;
mod security;
pub(crate) mod shared;
mod subscription;
mod types;

use async_graphql::{Context, ErrorExtensions, Schema};

pub use mutation::Mutation;
pub use query::Query;
pub use subscription::Subscription;

use crate::service::{Caller, Service, ServiceError};

/// The schema type served at `/graphql`.
pub type GantrySchema = Schema<Query, Mutation, Subscription>;

/// Deepest query accepted: deep enough for every real client, far below abuse.
pub const MAX_DEPTH: usize = 24;
/// Largest computed complexity accepted.
pub const MAX_COMPLEXITY: usize = 20_000;

/// Builds the schema around a service.
pub fn build_schema(service: Option<Service>) -> GantrySchema {
    let mut builder = Schema::build(Query, Mutation, Subscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .extension(metrics::OperationMetrics)
        .data(shared::Renders::default());
    if let Some(service) = service {
        builder = builder.data(service);
    }
    builder.finish()
}

/// The SDL of the schema, as checked into `schema.graphql`.
pub fn sdl() -> String {
    build_schema(None).sdl()
}

/// How a request authenticated: set by the HTTP layer for each request or connection.
#[derive(Debug, Clone)]
pub struct Auth(pub Result<Caller, AuthFailure>);

/// Why a request carries no caller.
#[derive(Debug, Clone, Copy)]
pub enum AuthFailure {
    Missing,
    Invalid,
    Unavailable,
}

impl ErrorExtensions for ServiceError {
    fn extend(&self) -> async_graphql::Error {
        if let ServiceError::Internal(cause) = self {
            tracing::error!(cause = %cause, "internal error");
        }
        async_graphql::Error::new(self.to_string()).extend_with(|_, e| {
            e.set("code", self.code());
            match self {
                ServiceError::RateLimited { retry_after_secs } => e.set("retryAfter", *retry_after_secs),
                ServiceError::InvalidPipeline(errors) => {
                    let list: Vec<async_graphql::Value> = errors
                        .iter()
                        .map(|p| {
                            async_graphql::Value::from_json(serde_json::json!({
                                "line": p.line, "column": p.column, "message": p.message, "hint": p.hint,
                            }))
                            .unwrap_or_default()
                        })
                        .collect();
                    e.set("errors", list);
                }
                _ => {}
            }
        })
    }
}

/// A service error as a GraphQL error with its code, for the HTTP layer.
pub fn gql_error(err: ServiceError) -> async_graphql::Error {
    err.extend()
}

/// Converts a service error into a GraphQL error carrying its code.
pub(crate) fn gql(err: ServiceError) -> async_graphql::Error {
    err.extend()
}

pub(crate) fn service<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a Service> {
    ctx.data::<Service>()
}

/// The caller of this request, or UNAUTHENTICATED.
pub(crate) fn caller<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a Caller> {
    match ctx.data_opt::<Auth>().map(|a| &a.0) {
        Some(Ok(caller)) => Ok(caller),
        Some(Err(AuthFailure::Unavailable)) => {
            Err(gql(ServiceError::Unavailable("database".into())))
        }
        _ => Err(gql(ServiceError::Unauthenticated)),
    }
}
