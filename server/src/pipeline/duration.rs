//! Human duration strings such as `500ms`, `2s`, `1m30s`, `7d`.
//!
//! This module owns only the text-to-milliseconds conversion. It must not
//! know which fields use durations or what limits apply to them.

/// Parses a duration made of one or more `<integer><unit>` parts, units
/// `ms`, `s`, `m`, `h`, `d`. Bare numbers are refused because a silent
/// default unit is a classic source of off-by-1000 mistakes.
pub(crate) fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "invalid duration `{s}`: expected a number at `{}`",
                &s[start..]
            ));
        }
        let number: u64 = s[start..i]
            .parse()
            .map_err(|_| format!("duration `{s}` is too large"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let factor: u64 = match &s[unit_start..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("duration `{s}` is missing a unit")),
            other => return Err(format!("unknown unit `{other}` in duration `{s}`")),
        };
        total = number
            .checked_mul(factor)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("duration `{s}` is too large"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("2s"), Ok(2_000));
        assert_eq!(parse_duration_ms("1m"), Ok(60_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("7d"), Ok(604_800_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1h1m1s1ms"), Ok(3_661_001));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "5",
            "1.5h",
            "2 s",
            "3w",
            "-1s",
            "s",
            "99999999999999999999d",
            "1m30",
        ] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}
