//! Byte sizes on the command line: `65536`, `64KiB`, `16MiB`, `1GiB`,
//! `500MB` (decimal) ...

/// Parse a byte size; binary (`KiB`, `MiB`, `GiB`, `TiB`) and decimal
/// (`KB`, `MB`, `GB`, `TB`, or `K`, `M`, `G`, `T`) suffixes, case-insensitive.
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size (try 16MiB, 1GiB or 65536)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("unknown size unit `{other}` in `{text}`")),
    };
    let bytes = num * mult as f64;
    if !(1.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!(
            "size `{text}` is out of range: give 1 byte to 16 EiB (e.g. 64MiB or 2GiB)"
        ));
    }
    Ok(bytes as u64)
}

/// Human-readable bytes (binary units).
pub fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("65536"), Ok(65536));
        assert_eq!(parse("64KiB"), Ok(65536));
        assert_eq!(parse("16mib"), Ok(16 << 20));
        assert_eq!(parse("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse("500MB"), Ok(500_000_000));
        assert!(parse("0").unwrap_err().contains("1 byte to 16 EiB"));
        assert!(parse("ten").is_err());
        assert!(parse("5 parsecs").is_err());
        assert_eq!(human(1536.0), "1.5 KiB");
    }
}
