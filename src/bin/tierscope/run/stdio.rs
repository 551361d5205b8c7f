//! The program's stdin, stdout and stderr are the process's own, as for a
//! native program: wasix's host files (`virtual_fs::host_fs`), which read
//! and write the real descriptors through tokio. A write holds at most one
//! buffer (the program's write, capped by tokio at 2 MiB) and wasix flushes
//! every write to stdout or stderr before the program goes on, so a program
//! blocks while its reader stalls and memory stays flat.
//!
//! A reader that goes away (a broken pipe: `| head`) ends a native program
//! with SIGPIPE. Here the write fails with `EPIPE` (Rust ignores SIGPIPE),
//! which many programs ignore; so [`Watched`] ends the program, as the
//! signal would, and `run` exits with 141 (128 + SIGPIPE), as a shell
//! reports a native program killed by it.

use std::{
    fmt, io,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use wasmer_wasix::{
    VirtualFile, WasiProcess,
    virtual_fs::{self, host_fs},
    wasmer_wasix_types::wasi::ExitCode,
};

/// The exit code of a program ended by a broken pipe (128 + SIGPIPE).
pub const BROKEN_PIPE_EXIT: u8 = 141;

/// Whether a write found its reader gone, and the process to end then.
#[derive(Default)]
pub struct BrokenPipe {
    seen: AtomicBool,
    process: OnceLock<WasiProcess>,
}

impl fmt::Debug for BrokenPipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokenPipe")
            .field("seen", &self.seen())
            .finish_non_exhaustive()
    }
}

impl BrokenPipe {
    /// The process to end on a broken pipe (known once the environment is
    /// built, after the files).
    pub fn attach(&self, process: WasiProcess) {
        let _ = self.process.set(process);
        if self.seen() {
            self.end();
        }
    }

    /// Whether a write found its reader gone.
    pub fn seen(&self) -> bool {
        self.seen.load(Ordering::Acquire)
    }

    fn hit(&self) {
        if !self.seen.swap(true, Ordering::AcqRel) {
            self.end();
        }
    }

    fn end(&self) {
        if let Some(process) = self.process.get() {
            process.terminate(ExitCode::from(u16::from(BROKEN_PIPE_EXIT)));
        }
    }
}

/// The process's stdout.
pub fn stdout(broken: &Arc<BrokenPipe>) -> Box<dyn VirtualFile + Send + Sync> {
    Box::new(Watched {
        inner: host_fs::Stdout::default(),
        broken: broken.clone(),
    })
}

/// The process's stderr.
pub fn stderr(broken: &Arc<BrokenPipe>) -> Box<dyn VirtualFile + Send + Sync> {
    Box::new(Watched {
        inner: host_fs::Stderr::default(),
        broken: broken.clone(),
    })
}

/// The process's stdin (reads wait for the terminal or the pipe; end of
/// input is end of file for the program).
pub fn stdin() -> Box<dyn VirtualFile + Send + Sync> {
    Box::new(host_fs::Stdin::default())
}

/// A host output file whose writes report a broken pipe.
#[derive(Debug)]
struct Watched<F> {
    inner: F,
    broken: Arc<BrokenPipe>,
}

impl<F> Watched<F> {
    fn watch<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &result
            && e.kind() == io::ErrorKind::BrokenPipe
        {
            self.broken.hit();
        }
        result
    }
}

impl<F: AsyncWrite + Unpin> AsyncWrite for Watched<F> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<F: AsyncRead + Unpin> AsyncRead for Watched<F> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<F: AsyncSeek + Unpin> AsyncSeek for Watched<F> {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.inner).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.inner).poll_complete(cx)
    }
}

impl<F: VirtualFile + Unpin + Send + Sync + 'static> VirtualFile for Watched<F> {
    fn last_accessed(&self) -> u64 {
        self.inner.last_accessed()
    }

    fn last_modified(&self) -> u64 {
        self.inner.last_modified()
    }

    fn created_time(&self) -> u64 {
        self.inner.created_time()
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn set_len(&mut self, new_size: u64) -> virtual_fs::Result<()> {
        self.inner.set_len(new_size)
    }

    fn unlink(&mut self) -> virtual_fs::Result<()> {
        self.inner.unlink()
    }

    fn get_special_fd(&self) -> Option<u32> {
        self.inner.get_special_fd()
    }

    fn poll_read_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read_ready(cx)
    }

    fn poll_write_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_ready(cx)
    }
}
