//! What the dashboard follows in the background while signed in: the fleet (queues and
//! workers, for the status bar and the load view) and the global event log (for live runs
//! and the arrival, completion and wait charts).
//!
//! Both are polled. The per-second [`Buckets`] are built here from the event log the
//! dashboard already follows; the server also serves them (`queueStats(queue, since)`,
//! per queue and tenant, and the `queueStats` subscription), so moving the load view onto
//! that API changes only where its series come from, not how it draws them.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::api::{self, Event, Fleet};
use crate::app::Session;
use crate::time;

/// How much history the load view keeps, in one-second buckets.
pub const WINDOW_SECS: usize = 300;
const FLEET_EVERY: Duration = Duration::from_secs(2);
const EVENTS_EVERY: Duration = Duration::from_millis(1500);

/// One second of load.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bucket {
    /// Start of the second, in ms since the epoch.
    pub at: f64,
    /// Attempts that entered a queue.
    pub arrivals: u32,
    /// Attempts that ended (any terminal state).
    pub completions: u32,
    /// Queue waits (queued → leased) that ended in this second, in ms.
    pub waits: Vec<f64>,
    /// Attempts waiting per queue, when the fleet was sampled in this second.
    pub depth: Option<HashMap<String, i64>>,
}

impl Bucket {
    pub fn wait_p99(&self) -> f64 {
        percentile(&self.waits, 0.99)
    }
}

pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The last [`WINDOW_SECS`] seconds, oldest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Buckets(pub VecDeque<Bucket>);

impl Buckets {
    fn at(&mut self, ms: f64) -> Option<&mut Bucket> {
        let second = (ms / 1000.0).floor() * 1000.0;
        let newest = self.0.back().map_or(second, |b| b.at);
        if second > newest || self.0.is_empty() {
            let mut at = if self.0.is_empty() {
                second
            } else {
                newest + 1000.0
            };
            while at <= second {
                self.0.push_back(Bucket {
                    at,
                    ..Bucket::default()
                });
                at += 1000.0;
            }
            while self.0.len() > WINDOW_SECS {
                self.0.pop_front();
            }
        }
        let oldest = self.0.front()?.at;
        if second < oldest {
            return None;
        }
        self.0.get_mut(((second - oldest) / 1000.0) as usize)
    }
}

/// Shared background state, provided as context by the shell.
#[derive(Clone, Copy)]
pub struct Stats {
    /// Whether the last poll reached the server; `None` before the first answer.
    pub connected: RwSignal<Option<bool>>,
    pub fleet: RwSignal<Option<Fleet>>,
    pub buckets: RwSignal<Buckets>,
    /// The run-level events of the last poll, for the live runs table.
    pub run_events: RwSignal<Vec<Event>>,
}

impl Stats {
    pub fn install(session: Session) -> Stats {
        let stats = Stats {
            connected: RwSignal::new(None),
            fleet: RwSignal::new(None),
            buckets: RwSignal::new(Buckets::default()),
            run_events: RwSignal::new(Vec::new()),
        };
        provide_context(stats);

        let poll_fleet = move || {
            let token = session.token();
            spawn_local(async move {
                match api::fleet(&token).await {
                    Ok(fleet) => {
                        let depth: HashMap<String, i64> = fleet
                            .queues
                            .iter()
                            .map(|q| (q.name.clone(), q.depth))
                            .collect();
                        stats.buckets.update(|b| {
                            if let Some(bucket) = b.at(time::now()) {
                                bucket.depth = Some(depth);
                            }
                        });
                        stats.fleet.set(Some(fleet));
                        stats.connected.set(Some(true));
                    }
                    Err(_) => stats.connected.set(Some(false)),
                }
            });
        };
        poll_fleet();
        if let Ok(handle) = set_interval_with_handle(poll_fleet, FLEET_EVERY) {
            on_cleanup(move || handle.clear());
        }

        // The event cursor and the queue times of attempts still waiting; plain local
        // state of the poller, never rendered.
        let cursor = StoredValue::new(None::<String>);
        let started = StoredValue::new(false);
        let busy = StoredValue::new(false);
        let queued_at = StoredValue::new(HashMap::<String, f64>::new());
        let poll_events = move || {
            if busy.get_value() {
                return;
            }
            busy.set_value(true);
            let token = session.token();
            spawn_local(async move {
                if !started.get_value() {
                    if let Ok(head) = api::event_head(&token).await {
                        cursor.set_value(head);
                        started.set_value(true);
                    }
                    busy.set_value(false);
                    return;
                }
                let mut runs = Vec::new();
                loop {
                    let after = cursor.get_value();
                    let Ok((events, more)) = api::events(&token, after.as_deref(), 1000).await
                    else {
                        break;
                    };
                    if let Some(last) = events.last() {
                        cursor.set_value(Some(last.seq.clone()));
                    }
                    stats.buckets.update(|b| {
                        queued_at.update_value(|queued| {
                            for event in &events {
                                record(b, queued, event);
                            }
                        })
                    });
                    runs.extend(events.into_iter().filter(|e| e.entity == "RUN"));
                    if !more {
                        break;
                    }
                }
                if !runs.is_empty() {
                    stats.run_events.set(runs);
                }
                busy.set_value(false);
            });
        };
        poll_events();
        if let Ok(handle) = set_interval_with_handle(poll_events, EVENTS_EVERY) {
            on_cleanup(move || handle.clear());
        }
        stats
    }
}

fn record(buckets: &mut Buckets, queued: &mut HashMap<String, f64>, event: &Event) {
    if event.entity != "ATTEMPT" {
        return;
    }
    let Some(at) = time::ms(Some(&event.at)) else {
        return;
    };
    match event.to.as_str() {
        "QUEUED" => {
            queued.insert(event.entity_id.clone(), at);
            if let Some(b) = buckets.at(at) {
                b.arrivals += 1;
            }
        }
        "LEASED" => {
            if let Some(since) = queued.remove(&event.entity_id)
                && let Some(b) = buckets.at(at)
            {
                b.waits.push(at - since);
            }
        }
        "SUCCEEDED" | "FAILED" | "TIMED_OUT" | "LOST" | "CANCELLED" => {
            queued.remove(&event.entity_id);
            if let Some(b) = buckets.at(at) {
                b.completions += 1;
            }
        }
        _ => {}
    }
}
