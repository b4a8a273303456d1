//! Times as the API sends them (RFC 3339) turned into milliseconds and short labels.

/// Milliseconds since the epoch, or `None` for a missing or unreadable time.
pub fn ms(time: Option<&str>) -> Option<f64> {
    let parsed = js_sys::Date::parse(time?);
    (!parsed.is_nan()).then_some(parsed)
}

pub fn now() -> f64 {
    js_sys::Date::now()
}

/// `850ms`, `12.3s`, `4m 05s`, `2h 03m`.
pub fn duration(ms: f64) -> String {
    let ms = ms.max(0.0);
    if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else if ms < 60_000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else if ms < 3_600_000.0 {
        let s = (ms / 1000.0) as u64;
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        let m = (ms / 60_000.0) as u64;
        format!("{}h {:02}m", m / 60, m % 60)
    }
}

/// `5s ago`, `3m ago`, `2h ago`, `4d ago`.
pub fn ago(ms: f64) -> String {
    let s = ((now() - ms) / 1000.0).max(0.0) as u64;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// The short form of a commit sha.
pub fn short(sha: &str) -> &str {
    sha.get(..8).unwrap_or(sha)
}
