//! The models `size` runs, split over threads: the memory grid's scales
//! are independent (one shadow, and behind it one disk model, each), so
//! each thread models every request for a share of them; the trace is
//! read and decoded once, on the calling thread, and handed over in
//! batches. A single LRU pass (`--disk` alone) is one model: it runs on
//! the reader's thread, request by request (a second thread would only
//! copy the batches: decoding is a few percent of the pass).

use std::{
    sync::{Arc, mpsc},
    thread,
};

use tierscope::sizing::{
    Curve, Request,
    lru::{LruModel, SizeOnHit},
    memory::{MemoryModel, ShadowOptions},
    sampling::Sampling,
    stack::{StackModel, StackPoint},
};

/// Requests per batch handed to the threads.
const BATCH: usize = 16_384;
/// Batches a thread may have waiting: the reader is at most this far
/// ahead of the slowest model, so the progress bar (the reader's position)
/// stays honest.
const QUEUE: usize = 2;

/// What to model.
pub struct Plan {
    pub memory: Option<Vec<u64>>,
    pub disk: Option<Vec<u64>>,
    pub options: ShadowOptions,
    pub sampling: Sampling,
    pub size_on_hit: SizeOnHit,
    pub threads: usize,
    /// Keys the disk model models at every request while sampling the
    /// others (the most requested ones, from a first pass).
    pub exact_keys: Vec<u64>,
}

/// One thread's share.
enum Part {
    Memory(MemoryModel),
    Disk(Box<LruModel>),
    Stack(StackModel),
}

impl Part {
    fn access(&mut self, batch: &[Request]) {
        match self {
            Part::Memory(m) => batch.iter().for_each(|r| m.access(r)),
            Part::Disk(m) => batch.iter().for_each(|r| m.access(r)),
            Part::Stack(m) => batch.iter().for_each(|r| m.access(r)),
        }
    }
}

/// The results, the parts' answers put together.
pub struct Results {
    /// The memory tier's curve (memory alone or in front of disk).
    pub memory: Option<Curve>,
    /// The disk tier's curve: alone, or behind the memory tier at its
    /// current size.
    pub disk: Option<Curve>,
    /// The memory × disk grid, memory-major.
    pub stack: Vec<StackPoint>,
}

impl Plan {
    fn parts(&self) -> Vec<Part> {
        let split = |grid: &[u64]| -> Vec<Vec<u64>> {
            let k = self.threads.clamp(1, grid.len().max(1));
            // Interleaved, so each share has small and large sizes alike.
            (0..k)
                .map(|i| grid.iter().copied().skip(i).step_by(k).collect())
                .collect()
        };
        match (&self.memory, &self.disk) {
            (Some(m), Some(d)) => split(m)
                .into_iter()
                .map(|m| Part::Stack(StackModel::new(&m, d, self.options, self.sampling)))
                .collect(),
            (Some(m), None) => split(m)
                .into_iter()
                .map(|m| Part::Memory(MemoryModel::new(&m, self.options, self.sampling)))
                .collect(),
            (None, Some(d)) => {
                vec![Part::Disk(Box::new(
                    LruModel::new(d, self.sampling)
                        .size_on_hit(self.size_on_hit)
                        .exact_keys(self.exact_keys.iter().copied()),
                ))]
            }
            (None, None) => Vec::new(),
        }
    }

    /// Model every request `next` yields (`None`: the end; an error stops
    /// the run and is returned). `progress` is called after each batch.
    pub fn run<E>(
        &self,
        current_memory: Option<u64>,
        mut next: impl FnMut() -> Option<Result<Request, E>>,
        mut progress: impl FnMut(u64),
    ) -> Result<(Results, u64), E> {
        let mut parts = self.parts();
        let mut n = 0u64;
        let mut failed = None;
        if let [part] = parts.as_mut_slice() {
            // One model (the disk tier alone): no thread and no batches to
            // copy; the reader's position is the model's.
            while let Some(item) = next() {
                match item {
                    Ok(r) => {
                        part.access(std::slice::from_ref(&r));
                        n += 1;
                        if n.is_multiple_of(BATCH as u64) {
                            progress(n);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            progress(n);
            return Ok((merge(parts, current_memory), n));
        }
        let parts: Vec<Part> = thread::scope(|scope| {
            let mut senders = Vec::new();
            let mut handles = Vec::new();
            for mut part in parts {
                let (tx, rx) = mpsc::sync_channel::<Arc<Vec<Request>>>(QUEUE);
                senders.push(tx);
                handles.push(scope.spawn(move || {
                    for batch in rx {
                        part.access(&batch);
                    }
                    part
                }));
            }
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let item = next();
                let end = match item {
                    Some(Ok(r)) => {
                        batch.push(r);
                        n += 1;
                        false
                    }
                    Some(Err(e)) => {
                        failed = Some(e);
                        true
                    }
                    None => true,
                };
                if batch.len() == BATCH || (end && !batch.is_empty()) {
                    let shared = Arc::new(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
                    for tx in &senders {
                        // A thread that is gone panicked: join reports it.
                        let _ = tx.send(Arc::clone(&shared));
                    }
                    progress(n);
                }
                if end {
                    break;
                }
            }
            drop(senders);
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(p) => p,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        });
        if let Some(e) = failed {
            return Err(e);
        }
        Ok((merge(parts, current_memory), n))
    }
}

/// Put the parts' answers together: grids concatenated and sorted; the
/// whole-trace facts (requests, keys, ...) are the same in every part.
fn merge(parts: Vec<Part>, current_memory: Option<u64>) -> Results {
    let mut memory: Option<Curve> = None;
    let mut disk = None;
    let mut stack = Vec::new();
    let mut add_memory = |c: Curve| match &mut memory {
        None => memory = Some(c),
        Some(m) => m.points.extend(c.points),
    };
    for part in parts {
        match part {
            Part::Disk(m) => disk = Some(m.curve()),
            Part::Memory(m) => add_memory(m.curve()),
            Part::Stack(m) => {
                add_memory(m.memory_curve());
                if let Some(c) = current_memory.and_then(|cur| m.disk_curve(cur)) {
                    disk = Some(c);
                }
                stack.extend(m.grid());
            }
        }
    }
    if let Some(m) = &mut memory {
        m.points.sort_by_key(|p| p.capacity);
    }
    stack.sort_by_key(|p| (p.memory, p.disk));
    Results {
        memory,
        disk,
        stack,
    }
}
