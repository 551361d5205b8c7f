//! Trace readers on hostile input: an endless line is an error after a
//! bounded read, never a line buffered whole.

use std::{
    io::{BufReader, Read},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tierscope::sizing::trace::{CsvOptions, Format, MAX_LINE_BYTES, TraceError, TraceReader};

/// An endless stream of one byte that counts what it handed out.
struct Endless {
    byte: u8,
    given: Arc<AtomicU64>,
    /// Stop after this many bytes (a safety net: the reader must stop far
    /// earlier; without a bound it would read all of this).
    limit: u64,
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let given = self.given.load(Ordering::Relaxed);
        let n = (buf.len() as u64).min(self.limit - given) as usize;
        buf[..n].fill(self.byte);
        self.given.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[test]
fn an_endless_line_is_an_error_naming_the_line_and_the_limit() {
    for (byte, format) in [
        (b'7', Format::Csv(CsvOptions::default())),
        (0u8, Format::Csv(CsvOptions::default())),
        (b'1', Format::Tierscope),
    ] {
        // Arrange: one good line, then 256 MiB without a newline.
        let given = Arc::new(AtomicU64::new(0));
        let head: &[u8] = match format {
            Format::Tierscope => b"time_us,obj_id,obj_size,compile_us,served\n",
            _ => b"1,2,3\n",
        };
        let endless = Endless {
            byte,
            given: Arc::clone(&given),
            limit: 256 << 20,
        };
        let reader = TraceReader::new(BufReader::new(head.chain(endless)), format.clone());

        // Act
        let items: Vec<Result<_, TraceError>> = reader.collect();

        // Assert: the good line (if any) then one error, on line 2 (the
        // tierscope header is line 1), naming the limit; what was read is
        // about the limit, not the stream.
        let err = items.last().unwrap().as_ref().unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, TraceError::BadLine { line: 2, .. }),
            "{format:?}: {text}"
        );
        assert!(text.contains(&MAX_LINE_BYTES.to_string()), "{text}");
        let read = given.load(Ordering::Relaxed);
        assert!(
            read <= (MAX_LINE_BYTES + (64 << 10)) as u64,
            "{format:?}: read {read} bytes of an endless line"
        );
    }
}

#[test]
fn a_line_at_the_limit_is_read() {
    // A line of exactly the limit (a long string key) is accepted.
    let key = "k".repeat(MAX_LINE_BYTES - 4);
    let text = format!("1,{key},3\n");
    assert_eq!(text.len() - 1, MAX_LINE_BYTES);
    let csv = CsvOptions::parse("obj-id-is-num=false").unwrap();
    let reqs: Vec<_> = TraceReader::new(text.as_bytes(), Format::Csv(csv))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(reqs.len(), 1);
}

/// `tierscope size /dev/zero --format csv` under a 1 GiB address-space
/// limit: a clear error, not an abort.
#[cfg(all(feature = "cli", target_os = "linux"))]
#[test]
fn size_on_an_endless_file_fails_cleanly_under_a_memory_limit() {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -v 1048576 && exec "$0" size /dev/zero --format csv --disk 1MiB --no-progress"#)
        .arg(env!("CARGO_BIN_EXE_tierscope"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 1"), "{stderr}");
    assert!(stderr.contains(&MAX_LINE_BYTES.to_string()), "{stderr}");
}
