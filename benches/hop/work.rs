//! The work: four stage functions, shared verbatim by ours and every peer.

use std::hint::black_box;

/// One item as it travels between stages.
pub type Rec = [u8; 64];

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline(always)]
fn lanes(rec: &Rec) -> [u64; 8] {
    std::array::from_fn(|i| {
        let mut lane = [0u8; 8];
        lane.copy_from_slice(&rec[i * 8..i * 8 + 8]);
        u64::from_le_bytes(lane)
    })
}

#[inline(always)]
fn record(lanes: &[u64; 8]) -> Rec {
    let mut rec = [0u8; 64];
    for (chunk, lane) in rec.chunks_exact_mut(8).zip(lanes) {
        chunk.copy_from_slice(&lane.to_le_bytes());
    }
    rec
}

/// FNV-1a over the record's eight 64-bit lanes.
#[inline(always)]
fn fnv1a(lanes: &[u64; 8], basis: u64) -> u64 {
    lanes
        .iter()
        .fold(basis, |h, &x| (h ^ x).wrapping_mul(FNV_PRIME))
}

#[inline(always)]
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Stage 1: seed -> 64-byte record, stamped with its own checksum.
#[inline]
pub fn expand(seed: u64) -> Rec {
    let seed = black_box(seed);
    let mut w: [u64; 8] = std::array::from_fn(|i| {
        splitmix64(seed.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    });
    w[0] ^= fnv1a(&w, FNV_OFFSET);
    record(&w)
}

/// Stage 2: hash, then rotate every lane and fold the hash in.
#[inline]
pub fn mix(rec: Rec) -> Rec {
    let mut w = lanes(&rec);
    let h = fnv1a(&w, FNV_OFFSET ^ 0x5555);
    for (i, lane) in w.iter_mut().enumerate() {
        *lane = lane.rotate_left(i as u32 * 8 + 5) ^ h;
    }
    record(&w)
}

/// Stage 3: hash, then add a rotated copy of the hash to every lane.
#[inline]
pub fn fold(rec: Rec) -> Rec {
    let mut w = lanes(&rec);
    let h = fnv1a(&w, FNV_OFFSET ^ 0xaaaa);
    for (i, lane) in w.iter_mut().enumerate() {
        *lane = lane.wrapping_add(h.rotate_right(i as u32 * 3));
    }
    record(&w)
}

/// Stage 4: the record's final digest.
#[inline]
pub fn seal(rec: Rec) -> u64 {
    fnv1a(&lanes(&rec), FNV_OFFSET ^ 0xffff)
}

/// What every sink does with a digest.
#[inline(always)]
pub fn absorb(acc: &mut u64, digest: u64) {
    *acc = acc.wrapping_add(black_box(digest));
}

/// The wrapping sum of the digests of seeds `0..n` (also the direct-loop peer).
pub fn direct_loop(n: u64) -> u64 {
    let mut acc = 0u64;
    for seed in 0..n {
        absorb(&mut acc, seal(fold(mix(expand(seed)))));
    }
    acc
}

/// The same work written by hand the way a buffered pipeline moves it, without a
/// runtime: seeds are generated `burst` at a time into a queue, and each stage takes its
/// whole input queue into the next one, ending in a sink that keeps its state in a
/// struct: a simple baseline for designs that hand items between stages through
/// buffers, so what separates ours from it approximates the runtime's own work.
pub fn hand_burst_loop(n: u64, burst: usize) -> u64 {
    use std::collections::VecDeque;
    struct Sink {
        acc: u64,
        count: u64,
    }
    let (mut seeds, mut recs, mut mixed, mut folded, mut digests) = (
        VecDeque::new(),
        VecDeque::new(),
        VecDeque::new(),
        VecDeque::new(),
        VecDeque::new(),
    );
    let mut sink = Sink { acc: 0, count: 0 };
    let mut next = 0u64;
    while next < n {
        let stop = n.min(next + burst as u64);
        for seed in next..stop {
            seeds.push_back(seed);
        }
        next = stop;
        // Plain pop/push loops: measured faster here than `extend(drain(..).map(..))`.
        while let Some(seed) = seeds.pop_front() {
            recs.push_back(expand(seed));
        }
        while let Some(rec) = recs.pop_front() {
            mixed.push_back(mix(rec));
        }
        while let Some(rec) = mixed.pop_front() {
            folded.push_back(fold(rec));
        }
        while let Some(rec) = folded.pop_front() {
            digests.push_back(seal(rec));
        }
        while let Some(digest) = digests.pop_front() {
            absorb(&mut sink.acc, digest);
            sink.count += 1;
        }
    }
    assert_eq!(sink.count, n);
    sink.acc
}
