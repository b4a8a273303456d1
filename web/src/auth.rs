//! Where the API token lives in the browser.
//!
//! The token is kept in `localStorage` under [`TOKEN_KEY`] so it survives
//! reloads. A link of the form `…/#token=XYZ` (printed by the server for the
//! first sign-in) hands a token over; it is moved into storage and scrubbed
//! from the address bar so it does not linger in history or get copied along
//! with the URL.

use wasm_bindgen::JsValue;
use web_sys::Storage;

pub const TOKEN_KEY: &str = "gantry.token";

/// Moves a `#token=…` fragment into storage, then returns the stored token.
pub fn init_token() -> Option<String> {
    if let Some(token) = take_fragment_token() {
        store_token(&token);
    }
    stored_token()
}

pub fn stored_token() -> Option<String> {
    storage()?
        .get_item(TOKEN_KEY)
        .ok()
        .flatten()
        .filter(|token| !token.is_empty())
}

/// Storage can be unavailable (private browsing, disabled cookies); the token
/// then only lives for this page view, which is still usable.
pub fn store_token(token: &str) {
    if let Some(storage) = storage() {
        let _ = storage.set_item(TOKEN_KEY, token);
    }
}

pub fn clear_token() {
    if let Some(storage) = storage() {
        let _ = storage.remove_item(TOKEN_KEY);
    }
}

fn storage() -> Option<Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

fn take_fragment_token() -> Option<String> {
    let window = web_sys::window()?;
    let location = window.location();
    let hash = location.hash().ok()?;
    let token = parse_fragment_token(&hash)?;

    // Keep path and query so a deep link still lands where it pointed.
    let path = location.pathname().unwrap_or_default();
    let search = location.search().unwrap_or_default();
    if let Ok(history) = window.history() {
        // Best effort: if the browser refuses, the token still works and only
        // stays visible in the address bar.
        let _ =
            history.replace_state_with_url(&JsValue::NULL, "", Some(&format!("{path}{search}")));
    }
    Some(token)
}

/// Extracts `token` from a fragment such as `#token=abc` or `#a=1&token=abc`.
fn parse_fragment_token(hash: &str) -> Option<String> {
    hash.trim_start_matches('#')
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(|raw| {
            js_sys::decode_uri_component(raw)
                .ok()
                .and_then(|decoded| decoded.as_string())
                .unwrap_or_else(|| raw.to_owned())
        })
        .filter(|token| !token.is_empty())
}
