//! Times GraphQL queries and mutations by operation for `GET /metrics`, and names the
//! operation in the request's tracing span.
//!
//! The label is the operation's type and its first root field (`query run`, `mutation
//! triggerRun`), checked against the schema so that clients cannot invent label values
//! (an unknown field is `invalid`). The time is that of execution, over HTTP and
//! WebSocket alike; a request refused by parsing or validation is not executed and not
//! timed. Subscriptions are long-lived streams and are not timed here.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery,
};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection,
};
use async_graphql::registry::Registry;
use async_graphql::{Response, ServerResult, Variables};

/// The extension factory registered on the schema.
pub struct OperationMetrics;

impl ExtensionFactory for OperationMetrics {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(OperationTimer::default())
    }
}

/// One request's `(operation name, label)` for each operation of its document.
#[derive(Default)]
struct OperationTimer {
    candidates: Mutex<Vec<(Option<String>, String)>>,
}

const INVALID: &str = "invalid";

fn root_type(registry: &Registry, ty: OperationType) -> Option<&str> {
    match ty {
        OperationType::Query => Some(registry.query_type.as_str()),
        OperationType::Mutation => registry.mutation_type.as_deref(),
        OperationType::Subscription => registry.subscription_type.as_deref(),
    }
}

fn label(registry: &Registry, op: &OperationDefinition) -> String {
    let field = op
        .selection_set
        .node
        .items
        .iter()
        .find_map(|s| match &s.node {
            Selection::Field(f) if f.node.name.node != "__typename" => {
                Some(f.node.name.node.as_str())
            }
            _ => None,
        });
    let known = field.filter(|name| {
        root_type(registry, op.ty)
            .and_then(|t| registry.types.get(t))
            .and_then(|t| t.field_by_name(name))
            .is_some()
    });
    match known {
        Some(name) => format!("{} {name}", op.ty),
        None => INVALID.to_owned(),
    }
}

fn candidates(registry: &Registry, doc: &ExecutableDocument) -> Vec<(Option<String>, String)> {
    match &doc.operations {
        DocumentOperations::Single(op) => vec![(None, label(registry, &op.node))],
        DocumentOperations::Multiple(ops) => ops
            .iter()
            .map(|(name, op)| (Some(name.to_string()), label(registry, &op.node)))
            .collect(),
    }
}

impl OperationTimer {
    fn candidates(&self) -> std::sync::MutexGuard<'_, Vec<(Option<String>, String)>> {
        self.candidates.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl Extension for OperationTimer {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        *self.candidates() = candidates(&ctx.schema_env.registry, &doc);
        Ok(doc)
    }

    /// Queries and mutations pass here whether they came over HTTP or a WebSocket.
    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let label = {
            let candidates = self.candidates();
            match operation_name {
                Some(name) => candidates.iter().find(|(n, _)| n.as_deref() == Some(name)),
                None => candidates.first(),
            }
            .map_or_else(|| INVALID.to_owned(), |(_, l)| l.clone())
        };
        tracing::Span::current().record("operation", label.as_str());
        let started = Instant::now();
        let response = next.run(ctx, operation_name).await;
        if !label.starts_with("subscription") {
            crate::metrics::global()
                .graphql_operations
                .with(&[&label])
                .observe(started.elapsed());
        }
        response
    }
}
