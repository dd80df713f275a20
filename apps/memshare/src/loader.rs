//! The image loader on pipewright stages: what [`ContentStore::load`] runs.
//!
//! ```text
//!                    ┌─> hash#0 ─┐
//! read ─> hash/split ┤           ├─> hash/order ─> place
//!                    └─> hash#1 ─┘
//! ```
//!
//! - `read` (a [`Source`]) reads the image in chunks of [`LoaderConfig::chunk_blocks`]
//!   blocks with `pread`.
//! - `hash` (CPU-bound, [`LoaderConfig::hashers`] replicas, output in input order)
//!   computes each block's content id (SHA-256), checks it against the image's manifest
//!   and finds the zero blocks.
//! - `place` (one sync stage owning the group store's index for the load) shares each
//!   page with an equal stored one or stores it, in image order, so the load map and the
//!   store's slots are the same as the inline loop's ([`ContentStore::load_inline`]).
//!
//! The pipeline runs on the pipewright runtime ([`LoaderConfig::plan`]: the first
//! worker reads and hashes, the last hashes and places) for one load and ends with it; the calling thread waits. The first error (a read error, a
//! block that does not match the manifest, store I/O) stops the reading, and the store
//! undoes what the load referenced.
//!
//! [`ContentStore::load`]: crate::ContentStore::load
//! [`ContentStore::load_inline`]: crate::ContentStore::load_inline

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};

use pipewright_runtime::{
    stage, Outbox, Pin, PipelineBuilder, Plan, Replicas, Runtime, Source, SourceState,
};

use crate::error::{Error, ImageError};
use crate::image::{is_zero, verify, ContentId, Image};
use crate::store::Placer;
use crate::sys::PAGE;

/// How the image loader pipeline runs.
///
/// ```
/// use pipewright_memshare::LoaderConfig;
/// let one_hasher = LoaderConfig { hashers: 1, ..LoaderConfig::default() };
/// assert_eq!(one_hasher.workers, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Replicas of the `hash` stage (each on its own worker where the plan has room).
    pub hashers: usize,
    /// Worker threads the plan spreads the stages over.
    pub workers: usize,
    /// Image blocks per item (read, hashed and placed together).
    pub chunk_blocks: usize,
    /// Items each inter-worker ring holds (bounds the memory in flight:
    /// about `ring × chunk_blocks × 4 KiB` per ring).
    pub ring: usize,
    /// Pin the workers to CPUs (`Pin::Auto`). Off by default: a load is short and the
    /// host's CPUs are shared with the VMs, so the scheduler places the threads.
    pub pinned: bool,
}

impl Default for LoaderConfig {
    /// Two hashers on two unpinned workers, 64-block (256 KiB) chunks, rings of 8
    /// chunks.
    fn default() -> Self {
        Self {
            hashers: 2,
            workers: 2,
            chunk_blocks: 64,
            ring: 8,
            pinned: false,
        }
    }
}

impl LoaderConfig {
    /// The runtime plan of the loader pipeline: `workers` workers (at most one more
    /// than there are hashers), the first reading, the first `hashers` hashing, the last
    /// placing; unpinned unless [`LoaderConfig::pinned`].
    pub fn plan(&self) -> Plan {
        let hashers = self.hashers.max(1);
        let workers = self.workers.clamp(1, hashers + 1);
        let pin = if self.pinned { Pin::Auto } else { Pin::Float };
        let mut plan = Plan::explicit();
        for w in 0..workers {
            let mut stages = Vec::new();
            if w == 0 {
                stages.push("read");
            }
            if w < hashers {
                stages.push("hash");
            }
            if w + 1 == workers {
                stages.push("place");
            }
            plan = plan.worker(stages, pin);
        }
        plan.ring_capacity(self.ring.max(2)).burst("read", 2)
    }
}

/// Consecutive image blocks, as read.
struct Chunk {
    first: u64,
    data: Vec<u8>,
}

/// A chunk with the content id of each block and which blocks are all zeros.
struct Hashed {
    data: Vec<u8>,
    ids: Vec<ContentId>,
    zero: Vec<bool>,
}

/// Reads the image in chunks; stops at the first error or when `stop` is set. Chunk
/// buffers come back from `place` through `spare` (no allocation, no page faults per
/// chunk once the pipeline is full).
struct ReadBlocks {
    file: File,
    path: PathBuf,
    next: u64,
    blocks: u64,
    chunk: u64,
    stop: Arc<AtomicBool>,
    spare: Receiver<Vec<u8>>,
}

impl Source for ReadBlocks {
    type Out = Result<Chunk, ImageError>;

    fn pull(&mut self, out: &mut Outbox<'_, Self::Out>, max: usize) -> SourceState {
        for _ in 0..max {
            // Relaxed: the flag only cuts the reading short; every chunk read is still
            // delivered and the place stage ignores what comes after an error.
            if self.next >= self.blocks || self.stop.load(Ordering::Relaxed) {
                return SourceState::Exhausted;
            }
            let n = self.chunk.min(self.blocks - self.next);
            let mut data = self.spare.try_recv().unwrap_or_default();
            data.resize(n as usize * PAGE, 0);
            match self.file.read_exact_at(&mut data, self.next * PAGE as u64) {
                Ok(()) => {
                    out.push(Ok(Chunk {
                        first: self.next,
                        data,
                    }));
                    self.next += n;
                }
                Err(source) => {
                    out.push(Err(ImageError::Io {
                        path: self.path.clone(),
                        source,
                    }));
                    return SourceState::Exhausted;
                }
            }
        }
        SourceState::Ready
    }
}

/// The `hash` stage's work on one chunk: ids, checked against the manifest.
fn hash(
    chunk: Chunk,
    manifest: Option<&[ContentId]>,
    path: &std::path::Path,
) -> Result<Hashed, ImageError> {
    let n = chunk.data.len() / PAGE;
    let (mut ids, mut zero) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (i, page) in chunk.data.chunks_exact(PAGE).enumerate() {
        let id = ContentId::of(page);
        verify(manifest, path, chunk.first + i as u64, &id)?;
        ids.push(id);
        zero.push(is_zero(page));
    }
    Ok(Hashed {
        data: chunk.data,
        ids,
        zero,
    })
}

/// The `place` stage's work on one hashed chunk, in image order; the chunk's buffer
/// goes back to `read` through `spare`.
fn place(
    placer: &mut Placer,
    item: Result<Hashed, ImageError>,
    stop: &AtomicBool,
    spare: &Sender<Vec<u8>>,
) {
    if placer.error.is_some() {
        return;
    }
    let result = item.map_err(Error::from).and_then(|h| {
        let placed = h
            .data
            .chunks_exact(PAGE)
            .zip(h.ids.into_iter().zip(h.zero))
            .try_for_each(|(page, (id, zero))| placer.place(page, id, zero));
        // The reader may have finished (and dropped its end): nothing to recycle then.
        let _ = spare.send(h.data);
        placed
    });
    if let Err(e) = result {
        placer.fail(e);
        stop.store(true, Ordering::Relaxed);
    }
}

/// Run one load of `image` through the loader pipeline; returns the placer with the
/// load map, the counts and the first error, if any.
pub(crate) fn run(image: &Image, placer: Placer, config: &LoaderConfig) -> Placer {
    let blocks = image.blocks();
    let shared = Arc::new(Mutex::new(Some(placer)));
    let outcome = run_pipeline(image, &shared, config);
    // Take the placer out whether or not the runtime still holds the stage (a panic
    // inside it poisons nothing we rely on: its state is consistent between pages).
    let mut placer = shared
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .expect("only this function takes the placer out");
    if placer.error.is_none() {
        if let Err(reason) = outcome {
            placer.fail(Error::Loader(reason));
        } else if placer.placed() != blocks {
            placer.fail(Error::Loader(format!(
                "{} of {blocks} blocks placed",
                placer.placed()
            )));
        }
    }
    placer
}

fn run_pipeline(
    image: &Image,
    shared: &Arc<Mutex<Option<Placer>>>,
    config: &LoaderConfig,
) -> Result<(), String> {
    let (file, manifest) = image.shared_parts().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let (give_back, spare) = channel();
    let b = PipelineBuilder::new();
    let path = image.path().to_path_buf();
    let read = ReadBlocks {
        file,
        path: path.clone(),
        next: 0,
        blocks: image.blocks(),
        chunk: config.chunk_blocks.max(1) as u64,
        stop: stop.clone(),
        spare,
    };
    let (placer, stop_place) = (shared.clone(), stop);
    b.source("read", read)
        .then_replicated("hash", Replicas::new(config.hashers), move |_| {
            let (manifest, path) = (manifest.clone(), path.clone());
            stage::map(move |item: Result<Chunk, ImageError>| {
                item.and_then(|c| hash(c, manifest.as_deref(), &path))
            })
        })
        .for_each("place", move |item| {
            let mut p = placer.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(p) = p.as_mut() {
                place(p, item, &stop_place, &give_back);
            }
        });
    let pipeline = b.build().map_err(|e| e.to_string())?;
    let running = Runtime::start(pipeline, config.plan()).map_err(|e| e.to_string())?;
    let report = running.join().map_err(|e| e.to_string())?;
    if !report.completed {
        return Err("the loader pipeline did not complete".into());
    }
    Ok(())
}
