//! Durations on the command line (`30s`, `5m`, `7d`, `1h 30m`: humantime's
//! syntax) and in messages.

use std::time::Duration;

/// Parse a duration such as `30s`, `5m`, `7d` or `1h30m`; a bare number
/// is seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("`{text}` is not a duration ({e}); try 30s, 5m, 12h or 7d"))
}

/// [`parse`], within `range` (said in the error as the user would write it).
pub fn parse_within(
    text: &str,
    range: std::ops::RangeInclusive<Duration>,
) -> Result<Duration, String> {
    let d = parse(text)?;
    if range.contains(&d) {
        Ok(d)
    } else {
        Err(format!(
            "{} is outside {} to {}",
            humantime::format_duration(d),
            humantime::format_duration(*range.start()),
            humantime::format_duration(*range.end())
        ))
    }
}

/// A duration in one short unit: `850 us`, `12.3 ms`, `4.21 s`, `3.5 min`,
/// `2.0 h`, `3.1 d`.
pub fn short(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.0} us", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else if s < 120.0 {
        format!("{s:.2} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} d", s / 86_400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_shows() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("20"), Ok(Duration::from_secs(20)));
        let day = Duration::from_secs(86_400);
        assert!(
            parse_within("2d", Duration::ZERO..=day)
                .unwrap_err()
                .contains("outside 0s to 1day")
        );
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse("soon").unwrap_err().contains("try 30s"));
        assert_eq!(short(Duration::from_millis(1500)), "1.50 s");
        assert_eq!(short(Duration::from_secs(3 * 86_400)), "3.0 d");
    }
}
