//! Pieces shared by the live surfaces (subscriptions and the SSE stream): the error a
//! subscriber that fell behind receives, and the filtered live feed of events.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::ErrorExtensions;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::domain::EventRecord;
use crate::service::{Caller, EventFilter, Service, ServiceError, event_matches};

/// The error of a subscriber that fell behind the live buffer: code `LAGGED`, and the last
/// `seq` it received in `extensions.lastSeq`, to resume with `after`.
pub fn lagged(last: i64) -> async_graphql::Error {
    crate::metrics::global().subscribers_lagged.with(&[]).inc();
    async_graphql::Error::new(format!(
        "subscriber fell behind; resume with after: \"{last}\""
    ))
    .extend_with(|_, e| {
        e.set("code", "LAGGED");
        e.set("lastSeq", last.to_string());
    })
}

/// What the next step of a filtered feed is.
pub enum Next {
    Event(Arc<EventRecord>),
    Lagged,
    Closed,
}

/// A subscriber's view of the event log: replay after a `seq`, then live, without gap or
/// duplicate, filtered by what the caller may see and by the filter.
pub struct Feed {
    service: Service,
    caller: Caller,
    filter: EventFilter,
    live: broadcast::Receiver<Arc<EventRecord>>,
    /// The last `seq` handed out (or skipped as filtered).
    pub last: i64,
    replay: std::collections::VecDeque<EventRecord>,
    replay_done: bool,
    /// Run → pipeline, for the pipeline filter.
    pipelines: HashMap<String, Option<String>>,
}

impl Feed {
    /// Subscribes to the live feed first, so nothing committed during the replay is
    /// missed. `after: None` starts at what this node delivered last (live only).
    pub fn new(service: Service, caller: Caller, filter: EventFilter, after: Option<i64>) -> Feed {
        let live = service.bus().subscribe();
        let (last, replay_done) = match after {
            Some(a) => (a, false),
            None => (service.bus().delivered(), true),
        };
        Feed {
            service,
            caller,
            filter,
            live,
            last,
            replay: Default::default(),
            replay_done,
            pipelines: HashMap::new(),
        }
    }

    /// The next matching event.
    pub async fn next(&mut self) -> Result<Next, ServiceError> {
        loop {
            if let Some(e) = self.replay.pop_front() {
                self.last = e.seq;
                return Ok(Next::Event(Arc::new(e)));
            }
            if !self.replay_done {
                let (rows, more) = self
                    .service
                    .events(&self.caller, self.filter.clone(), self.last, Some(500))
                    .await?;
                self.replay_done = !more;
                if rows.is_empty() {
                    self.replay_done = true;
                }
                self.replay.extend(rows);
                continue;
            }
            match self.live.recv().await {
                Ok(e) if e.seq > self.last => {
                    if !self.matches(&e).await? {
                        continue;
                    }
                    self.last = e.seq;
                    return Ok(Next::Event(e));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => return Ok(Next::Lagged),
                Err(RecvError::Closed) => return Ok(Next::Closed),
            }
        }
    }

    async fn matches(&mut self, e: &EventRecord) -> Result<bool, ServiceError> {
        if !event_matches(&self.caller, &self.filter, e) {
            return Ok(false);
        }
        let Some(want) = &self.filter.pipeline else {
            return Ok(true);
        };
        if !self.pipelines.contains_key(&e.run_id) {
            let p = self
                .service
                .pipeline_of_run(&self.caller, &e.run_id)
                .await?;
            if self.pipelines.len() > 10_000 {
                self.pipelines.clear();
            }
            self.pipelines.insert(e.run_id.clone(), p);
        }
        Ok(self.pipelines.get(&e.run_id).and_then(|p| p.as_ref()) == Some(want))
    }
}

/// One outbound status webhook delivery of a pipeline.
pub struct WebhookDelivery(pub crate::store::entity::status_delivery::Model);

#[async_graphql::Object]
impl WebhookDelivery {
    async fn id(&self) -> async_graphql::ID {
        async_graphql::ID(self.0.id.clone())
    }
    async fn url(&self) -> &str {
        &self.0.url
    }
    /// `gantry` or `github-status`.
    async fn format(&self) -> &str {
        &self.0.format
    }
    async fn run(&self) -> async_graphql::ID {
        async_graphql::ID(self.0.run_id.clone())
    }
    /// The event delivered (a seq).
    async fn seq(&self) -> String {
        self.0.event_seq.to_string()
    }
    /// `PENDING` (tries left), `DELIVERED` or `FAILED` (gave up).
    async fn state(&self) -> String {
        self.0.state.to_ascii_uppercase()
    }
    /// Tries made so far.
    async fn attempts(&self) -> i32 {
        self.0.attempts
    }
    /// HTTP status of the last try, when the receiver answered.
    async fn response_status(&self) -> Option<i32> {
        self.0.response_status
    }
    /// Why the last try failed.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// The JSON body sent.
    async fn payload(&self) -> &str {
        &self.0.payload
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(self.0.created_at).unwrap_or_default()
    }
    async fn updated_at(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(self.0.updated_at).unwrap_or_default()
    }
}
