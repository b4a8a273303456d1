//! In-memory bookkeeping of one node for limits that need no durability: open WebSocket
//! connections per token, and the throttle of `lastUsedAt` writes (one per token per
//! minute, so authentication does not turn every read into a write).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Caller, Service, ServiceError};

/// How often a token's `lastUsedAt` is written at most.
pub(crate) const LAST_USED_EVERY_MS: i64 = 60_000;

#[derive(Default)]
pub(crate) struct Limits {
    ws: Arc<Mutex<HashMap<String, usize>>>,
    last_used: Mutex<HashMap<String, i64>>,
}

/// Holds one WebSocket connection slot of a token; dropping it frees the slot.
pub struct WsConnectionGuard {
    key: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for WsConnectionGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

fn caller_key(caller: &Caller) -> String {
    match &caller.token_id {
        Some(t) => t.to_string(),
        None => format!("system:{}", caller.tenant_id),
    }
}

impl Service {
    /// Takes a WebSocket connection slot for the caller's token, or refuses with
    /// LIMIT_EXCEEDED when it holds `max_ws_connections_per_token` already.
    pub fn open_ws_connection(&self, caller: &Caller) -> Result<WsConnectionGuard, ServiceError> {
        let limit = self.config().max_ws_connections_per_token;
        let key = caller_key(caller);
        let counts = self.inner.limits.ws.clone();
        {
            let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(key.clone()).or_insert(0);
            if *n >= limit {
                return Err(ServiceError::LimitExceeded(format!(
                    "this token has {limit} WebSocket connections open already"
                )));
            }
            *n += 1;
        }
        Ok(WsConnectionGuard { key, counts })
    }

    /// Whether the token's `lastUsedAt` should be written now; remembers that it was.
    pub(crate) fn should_record_use(&self, token_id: &str, now: i64) -> bool {
        let mut map = self
            .inner
            .limits
            .last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match map.get(token_id) {
            Some(&at) if now - at < LAST_USED_EVERY_MS => false,
            _ => {
                map.insert(token_id.to_owned(), now);
                true
            }
        }
    }
}

/// Cuts every line of `data` longer than `max` bytes, with a notice in its place, so one
/// endless line cannot fill an attempt's log budget or a client's screen.
pub(crate) fn cap_lines(data: String, max: usize) -> String {
    if data.len() <= max || data.split('\n').all(|l| l.len() <= max) {
        return data;
    }
    let mut out = String::with_capacity(data.len().min(max * 4));
    for (i, line) in data.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if line.len() <= max {
            out.push_str(line);
        } else {
            let mut cut = max;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push_str(&line[..cut]);
            out.push_str(&format!(
                " ##[warning] line cut: {} bytes over the {max}-byte line limit",
                line.len() - cut
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_with_a_notice() {
        assert_eq!(cap_lines("short\nlines\n".into(), 10), "short\nlines\n");
        let out = cap_lines(format!("ok\n{}\nend", "x".repeat(25)), 10);
        let lines: Vec<&str> = out.split('\n').collect();
        assert_eq!(lines[0], "ok");
        assert!(lines[1].starts_with("xxxxxxxxxx ##[warning] line cut: 15 bytes"));
        assert_eq!(lines[2], "end");
        // Never splits a character.
        let out = cap_lines("é".repeat(10), 5);
        assert!(out.starts_with("éé ##[warning]"));
    }
}
