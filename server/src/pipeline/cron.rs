//! Five-field cron expressions (`minute hour day-of-month month day-of-week`), in UTC.
//!
//! Fields take `*`, numbers, ranges `a-b`, steps `*/n` / `a-b/n` / `a/n` and lists
//! `a,b`; months and weekdays also take three-letter English names. Weekday 0 and 7 are
//! both Sunday. As in Vixie cron (and GitHub Actions), when both day-of-month and
//! day-of-week are restricted a day matches if either matches.
//!
//! This module is pure: it parses and matches, and finds the latest matching minute in a
//! window. Firing is the scheduler's business.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};

const MINUTE_MS: i64 = 60_000;
/// How far back [`Cron::latest_in`] looks at most.
const MAX_LOOKBACK_MS: i64 = 400 * 24 * 60 * MINUTE_MS;

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(s: &str, lo: u32, hi: u32, names: &[&str], name_base: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + name_base);
    }
    let v: u32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v < lo || v > hi {
        return Err(format!("{v} is outside {lo}-{hi}"));
    }
    Ok(v)
}

/// Parses one field into a bit set; returns it and whether the field restricts (is not `*`).
fn field(
    text: &str,
    what: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    name_base: u32,
) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("{what}: step `{s}` must be a positive number"))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = value(a, lo, hi, names, name_base).map_err(|e| format!("{what}: {e}"))?;
            let b = value(b, lo, hi, names, name_base).map_err(|e| format!("{what}: {e}"))?;
            if a > b {
                return Err(format!("{what}: range `{range}` is backwards"));
            }
            (a, b)
        } else {
            let a = value(range, lo, hi, names, name_base).map_err(|e| format!("{what}: {e}"))?;
            // `a/n` means `a-hi/n`.
            (a, if part.contains('/') { hi } else { a })
        };
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, !text.starts_with('*')))
}

impl Cron {
    /// Parses an expression of exactly five whitespace-separated fields.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let f: Vec<&str> = text.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!("cron expression `{text}` must have 5 fields"));
        }
        let (minutes, _) = field(f[0], "minute", 0, 59, &[], 0)?;
        let (hours, _) = field(f[1], "hour", 0, 23, &[], 0)?;
        let (days, days_restricted) = field(f[2], "day of month", 1, 31, &[], 0)?;
        let (months, _) = field(f[3], "month", 1, 12, MONTHS, 1)?;
        let (mut weekdays, weekdays_restricted) = field(f[4], "day of week", 0, 7, WEEKDAYS, 0)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Cron {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_restricted,
            weekdays_restricted,
        })
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().num_days_from_sunday()) != 0;
        if self.days_restricted && self.weekdays_restricted {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// Whether the minute containing `ms` matches.
    pub fn matches(&self, ms: i64) -> bool {
        let Some(t) = Utc.timestamp_millis_opt(ms).single() else {
            return false;
        };
        self.months & (1 << t.month()) != 0
            && self.day_matches(&t)
            && self.hours & (1 << t.hour()) != 0
            && self.minutes & (1 << t.minute()) != 0
    }

    /// The latest matching minute `t` (milliseconds, on a minute boundary) with
    /// `after < t <= now`, if any.
    pub fn latest_in(&self, after: i64, now: i64) -> Option<i64> {
        let floor = after.max(now - MAX_LOOKBACK_MS);
        let mut t = now.div_euclid(MINUTE_MS) * MINUTE_MS;
        while t > floor {
            let dt = Utc.timestamp_millis_opt(t).single()?;
            let start_of_day = dt
                .date_naive()
                .and_hms_opt(0, 0, 0)?
                .and_utc()
                .timestamp_millis();
            if self.months & (1 << dt.month()) == 0 {
                let first = dt.date_naive().with_day(1)?.and_hms_opt(0, 0, 0)?.and_utc();
                t = first.timestamp_millis() - MINUTE_MS;
            } else if !self.day_matches(&dt) {
                t = start_of_day - MINUTE_MS;
            } else if self.hours & (1 << dt.hour()) == 0 {
                t = start_of_day + i64::from(dt.hour()) * 60 * MINUTE_MS - MINUTE_MS;
            } else if self.minutes & (1 << dt.minute()) == 0 {
                t -= MINUTE_MS;
            } else {
                return Some(t);
            }
        }
        None
    }

    /// The next matching minute strictly after `after`, searching at most `horizon` ahead.
    pub fn next_after(&self, after: i64, horizon: Duration) -> Option<i64> {
        let mut t = (after.div_euclid(MINUTE_MS) + 1) * MINUTE_MS;
        let end = after + horizon.num_milliseconds();
        while t <= end {
            if self.matches(t) {
                return Some(t);
            }
            t += MINUTE_MS;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn parses_and_rejects() {
        for ok in [
            "* * * * *",
            "0 * * * *",
            "*/15 0-6 1,15 jan-jun mon-fri",
            "5/10 * * * 7",
            "0 0 31 * *",
        ] {
            Cron::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "x * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matches_fields_and_day_or_rule() {
        let c = Cron::parse("30 2 * * mon").unwrap();
        assert!(c.matches(at("2026-11-30T02:30:00Z"))); // a Monday
        assert!(c.matches(at("2026-11-30T02:30:59Z")));
        assert!(!c.matches(at("2026-11-29T02:30:00Z")));
        // Both restricted: the 1st of the month OR a Sunday.
        let c = Cron::parse("0 0 1 * 0").unwrap();
        assert!(c.matches(at("2026-12-01T00:00:00Z"))); // a Tuesday
        assert!(c.matches(at("2026-11-29T00:00:00Z"))); // a Sunday
        assert!(!c.matches(at("2026-12-02T00:00:00Z")));
        assert!(
            Cron::parse("0 0 * * 7")
                .unwrap()
                .matches(at("2026-11-29T00:00:00Z"))
        );
    }

    #[test]
    fn latest_in_window() {
        let c = Cron::parse("0 * * * *").unwrap();
        let now = at("2026-11-29T05:17:00Z");
        assert_eq!(c.latest_in(0, now), Some(at("2026-11-29T05:00:00Z")));
        assert_eq!(c.latest_in(at("2026-11-29T05:00:00Z"), now), None);
        let c = Cron::parse("15 3 29 2 *").unwrap();
        assert_eq!(
            c.latest_in(0, at("2028-03-01T00:00:00Z")),
            Some(at("2028-02-29T03:15:00Z"))
        );
        // Further back than the look-back bound.
        assert_eq!(c.latest_in(0, at("2026-11-29T00:00:00Z")), None);
        let c = Cron::parse("*/5 * * * *").unwrap();
        assert_eq!(
            c.latest_in(0, at("2026-11-29T05:17:42Z")),
            Some(at("2026-11-29T05:15:00Z"))
        );
        assert_eq!(
            c.next_after(at("2026-11-29T05:15:00Z"), Duration::days(1)),
            Some(at("2026-11-29T05:20:00Z"))
        );
    }
}
