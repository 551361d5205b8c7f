//! Writing traces: the tierscope trace, CSV, and `oracleGeneral`.

use std::io::{self, Write};

use super::{CsvOptions, ORACLE_RECORD, TIERSCOPE_HEADER};
use crate::sizing::{KeyMap, Request, ServedBy};

/// Writes a tierscope trace, one request at a time.
#[derive(Debug)]
pub struct TierscopeWriter<W: Write> {
    w: W,
}

impl<W: Write> TierscopeWriter<W> {
    /// Start a trace (writes the header line).
    pub fn new(mut w: W) -> io::Result<Self> {
        writeln!(w, "{TIERSCOPE_HEADER}")?;
        Ok(TierscopeWriter { w })
    }

    /// Append one request.
    pub fn write(&mut self, r: &Request) -> io::Result<()> {
        write!(self.w, "{},{},{},", r.time_us, r.key, r.bytes)?;
        if let Some(c) = r.compile_us {
            write!(self.w, "{c}")?;
        }
        writeln!(self.w, ",{}", r.served.map_or("", ServedBy::as_str))
    }

    /// Flush and hand back the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Write requests as CSV: `time,obj_id,obj_size` in the columns and time
/// unit of `csv` (numeric keys only; a header line if `csv.has_header`).
pub fn write_csv<W: Write>(mut w: W, csv: &CsvOptions, requests: &[Request]) -> io::Result<()> {
    let d = csv.delimiter as char;
    let cols = [csv.time_col, Some(csv.key_col), csv.size_col];
    let width = cols.iter().flatten().copied().max().unwrap_or(1);
    if csv.has_header {
        let mut names = vec![String::new(); width];
        for (c, name) in cols.iter().zip(["time", "obj_id", "obj_size"]) {
            if let Some(c) = c {
                names[c - 1] = name.into();
            }
        }
        writeln!(w, "{}", names.join(&d.to_string()))?;
    }
    let unit = csv.time_unit_us.max(1);
    let mut fields = vec![String::new(); width];
    for r in requests {
        for f in fields.iter_mut() {
            f.clear();
        }
        let values = [r.time_us / unit, r.key, r.bytes];
        for (c, v) in cols.iter().zip(values) {
            if let Some(c) = c {
                fields[c - 1] = v.to_string();
            }
        }
        writeln!(w, "{}", fields.join(&d.to_string()))?;
    }
    w.flush()
}

/// Write one raw `oracleGeneral` record.
pub fn write_oracle_record<W: Write>(
    w: &mut W,
    time_s: u32,
    obj_id: u64,
    size: u32,
    next_access: i64,
) -> io::Result<()> {
    let mut rec = [0u8; ORACLE_RECORD];
    rec[0..4].copy_from_slice(&time_s.to_le_bytes());
    rec[4..12].copy_from_slice(&obj_id.to_le_bytes());
    rec[12..16].copy_from_slice(&size.to_le_bytes());
    rec[16..24].copy_from_slice(&next_access.to_le_bytes());
    w.write_all(&rec)
}

/// The 0-based index of the next request to the same object, -1 for none.
pub fn next_access(requests: &[Request]) -> Vec<i64> {
    let mut next = vec![-1i64; requests.len()];
    let mut seen: KeyMap<usize> = KeyMap::default();
    for (i, r) in requests.iter().enumerate().rev() {
        if let Some(j) = seen.insert(r.key, i) {
            next[i] = j as i64;
        }
    }
    next
}

/// Write requests as `oracleGeneral` (times truncated to seconds, sizes
/// saturated at `u32::MAX`), computing each next-access field.
pub fn write_oracle_general<W: Write>(mut w: W, requests: &[Request]) -> io::Result<()> {
    let next = next_access(requests);
    for (r, n) in requests.iter().zip(next) {
        let time = u32::try_from(r.time_us / 1_000_000).unwrap_or(u32::MAX);
        let size = u32::try_from(r.bytes).unwrap_or(u32::MAX);
        write_oracle_record(&mut w, time, r.key, size, n)?;
    }
    w.flush()
}
