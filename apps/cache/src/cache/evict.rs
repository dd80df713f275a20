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
    /// and only then become free. The caller holds `evict_lock`. Returns how many
    /// slots it freed.
    pub(super) async fn evict_batch(self: &Arc<Self>, want: u32) -> Result<u64, CacheError> {
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
            {
                let mut st = self.lock();
                st.index.remove(key);
            }
            freed.push(*slot);
            guards.push(g);
        }
        faults::reached(CrashPoint::Evict);
        self.retire(&freed).await?;
        drop(guards);
        let n = freed.len() as u64;
        bump(&self.counters.evictions, "cache_evictions_total", n);
        bump(
            &self.counters.eviction_batches,
            "cache_eviction_batches_total",
            1,
        );
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
        let _g = inner.evict_lock.lock().await;
        loop {
            let free = inner.lock().free.len() as u32;
            if free >= inner.cfg.high_watermark {
                break;
            }
            // The whole way to the high watermark in one batch (one durable commit:
            // the commit's sync, not the choice of victims, is what costs), never
            // fewer than `eviction_batch`.
            let want = (inner.cfg.high_watermark - free).max(inner.cfg.eviction_batch);
            match inner.evict_batch(want).await {
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
