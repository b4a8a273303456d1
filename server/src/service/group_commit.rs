//! Group commit of the worker calls that run hottest: leases and completions arriving at
//! about the same time share one write transaction.
//!
//! Each lease and each completion is a write transaction that takes the database's write
//! lock (SQLite) or the event-order lock (PostgreSQL), so under load workers queue for it
//! one by one. Here one committer per kind of call and node takes whatever calls are
//! waiting, applies each exactly as it would be applied alone, and commits once. When
//! anything in a batch fails the batch is rolled back and its calls are applied one by
//! one, so that one refused call (a stale lease token) never costs the others theirs.

use std::sync::{Arc, Weak};

use sea_orm::DatabaseTransaction;
use tokio::sync::{mpsc, oneshot};

use super::progress::Effects;
use super::{Inner, Service, ServiceError};

/// Most calls committed in one transaction.
const MAX_BATCH: usize = 128;

/// A call that can share a write transaction with others of its kind.
#[async_trait::async_trait]
pub(crate) trait GroupOp: Send + Sync + 'static {
    type Output: Send + 'static;

    /// Applies the call inside `tx`, adding what it causes to `fx`. Must not commit.
    async fn apply(
        &self,
        service: &Service,
        tx: &DatabaseTransaction,
        now: i64,
        fx: &mut Effects,
    ) -> Result<Self::Output, ServiceError>;
}

struct Request<Op: GroupOp> {
    op: Op,
    reply: oneshot::Sender<Result<Op::Output, ServiceError>>,
}

/// The queue in front of a node's committer for one kind of call, started on first use.
pub(crate) struct GroupCommit<Op: GroupOp> {
    queue: std::sync::OnceLock<mpsc::UnboundedSender<Request<Op>>>,
}

impl<Op: GroupOp> Default for GroupCommit<Op> {
    fn default() -> Self {
        GroupCommit {
            queue: std::sync::OnceLock::new(),
        }
    }
}

impl<Op: GroupOp> GroupCommit<Op> {
    /// Applies `op` in the next group commit and returns its output once it is durable.
    pub(crate) async fn submit(
        &self,
        service: &Service,
        op: Op,
    ) -> Result<Op::Output, ServiceError> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(committer(Arc::downgrade(&service.inner), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        queue
            .send(Request { op, reply })
            .map_err(|_| ServiceError::Unavailable("the node is shutting down".into()))?;
        answer
            .await
            .map_err(|_| ServiceError::Internal("group committer stopped".into()))?
    }
}

/// Takes what is waiting, up to [`MAX_BATCH`], and commits it; stops with its service.
async fn committer<Op: GroupOp>(
    service: Weak<Inner>,
    mut queue: mpsc::UnboundedReceiver<Request<Op>>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let Some(inner) = service.upgrade() else {
            return;
        };
        let service = Service { inner };
        // A panic in one batch must not stop these calls for the node's lifetime; the
        // callers of that batch see their reply dropped.
        if let Err(e) = tokio::spawn(async move { commit_batch(&service, batch).await }).await {
            tracing::error!(error = %e, "a group commit panicked");
        }
    }
}

async fn commit_batch<Op: GroupOp>(service: &Service, batch: Vec<Request<Op>>) {
    if batch.len() > 1 {
        match apply_together(service, &batch).await {
            Ok(outputs) => {
                for (request, output) in batch.into_iter().zip(outputs) {
                    let _ = request.reply.send(Ok(output));
                }
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, size = batch.len(), "group commit rolled back; applying one by one");
            }
        }
    }
    for request in batch {
        let result = apply_alone(service, &request.op).await;
        let _ = request.reply.send(result);
    }
}

async fn apply_together<Op: GroupOp>(
    service: &Service,
    batch: &[Request<Op>],
) -> Result<Vec<Op::Output>, ServiceError> {
    let wtx = service.store().write().await?;
    let now = service.now_ms();
    let mut fx = Effects::default();
    let mut outputs = Vec::with_capacity(batch.len());
    for request in batch {
        outputs.push(request.op.apply(service, &wtx.tx, now, &mut fx).await?);
    }
    service.commit(wtx, now, fx).await?;
    Ok(outputs)
}

async fn apply_alone<Op: GroupOp>(service: &Service, op: &Op) -> Result<Op::Output, ServiceError> {
    let wtx = service.store().write().await?;
    let now = service.now_ms();
    let mut fx = Effects::default();
    let output = op.apply(service, &wtx.tx, now, &mut fx).await?;
    service.commit(wtx, now, fx).await?;
    Ok(output)
}
