//! Subscriptions: a run's events and filtered events of every run (replayed from `after`,
//! then live), an attempt's log, and a queue's depth.
//!
//! Replay and live are joined without a gap or a duplicate (see `shared::Source`); over
//! WebSocket, event subscriptions are rendered once for all their subscribers (see
//! `shared`).

use async_graphql::{Context, ID, Subscription};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::shared::{self, Source};
use super::types::{Event, LogChunk, parse_seq};
use super::{caller, gql, service};
use crate::domain::Entity;
use crate::service::ServiceError;

#[derive(Default)]
pub struct Subscription;

fn live_chunk(l: &crate::events::LogRecord) -> LogChunk {
    LogChunk(crate::store::entity::log_chunk::Model {
        id: 0,
        attempt_id: l.attempt_id.clone(),
        byte_offset: l.offset,
        stream: l.stream.clone(),
        data: l.data.clone(),
        created_at: 0,
    })
}

#[Subscription]
impl Subscription {
    /// Every event of a run after `after` (a seq): first those already in the log, then
    /// live ones. Ends after the run's terminal event.
    async fn run_events(
        &self,
        ctx: &Context<'_>,
        run: ID,
        after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Event>> + use<>> {
        let s = service(ctx)?;
        let c = caller(ctx)?;
        shared::events(ctx, c, async {
            let after = parse_seq(after.as_deref())?;
            s.run(c, &run).await.map_err(gql)?;
            Ok(Source::Run {
                service: s.clone(),
                run: run.0,
                after,
            })
        })
        .await
    }

    /// An attempt's log from byte `fromOffset`: what was written before, then live output.
    /// Ends when the attempt has finished and its log is fully sent.
    async fn attempt_log(
        &self,
        ctx: &Context<'_>,
        attempt: ID,
        #[graphql(default)] from_offset: i64,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<LogChunk>>> {
        let s = service(ctx)?.clone();
        let c = caller(ctx)?.clone();
        s.attempt(&c, &attempt).await.map_err(gql)?;
        let attempt_id = attempt.0;
        let mut live = s.bus().subscribe_logs();
        let mut events = s.bus().subscribe();
        Ok(async_stream::stream! {
            let mut next = from_offset.max(0);
            let stored = match s.log_of_attempt(&c, &attempt_id, 0).await {
                Ok(chunks) => chunks,
                Err(e) => { yield Err(gql(e)); return; }
            };
            for chunk in stored {
                if chunk.byte_offset + chunk.data.len() as i64 <= next {
                    continue;
                }
                next = chunk.byte_offset + chunk.data.len() as i64;
                yield Ok(LogChunk(chunk));
            }
            let finished = |s: &str| s.parse::<crate::domain::AttemptState>().map(|s| s.is_terminal()).unwrap_or(false);
            match s.attempt(&c, &attempt_id).await {
                Ok(a) if finished(&a.state) && a.log_bytes <= next => return,
                Ok(_) => {}
                Err(e) => { yield Err(gql(e)); return; }
            }
            loop {
                tokio::select! {
                    l = live.recv() => match l {
                        Ok(l) if l.attempt_id == attempt_id && l.offset >= next => {
                            next = l.offset + l.data.len() as i64;
                            yield Ok(live_chunk(&l));
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => {
                            crate::metrics::global().subscribers_lagged.with(&[]).inc();
                            yield Err(gql(ServiceError::Conflict(format!(
                                "subscriber fell behind; resume with fromOffset: {next}"
                            ))));
                            return;
                        }
                        Err(RecvError::Closed) => return,
                    },
                    e = events.recv() => match e {
                        // The completion commits the last output before its events.
                        Ok(e) if e.attempt_id.as_deref() == Some(attempt_id.as_str())
                            && e.entity == Entity::Attempt && finished(&e.to) => {
                            while let Ok(l) = live.try_recv() {
                                if l.attempt_id == attempt_id && l.offset >= next {
                                    next = l.offset + l.data.len() as i64;
                                    yield Ok(live_chunk(&l));
                                }
                            }
                            // Output whose live copy was lost (another node's commit that
                            // Redis dropped) is in the log: send the rest from there.
                            if let Ok(rest) = s.log_of_attempt(&c, &attempt_id, 0).await {
                                for chunk in rest {
                                    if chunk.byte_offset + chunk.data.len() as i64 <= next {
                                        continue;
                                    }
                                    next = chunk.byte_offset + chunk.data.len() as i64;
                                    yield Ok(LogChunk(chunk));
                                }
                            }
                            return;
                        }
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        })
    }

    /// Events of every run the caller sees, filtered (tenant, pipeline, run, entered
    /// state): after `after` (a seq) first those in the log, then live ones; without
    /// `after`, live ones from now. Never ends; a subscriber that falls behind gets a
    /// `LAGGED` error carrying `lastSeq` and resumes with `after`.
    async fn events(
        &self,
        ctx: &Context<'_>,
        filter: Option<super::query::EventFilterInput>,
        after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Event>> + use<>> {
        let s = service(ctx)?;
        let c = caller(ctx)?;
        shared::events(ctx, c, async {
            c.require(crate::service::Scope::Read).map_err(gql)?;
            let after = match after {
                Some(a) => Some(parse_seq(Some(&a))?),
                None => None,
            };
            Ok(Source::Events {
                service: s.clone(),
                caller: c.clone(),
                filter: filter.unwrap_or_default().into(),
                after,
            })
        })
        .await
    }

    /// A queue's load, one second at a time: the last finished second at once, then each
    /// second once it has ended (and half a second more, for decisions still committing),
    /// with the depth at that moment.
    async fn queue_stats(
        &self,
        ctx: &Context<'_>,
        queue: String,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<super::query::QueueStats>>>
    {
        const SECOND: i64 = 1_000;
        const GRACE_MS: i64 = 500;
        let s = service(ctx)?.clone();
        let c = caller(ctx)?.clone();
        c.require(crate::service::Scope::Read).map_err(gql)?;
        Ok(async_stream::stream! {
            let mut until = (s.now_ms() - GRACE_MS).div_euclid(SECOND) * SECOND;
            loop {
                let from = until - SECOND;
                let stats = match (
                    s.queue_depth(&c, &queue).await,
                    s.queue_load(&c, &queue, from, until).await,
                ) {
                    (Ok(depth), Ok(load)) => super::query::QueueStats::new(depth, from, load),
                    (Err(e), _) | (_, Err(e)) => { yield Err(gql(e)); return; }
                };
                yield Ok(stats);
                until += SECOND;
                let wait = until + GRACE_MS - s.now_ms();
                if wait > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(wait as u64)).await;
                }
            }
        })
    }
}
