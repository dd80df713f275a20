//! How the S3 backend lays a volume out: parts of a fixed size, a manifest, and the
//! arithmetic of writes buffered per part (pure functions, property-tested).

use std::ops::Range;

use bytes::Bytes;

/// The manifest's first line.
pub(super) const MANIFEST_MAGIC: &str = "pipewright-volume 1";

/// A volume's size and part size, as its manifest says.
#[derive(Debug, Clone, Copy)]
pub(super) struct Vol {
    pub(super) size: u64,
    pub(super) part_size: u64,
}

/// The part pieces a byte range touches: (part index, range in the part, offset in
/// the output).
pub(super) fn pieces(offset: u64, len: u64, part_size: u64) -> Vec<(u64, Range<u64>, u64)> {
    let mut out = Vec::new();
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let part = pos / part_size;
        let start = pos % part_size;
        let n = (part_size - start).min(end - pos);
        out.push((part, start..start + n, pos - offset));
        pos += n;
    }
    out
}

/// Whether the overlays cover `[0, len)` completely.
pub(super) fn covers(overlays: &[(u64, Bytes)], len: u64) -> bool {
    let mut spans: Vec<(u64, u64)> = overlays
        .iter()
        .map(|(o, b)| (*o, *o + b.len() as u64))
        .collect();
    spans.sort_unstable();
    let mut reached = 0;
    for (s, e) in spans {
        // Spans past the range (a later part's bytes) do not matter once it is covered.
        if reached >= len {
            return true;
        }
        if s > reached {
            return false;
        }
        reached = reached.max(e);
    }
    reached >= len
}

/// Applies overlays (in order) to `buf`, which holds the part's bytes from `base`.
pub(super) fn apply(buf: &mut [u8], base: u64, overlays: &[(u64, Bytes)]) {
    let end = base + buf.len() as u64;
    for (o, b) in overlays {
        let (s, e) = (*o, *o + b.len() as u64);
        let (from, to) = (s.max(base), e.min(end));
        if from < to {
            buf[(from - base) as usize..(to - base) as usize]
                .copy_from_slice(&b[(from - s) as usize..(to - s) as usize]);
        }
    }
}

pub(super) fn manifest_text(v: Vol) -> String {
    format!(
        "{MANIFEST_MAGIC}\nsize {}\npart-size {}\n",
        v.size, v.part_size
    )
}

pub(super) fn parse_manifest(text: &str) -> Result<Vol, String> {
    let mut lines = text.lines();
    if lines.next() != Some(MANIFEST_MAGIC) {
        return Err(format!("first line is not {MANIFEST_MAGIC:?}"));
    }
    let (mut size, mut part_size) = (None, None);
    for line in lines {
        let (k, v) = line.split_once(' ').ok_or(format!("line {line:?}"))?;
        let v: u64 = v.trim().parse().map_err(|_| format!("line {line:?}"))?;
        match k {
            "size" => size = Some(v),
            "part-size" => part_size = Some(v),
            _ => {}
        }
    }
    match (size, part_size) {
        (Some(size), Some(part_size)) if part_size > 0 => Ok(Vol { size, part_size }),
        _ => Err("size or part-size missing or zero".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn manifests_round_trip_and_reject_junk() {
        let v = Vol {
            size: 12345,
            part_size: 4096,
        };
        let back = parse_manifest(&manifest_text(v)).unwrap();
        assert_eq!((back.size, back.part_size), (12345, 4096));
        assert!(parse_manifest("hello").is_err());
        assert!(parse_manifest(&format!("{MANIFEST_MAGIC}\nsize 1\npart-size 0\n")).is_err());
        assert!(parse_manifest(&format!("{MANIFEST_MAGIC}\nsize x\n")).is_err());
    }

    /// The case proptest found: a span beyond the range after it is covered.
    #[test]
    fn a_span_past_a_covered_range_does_not_uncover_it() {
        let spans = [(0u64, 55usize), (119, 1), (37, 63)];
        let overlays: Vec<_> = spans
            .iter()
            .map(|(o, n)| (*o, Bytes::from(vec![0u8; *n])))
            .collect();
        assert!(covers(&overlays, 100));
        assert!(!covers(&overlays, 101));
    }

    proptest! {
        #[test]
        fn pieces_tile_the_range(offset in 0u64..100_000, len in 0u64..50_000, ps in 1u64..9_000) {
            let p = pieces(offset, len, ps);
            let mut at = 0;
            for (part, r, out) in &p {
                prop_assert_eq!(*out, at);
                prop_assert!(r.end <= ps && r.start < r.end);
                prop_assert_eq!(part * ps + r.start, offset + at);
                at += r.end - r.start;
            }
            prop_assert_eq!(at, len);
        }

        #[test]
        fn overlays_apply_in_order_like_a_flat_buffer(
            writes in proptest::collection::vec((0u64..200, 1usize..80, any::<u8>()), 0..12),
            base in 0u64..100,
            len in 0usize..150,
        ) {
            let mut flat = vec![0u8; 400];
            let mut overlays = Vec::new();
            for (o, n, b) in &writes {
                flat[*o as usize..*o as usize + n].fill(*b);
                overlays.push((*o, Bytes::from(vec![*b; *n])));
            }
            let mut buf = vec![0u8; len];
            apply(&mut buf, base, &overlays);
            prop_assert_eq!(&buf[..], &flat[base as usize..base as usize + len]);
            // covers() agrees with a byte-by-byte check of [0, 100).
            let mut hit = [false; 100];
            for (o, n, _) in &writes {
                let end = (*o as usize + n).min(100);
                if (*o as usize) < end {
                    hit[*o as usize..end].fill(true);
                }
            }
            prop_assert_eq!(covers(&overlays, 100), hit.iter().all(|h| *h));
        }
    }
}
