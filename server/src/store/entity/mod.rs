//! sea-orm entities, one per table. They mirror `gantry-migrations` exactly; the
//! repository functions in `store` are the only code that uses them.

pub mod api_token;
pub mod artifact;
pub mod attempt;
pub mod cache_entry;
pub mod cache_flight;
pub mod cache_waiter;
pub mod event;
pub mod lease;
pub mod log_chunk;
pub mod pipeline;
pub mod run;
pub mod schedule_tick;
pub mod secret;
pub mod status_delivery;
pub mod task;
pub mod tenant;
pub mod webhook_delivery;
pub mod worker;
