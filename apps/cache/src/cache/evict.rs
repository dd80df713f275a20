//! Batched eviction: victims flushed if dirty, out of the index, new instance ids in one
//! durable commit, then free; the background evictor.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::error::CacheError;
use crate::faults::{self, CrashPoint};
use crate::stats::bump;

use super::{ChunkKey, Entry, Inner};

impl Inner {
    /// One eviction batch of (at most) `want` victims: the policy's victims are
    /// flushed if dirty, leave the index, get new instance ids in one durable commit,
    /// and only then become free. `held` is `evict_lock`, held until the batch ends.
    /// Returns how many slots it freed. Once called it runs to its end even if the
    /// caller's future is dropped (a cancelled request that needed a slot): victims
    /// taken from the policy or the index half way would otherwise be lost until a
    /// restart.
    pub(super) async fn evict_batch(
        self: &Arc<Self>,
        held: tokio::sync::OwnedMutexGuard<()>,
        want: u32,
    ) -> Result<u64, CacheError> {
        let inner = self.clone();
        super::detached(&self.background, async move {
            let _held = held;
            inner.evict_batch_now(want).await
        })
        .await
    }

    async fn evict_batch_now(self: &Arc<Self>, want: u32) -> Result<u64, CacheError> {
        // Slots whose retirement failed to commit earlier come first (they hold
        // nothing a reader can find).
        let unretired = std::mem::take(&mut self.lock().unretired);
        if !unretired.is_empty() {
            // Already a task of its own (see `evict_batch`): no second one.
            self.retire_now(&unretired).await?;
            return Ok(unretired.len() as u64);
        }
        let victims: Vec<(ChunkKey, u32)> = {
            let mut st = self.lock();
            let mut v = Vec::new();
            let mut skipped = Vec::new();
            while v.len() < want.max(1) as usize {
                let Some(pk) = st.policy.evict() else { break };
                let key = ChunkKey::from_policy_key(pk);
                let found = match st.index.get(&key) {
                    Some(Entry::Resident(s)) => Some((key, *s)),
                    _ => None,
                };
                match found {
                    Some(kv) => v.push(kv),
                    None => skipped.push(pk),
                }
            }
            drop(skipped);
            v
        };
        if victims.is_empty() {
            return Ok(0);
        }
        let mut freed = Vec::new();
        let mut guards = Vec::new();
        for (key, slot) in &victims {
            let g = self.slot_locks[*slot as usize].lock().await;
            // The victim was chosen before its slot lock was ours: meanwhile a reader
            // may have dropped it as corrupt and a fill reused the slot. Evict only what
            // still lives there.
            let (still, dirty) = {
                let st = self.lock();
                let s = &st.slots[*slot as usize];
                let still = matches!(st.index.get(key), Some(Entry::Resident(r)) if r == slot)
                    && s.key == Some(*key);
                (still, s.is_dirty())
            };
            if !still {
                continue;
            }
            if dirty {
                match self.flush_slot_locked(*slot).await {
                    Ok(_) => bump(
                        &self.counters.dirty_evictions,
                        "cache_dirty_evictions_total",
                        1,
                    ),
                    Err(e) => {
                        // Keep it: it cannot leave before its dirty data is safe.
                        self.lock().policy.insert(key.policy_key());
                        tracing_warn(&e);
                        continue;
                    }
                }
            }
            self.unindex(*key, *slot);
            freed.push(*slot);
            guards.push(g);
        }
        faults::reached(CrashPoint::Evict);
        // Evicted once out of the index, whether or not the retirement commits now (a
        // failed one is completed by the next batch, which does not count them again).
        let n = freed.len() as u64;
        bump(&self.counters.evictions, "cache_evictions_total", n);
        bump(
            &self.counters.eviction_batches,
            "cache_eviction_batches_total",
            1,
        );
        self.retire_now(&freed).await?;
        drop(guards);
        Ok(n)
    }
}

fn tracing_warn(e: &CacheError) {
    eprintln!("pipewright-cache: eviction kept a chunk: {e}");
}

pub(super) async fn evictor(weak: Weak<Inner>) {
    let wanted = match weak.upgrade() {
        Some(inner) => inner.evict_wanted.clone(),
        None => return,
    };
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(200), wanted.notified()).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.is_closed() {
            return;
        }
        if (inner.lock().free.len() as u32) >= inner.cfg.low_watermark {
            continue;
        }
        loop {
            let held = inner.evict_lock.clone().lock_owned().await;
            if inner.is_closed() {
                // `close` held the lock for its final flush: nothing evicts after it.
                return;
            }
            let free = inner.lock().free.len() as u32;
            if free >= inner.cfg.high_watermark {
                break;
            }
            // The whole way to the high watermark in one batch (one durable commit:
            // the commit's sync, not the choice of victims, is what costs), never
            // fewer than `eviction_batch`.
            let want = (inner.cfg.high_watermark - free).max(inner.cfg.eviction_batch);
            match inner.evict_batch(held, want).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("pipewright-cache: eviction failed (will retry): {e}");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::backend::FileBackend;
    use crate::cache::Cache;
    use crate::config::CacheConfig;

    /// A chunk out of the index whose slot's retirement did not commit (so the slot
    /// keeps its instance id) is not answered from the memory tier after a write of it
    /// went to another slot.
    const CHUNK: usize = 128 << 10;

    /// A cache of 6 chunks of [`CHUNK`] bytes over a volume `disk` holding `image`,
    /// with `memory_bytes` of memory tier; the directory it lives in.
    async fn small_cache(image: &[u8], memory_bytes: u64) -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let vdir = dir.path().join("volumes");
        std::fs::create_dir(&vdir).unwrap();
        std::fs::write(vdir.join("disk"), image).unwrap();
        let mut cfg = CacheConfig::new(dir.path().join("cache"), 6);
        cfg.chunk_size = CHUNK as u64;
        cfg.low_watermark = 1;
        cfg.high_watermark = 2;
        cfg.eviction_batch = 2;
        cfg.memory_bytes = memory_bytes;
        let cache = Cache::open(cfg, Arc::new(FileBackend::new(&vdir).unwrap()))
            .await
            .unwrap();
        (dir, cache)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_evicted_before_its_retirement_commits_is_not_served_from_memory() {
        let (_dir, cache) = small_cache(&vec![7u8; 4 * CHUNK], 1 << 20).await;
        let disk = cache.volume("disk").unwrap();
        // Filled, then read again: the second read keeps a copy in the memory tier.
        for _ in 0..2 {
            assert_eq!(cache.read(disk, 0, 4096).await.unwrap(), vec![7u8; 4096]);
        }
        assert!(
            cache.read_memory(disk, 0, 4096).is_some(),
            "the tier holds it"
        );
        let free_before = cache.inner.lock().free.len();
        cache.inner.meta.fail_next.store(1, Ordering::SeqCst);
        assert!(cache.evict_to(free_before as u32 + 1).await.is_err());
        assert!(!cache.inner.lock().unretired.is_empty());
        cache.write(disk, 0, &[9u8; 4096]).await.unwrap();
        assert_eq!(cache.read(disk, 0, 4096).await.unwrap(), vec![9u8; 4096]);
    }

    /// An eviction whose caller is dropped half way (a request cancelled while it
    /// waited for a slot) still ends: its victims end free, not lost until a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_eviction_dropped_half_way_still_frees_its_victims() {
        let image: Vec<u8> = (0..8 * CHUNK).map(|i| (i / 4096) as u8).collect();
        let (_dir, cache) = small_cache(&image, 0).await;
        let disk = cache.volume("disk").unwrap();
        for c in 0..4u64 {
            cache.read(disk, c * CHUNK as u64, 4096).await.unwrap();
        }
        let free_before = cache.inner.lock().free.len();
        let want = free_before as u32 + 2;
        // Polled once, then dropped: it stops at its first wait (the retirement's
        // metadata commit, on a blocking thread).
        {
            let mut eviction = std::pin::pin!(cache.evict_to(want));
            let first =
                std::future::poll_fn(|cx| std::task::Poll::Ready(eviction.as_mut().poll(cx))).await;
            assert!(first.is_pending(), "the eviction finished in one poll");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while cache.inner.lock().free.len() < want as usize {
            let (free, unretired) = {
                let st = cache.inner.lock();
                (st.free.len(), st.unretired.len())
            };
            assert!(
                Instant::now() < deadline,
                "the dropped eviction's victims never became free: {free} free, {unretired} unretired"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // And the cache serves every chunk's bytes.
        for c in 0..8u64 {
            let off = c * CHUNK as u64;
            let got = cache.read(disk, off, 4096).await.unwrap();
            assert_eq!(got[..], image[off as usize..off as usize + 4096]);
        }
    }

    /// A retirement whose metadata commit fails leaves its slots neither free nor
    /// resident; the next eviction retires them again, and the cache keeps serving
    /// the right bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_of_a_failed_retirement_are_retired_by_the_next_eviction() {
        let chunk = CHUNK;
        let image: Vec<u8> = (0..8 * chunk).map(|i| (i / 4096) as u8).collect();
        let (_dir, cache) = small_cache(&image, 0).await;
        let disk = cache.volume("disk").unwrap();
        let read = |i: usize| {
            let cache = cache.clone();
            async move {
                let got = cache.read(disk, (i * chunk) as u64, 4096).await.unwrap();
                assert_eq!(got[..], [(i * chunk / 4096) as u8; 4096][..], "chunk {i}");
            }
        };
        for i in 0..3 {
            read(i).await;
        }
        let free_before = cache.inner.lock().free.len();
        cache.inner.meta.fail_next.store(1, Ordering::SeqCst);
        assert!(cache.evict_to(free_before as u32 + 2).await.is_err());
        let lost = cache.inner.lock().unretired.len();
        assert!(lost > 0, "the failed retirement's slots are remembered");
        assert_eq!(cache.inner.lock().free.len(), free_before);
        cache
            .evict_to(free_before as u32 + lost as u32)
            .await
            .unwrap();
        assert!(cache.inner.lock().unretired.is_empty());
        assert!(cache.inner.lock().free.len() >= free_before + lost);
        for i in 0..8 {
            read(i).await;
        }
    }
}
