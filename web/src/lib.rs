//! Gantry's web dashboard, a client-side Leptos app compiled to WebAssembly.
//!
//! `scripts/build-web` turns this crate into `web/dist/`, which `gantry serve`
//! hosts next to the GraphQL API; the page talks to the API on the same origin,
//! over HTTP for queries and mutations and over WebSocket for subscriptions.
//!
//! Layout: `api` (every request, and `api::live` for subscriptions), `auth` (the
//! token), `route` (deep links), `app` (the shell), `stats` (background polling),
//! and one module per view: `runs`, `run` (with `dag`, `timeline` and the task
//! panel), `logs`, `load`. The DAG geometry is the host-testable `gantry-layout`.

mod api;
mod app;
mod auth;
mod dag;
mod load;
mod logs;
mod route;
mod run;
mod runs;
mod stats;
mod time;
mod timeline;

use wasm_bindgen::prelude::wasm_bindgen;

/// Runs as soon as the generated JS glue has instantiated the module.
#[wasm_bindgen(start)]
pub fn start() {
    // Panics are bugs; without the hook they surface as an opaque
    // "unreachable" trap instead of the panic message.
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::App);
}
