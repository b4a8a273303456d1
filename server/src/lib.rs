//! Gantry: a CI/CD orchestrator. A commit comes in; Gantry plans its pipeline file into a
//! DAG of tasks, schedules them fairly, dispatches each attempt to exactly one worker,
//! retries what fails, and streams every transition.
//!
//! Layout (dependencies point down the list, never up):
//! - `http`, `graphql` — the API surfaces; thin, they call `service`.
//! - `scheduler`, `dispatch`, `reconciler` — background services over `service`.
//! - `service` — use cases and authorization.
//! - `store` — persistence by compare-and-set; `events` — the bus and wake-ups;
//!   `artifacts` — the content-addressed blob store.
//! - `executor`, `agent` — running an attempt on a machine, locally or remotely.
//! - `pipeline` — the file format; `domain` — pure rules; `clock` — injectable time;
//!   `metrics` — the process's counters and histograms, recorded from every layer.
//! - `config` — the options of `gantry serve`: flags, environment and TOML file.
//! - `bench`, `simulate` — `gantry bench` workloads, and the trace replay over the
//!   fair-share decision of `domain::fairness` on a virtual clock.

pub mod agent;
pub mod app;
pub mod artifacts;
pub mod bench;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod events;
pub mod executor;
pub mod graphql;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod reconciler;
pub mod scheduler;
pub mod service;
pub mod simulate;
pub mod store;
pub mod webhooks;
