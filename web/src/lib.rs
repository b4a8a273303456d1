//! Gantry's web dashboard, a client-side Leptos app compiled to WebAssembly.
//!
//! `scripts/build-web` turns this crate into `web/dist/`, which `gantry serve`
//! hosts next to the GraphQL API; the page talks to the API on the same origin.

mod api;
mod auth;
mod home;

use wasm_bindgen::prelude::wasm_bindgen;

/// Runs as soon as the generated JS glue has instantiated the module.
#[wasm_bindgen(start)]
pub fn start() {
    // Panics are bugs; without the hook they surface as an opaque
    // "unreachable" trap instead of the panic message.
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(home::HomePage);
}
