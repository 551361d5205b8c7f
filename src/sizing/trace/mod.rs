//! Trace files: read and written in the formats cache-research tools use,
//! so a trace from tierscope opens in libCacheSim or Caffeine's simulator
//! and theirs open here.
//!
//! - **libCacheSim `oracleGeneral`** (`Format::OracleGeneral`):
//!   little-endian 24-byte records `u32 time (s), u64 obj_id, u32 obj_size,
//!   i64 next_access_vtime`, the last being the 0-based index of the next
//!   request to the same object, -1 for none. Times are whole seconds
//!   (microseconds are truncated when writing) and sizes saturate at
//!   `u32::MAX`.
//! - **CSV** (`Format::Csv` with `CsvOptions`): columns chosen as in
//!   libCacheSim's `csv` reader (`time-col`, `obj-id-col`, `obj-size-col`,
//!   1-based), a header line or not, a delimiter, numeric keys or string
//!   keys hashed to 64 bits (XXH3).
//! - **tierscope trace** (`Format::Tierscope`): CSV with this exact header
//!   line, then one request per line:
//!
//!   ```text
//!   time_us,obj_id,obj_size,compile_us,served
//!   0,1537120954811438129,1043871,212337,compile
//!   5120,1537120954811438129,1043871,,memory
//!   ```
//!
//!   `time_us`: microseconds since the recording started; `obj_id`: the
//!   module hash with the engine configuration folded in
//!   (`object_id`), decimal; `obj_size`: the serialized
//!   artifact's bytes; `compile_us`: the compile time when the request
//!   compiled, empty otherwise; `served`: `memory`, `disk`, `remote` or
//!   `compile`, empty when unknown. libCacheSim reads it as
//!   `-t csv -t "time-col=1,obj-id-col=2,obj-size-col=3,obj-id-is-num=true,has-header=true"`
//!   (its times then count microseconds).
//!
//! Readers stream (constant memory) and never panic: a truncated or
//! malformed file is a `TraceError` naming the byte offset or line. A
//! text line longer than `MAX_LINE_BYTES` is an error too (a binary file
//! or an endless stream read as text is not buffered whole).

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read},
    path::Path,
};

mod write;

// The writers serve the CLI's `demo --record` and the tests.
#[cfg_attr(not(feature = "test-util"), allow(unused_imports))]
pub use self::write::{
    TierscopeWriter, next_access, write_csv, write_oracle_general, write_oracle_record,
};
use super::{Request, ServedBy};

/// The header line of a tierscope trace.
pub const TIERSCOPE_HEADER: &str = "time_us,obj_id,obj_size,compile_us,served";

/// Bytes of one `oracleGeneral` record.
pub const ORACLE_RECORD: usize = 24;

/// The longest text line a reader accepts, in bytes (its line ending
/// excluded): 64 KiB, far above any trace line, so that a reader's memory
/// stays bounded whatever it is given.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// A trace that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Reading failed.
    #[error("reading the trace failed at byte offset {offset}: {source}")]
    Io {
        /// Bytes read before the failure.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file ends inside a binary record.
    #[error(
        "truncated oracleGeneral trace: the record at byte offset {offset} has {got} of 24 bytes"
    )]
    Truncated {
        /// Byte offset of the partial record.
        offset: u64,
        /// Bytes of it present.
        got: usize,
    },
    /// A binary record that cannot be valid.
    #[error("malformed oracleGeneral record at byte offset {offset}: {message}")]
    BadRecord {
        /// Byte offset of the record.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// A text line that cannot be parsed.
    #[error("line {line}: {message}")]
    BadLine {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

/// CSV column options, as libCacheSim's `csv` reader takes them.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvOptions {
    /// 1-based column of the time (`None`: every request at time 0).
    pub time_col: Option<usize>,
    /// 1-based column of the object id.
    pub key_col: usize,
    /// 1-based column of the size (`None`: every object weighs 1 byte).
    pub size_col: Option<usize>,
    /// The first line is a header (skipped).
    pub has_header: bool,
    /// Field delimiter.
    pub delimiter: u8,
    /// Keys are decimal numbers; otherwise any text, hashed to 64 bits.
    pub numeric_keys: bool,
    /// Microseconds per unit of the time column (1,000,000: seconds).
    pub time_unit_us: u64,
}

impl Default for CsvOptions {
    /// `time,obj_id,obj_size`, no header, comma, numeric keys, seconds.
    fn default() -> Self {
        CsvOptions {
            time_col: Some(1),
            key_col: 2,
            size_col: Some(3),
            has_header: false,
            delimiter: b',',
            numeric_keys: true,
            time_unit_us: 1_000_000,
        }
    }
}

impl CsvOptions {
    /// Parse libCacheSim-style options:
    /// `time-col=1,obj-id-col=2,obj-size-col=3,obj-id-is-num=true,has-header=false,delimiter=;`
    /// plus `time-unit=s|ms|us`. Unnamed options keep their defaults; a
    /// column of 0 means absent.
    pub fn parse(text: &str) -> Result<CsvOptions, String> {
        let mut o = CsvOptions::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected name=value"))?;
            let col = |v: &str| -> Result<Option<usize>, String> {
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("`{part}`: not a column number"))?;
                Ok((n > 0).then_some(n))
            };
            let flag = |v: &str| -> Result<bool, String> {
                match v {
                    "true" | "1" | "yes" => Ok(true),
                    "false" | "0" | "no" => Ok(false),
                    _ => Err(format!("`{part}`: expected true or false")),
                }
            };
            match k.trim() {
                "time-col" => o.time_col = col(v)?,
                "obj-id-col" => {
                    o.key_col =
                        col(v)?.ok_or_else(|| format!("`{part}`: obj-id-col is required"))?
                }
                "obj-size-col" => o.size_col = col(v)?,
                "has-header" | "header" => o.has_header = flag(v)?,
                "obj-id-is-num" => o.numeric_keys = flag(v)?,
                "delimiter" => {
                    o.delimiter = match v {
                        "tab" | "\\t" => b'\t',
                        "comma" => b',',
                        "space" => b' ',
                        s if s.len() == 1 => s.as_bytes()[0],
                        _ => return Err(format!("`{part}`: the delimiter is one character")),
                    }
                }
                "time-unit" => {
                    o.time_unit_us = match v {
                        "s" => 1_000_000,
                        "ms" => 1_000,
                        "us" => 1,
                        _ => return Err(format!("`{part}`: time-unit is s, ms or us")),
                    }
                }
                other => return Err(format!("unknown CSV option `{other}`")),
            }
        }
        Ok(o)
    }
}

/// A trace format.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// libCacheSim `oracleGeneral` binary.
    OracleGeneral,
    /// CSV with column options.
    Csv(CsvOptions),
    /// The tierscope trace (CSV with its header line).
    Tierscope,
}

impl Format {
    /// Guess from a file: a first line equal to the tierscope header is a
    /// tierscope trace; a name containing `oracleGeneral` or ending in
    /// `.bin` is `oracleGeneral`; anything else is CSV with default options.
    pub fn detect(path: &Path) -> Result<Format, TraceError> {
        let mut first = Vec::new();
        let file = File::open(path).map_err(|source| TraceError::Io { offset: 0, source })?;
        let mut r = BufReader::new(file).take(256);
        r.read_to_end(&mut first)
            .map_err(|source| TraceError::Io { offset: 0, source })?;
        let line = first.split(|&b| b == b'\n').next().unwrap_or(&[]);
        if line.strip_suffix(b"\r").unwrap_or(line) == TIERSCOPE_HEADER.as_bytes() {
            return Ok(Format::Tierscope);
        }
        let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase());
        if name
            .as_deref()
            .is_some_and(|n| n.contains("oraclegeneral") || n.ends_with(".bin"))
        {
            return Ok(Format::OracleGeneral);
        }
        Ok(Format::Csv(CsvOptions::default()))
    }
}

enum Inner<R> {
    Oracle {
        r: R,
        offset: u64,
        index: u64,
    },
    Text {
        r: R,
        line: u64,
        buf: Vec<u8>,
        csv: CsvOptions,
        tierscope: bool,
        offset: u64,
    },
}

/// A streaming trace reader: an iterator of requests. After the first
/// error it ends.
pub struct TraceReader<R> {
    inner: Inner<R>,
    done: bool,
}

impl TraceReader<BufReader<File>> {
    /// Open a file in `format`.
    pub fn open(path: &Path, format: Format) -> Result<Self, TraceError> {
        let file = File::open(path).map_err(|source| TraceError::Io { offset: 0, source })?;
        Ok(TraceReader::new(
            BufReader::with_capacity(1 << 16, file),
            format,
        ))
    }
}

impl<R: BufRead> TraceReader<R> {
    /// Read `format` from `r`.
    pub fn new(r: R, format: Format) -> Self {
        let inner = match format {
            Format::OracleGeneral => Inner::Oracle {
                r,
                offset: 0,
                index: 0,
            },
            Format::Csv(csv) => Inner::Text {
                r,
                line: 0,
                buf: Vec::new(),
                csv,
                tierscope: false,
                offset: 0,
            },
            Format::Tierscope => Inner::Text {
                r,
                line: 0,
                buf: Vec::new(),
                csv: CsvOptions::default(),
                tierscope: true,
                offset: 0,
            },
        };
        TraceReader { inner, done: false }
    }

    /// Bytes consumed so far (for progress).
    pub fn bytes_read(&self) -> u64 {
        match &self.inner {
            Inner::Oracle { offset, .. } | Inner::Text { offset, .. } => *offset,
        }
    }

    fn next_oracle(
        r: &mut R,
        offset: &mut u64,
        index: &mut u64,
    ) -> Option<Result<Request, TraceError>> {
        let mut rec = [0u8; ORACLE_RECORD];
        let mut got = 0;
        while got < ORACLE_RECORD {
            match r.read(&mut rec[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Some(Err(TraceError::Io {
                        offset: *offset + got as u64,
                        source,
                    }));
                }
            }
        }
        if got == 0 {
            return None;
        }
        if got < ORACLE_RECORD {
            return Some(Err(TraceError::Truncated {
                offset: *offset,
                got,
            }));
        }
        let at = *offset;
        *offset += ORACLE_RECORD as u64;
        let time = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&rec[4..12]);
        let size = u32::from_le_bytes([rec[12], rec[13], rec[14], rec[15]]);
        let mut next = [0u8; 8];
        next.copy_from_slice(&rec[16..24]);
        let next = i64::from_le_bytes(next);
        let i = *index;
        *index += 1;
        // -1 is "never"; libCacheSim also writes INT64_MAX for it.
        if next != -1 && next != i64::MAX && (next < 0 || (next as u64) <= i) {
            return Some(Err(TraceError::BadRecord {
                offset: at,
                message: format!(
                    "next access {next} is not after this request (number {i}); not an oracleGeneral trace?"
                ),
            }));
        }
        Some(Ok(Request::new(
            u64::from(time) * 1_000_000,
            u64::from_le_bytes(id),
            u64::from(size),
        )))
    }
}

fn field<'a>(fields: &[&'a str], col: usize) -> Option<&'a str> {
    fields.get(col.checked_sub(1)?).map(|f| {
        let f = f.trim();
        f.strip_prefix('"')
            .and_then(|f| f.strip_suffix('"'))
            .unwrap_or(f)
    })
}

fn parse_time(text: &str, unit_us: u64) -> Option<u64> {
    if let Ok(v) = text.parse::<u64>() {
        return Some(v.saturating_mul(unit_us));
    }
    let v: f64 = text.parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * unit_us as f64).min(u64::MAX as f64) as u64)
}

/// The 64-bit id of a string key (XXH3).
pub fn string_key(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

fn parse_line(text: &str, csv: &CsvOptions, tierscope: bool) -> Result<Request, String> {
    if tierscope {
        let f: Vec<&str> = text.split(',').collect();
        if f.len() != 5 {
            return Err(format!(
                "expected 5 fields ({TIERSCOPE_HEADER}), found {}",
                f.len()
            ));
        }
        let num = |i: usize, what: &str| -> Result<u64, String> {
            f[i].trim()
                .parse()
                .map_err(|_| format!("{what} `{}` is not a whole number", f[i]))
        };
        let compile_us = match f[3].trim() {
            "" => None,
            _ => Some(num(3, "compile_us")?),
        };
        let served =
            match f[4].trim() {
                "" => None,
                s => Some(ServedBy::parse(s).ok_or_else(|| {
                    format!("served `{s}` is none of memory, disk, remote, compile")
                })?),
            };
        return Ok(Request {
            time_us: num(0, "time_us")?,
            key: num(1, "obj_id")?,
            bytes: num(2, "obj_size")?,
            compile_us,
            served,
        });
    }
    let d = csv.delimiter as char;
    let fields: Vec<&str> = text.split(d).collect();
    let key_text = field(&fields, csv.key_col).ok_or_else(|| {
        format!(
            "no column {} (obj-id-col) in {} fields",
            csv.key_col,
            fields.len()
        )
    })?;
    let key = if csv.numeric_keys {
        key_text.parse::<u64>().map_err(|_| {
            format!("obj id `{key_text}` is not a number (use obj-id-is-num=false for text keys)")
        })?
    } else {
        string_key(key_text)
    };
    let bytes = match csv.size_col {
        None => 1,
        Some(c) => {
            let t = field(&fields, c).ok_or_else(|| {
                format!("no column {c} (obj-size-col) in {} fields", fields.len())
            })?;
            t.parse::<u64>()
                .map_err(|_| format!("size `{t}` is not a whole number"))?
        }
    };
    let time_us = match csv.time_col {
        None => 0,
        Some(c) => {
            let t = field(&fields, c)
                .ok_or_else(|| format!("no column {c} (time-col) in {} fields", fields.len()))?;
            parse_time(t, csv.time_unit_us).ok_or_else(|| format!("time `{t}` is not a number"))?
        }
    };
    Ok(Request::new(time_us, key, bytes))
}

impl<R: BufRead> Iterator for TraceReader<R> {
    type Item = Result<Request, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = match &mut self.inner {
            Inner::Oracle { r, offset, index } => Self::next_oracle(r, offset, index),
            Inner::Text {
                r,
                line,
                buf,
                csv,
                tierscope,
                offset,
            } => loop {
                buf.clear();
                match read_bounded_line(r, buf, MAX_LINE_BYTES) {
                    Ok(Line::End) => break None,
                    Ok(Line::Read(n)) => {
                        *offset += n as u64;
                        *line += 1;
                    }
                    Ok(Line::TooLong) => {
                        break Some(Err(TraceError::BadLine {
                            line: *line + 1,
                            message: format!(
                                "longer than {MAX_LINE_BYTES} bytes, the limit of a trace line \
                                 (a binary file? try --format oracle)"
                            ),
                        }));
                    }
                    Err(source) => {
                        break Some(Err(TraceError::Io {
                            offset: *offset,
                            source,
                        }));
                    }
                }
                let Ok(text) = std::str::from_utf8(buf) else {
                    break Some(Err(TraceError::BadLine {
                        line: *line,
                        message: "not UTF-8 text (a binary trace? try --format oracle)".into(),
                    }));
                };
                let text = text.trim_end_matches(['\n', '\r']);
                if *line == 1 && *tierscope {
                    if text != TIERSCOPE_HEADER {
                        break Some(Err(TraceError::BadLine {
                            line: 1,
                            message: format!(
                                "not a tierscope trace: expected the header `{TIERSCOPE_HEADER}`"
                            ),
                        }));
                    }
                    continue;
                }
                if *line == 1 && csv.has_header && !*tierscope {
                    continue;
                }
                if text.trim().is_empty() {
                    continue;
                }
                break Some(parse_line(text, csv, *tierscope).map_err(|message| {
                    TraceError::BadLine {
                        line: *line,
                        message,
                    }
                }));
            },
        };
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// What [`read_bounded_line`] found.
enum Line {
    /// A line of this many bytes (its newline included).
    Read(usize),
    /// The end of the input.
    End,
    /// A line longer than the limit (what was read of it is discarded).
    TooLong,
}

/// Read one line (up to and including `\n`, or to the end of the input)
/// into `buf`, holding at most `max` bytes of it plus the newline.
fn read_bounded_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    let mut total = 0usize;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(if total == 0 {
                Line::End
            } else {
                Line::Read(total)
            });
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        // The line so far, without its newline, must fit in `max`.
        let content = buf.len() + take - usize::from(done);
        if content > max {
            return Ok(Line::TooLong);
        }
        buf.extend_from_slice(&chunk[..take]);
        r.consume(take);
        total += take;
        if done {
            return Ok(Line::Read(total));
        }
    }
}
