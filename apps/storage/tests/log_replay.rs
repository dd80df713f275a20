//! Log framing and replay: round trips, torn tails, bit flips, random garbage.

use pipewright_storage::log::{
    decode_frame, encode, replay, replay_file, Checkpoint, CorruptionReason, Intent, PageWrite,
    Record, Verdict, FRAME_HEADER,
};
use pipewright_storage::protocol::Ballot;
use pipewright_storage::{ClientId, NodeId, PageId, TxnId};
use proptest::prelude::*;

fn verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![Just(Verdict::Commit), Just(Verdict::Abort)]
}

fn record() -> impl Strategy<Value = Record> {
    let write = (
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(p, v, data)| PageWrite {
            page: PageId(p),
            expected: v,
            data: data.into(),
        });
    let intent = (
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<u32>(), 1..5),
        proptest::collection::vec(write, 0..4),
        0u8..3,
    )
        .prop_map(|(t, c, chain, writes, acceptors)| {
            Record::Intent(Intent {
                txn: TxnId(t),
                client: ClientId(c),
                chain: chain.into_iter().map(NodeId).collect(),
                writes,
                acceptors,
            })
        });
    prop_oneof![
        intent,
        (any::<u64>(), any::<u64>(), verdict()).prop_map(|(t, c, verdict)| Record::Decision {
            txn: TxnId(t),
            client: ClientId(c),
            verdict
        }),
        (any::<u64>(), any::<u64>(), verdict()).prop_map(|(t, c, verdict)| {
            Record::Completion {
                txn: TxnId(t),
                client: ClientId(c),
                verdict,
            }
        }),
        any::<u64>().prop_map(|t| Record::Forget { txn: TxnId(t) }),
        (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(t, c, r, n)| {
            Record::Promise {
                txn: TxnId(t),
                client: ClientId(c),
                ballot: Ballot {
                    round: r,
                    node: NodeId(n),
                },
            }
        }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            verdict()
        )
            .prop_map(|(t, c, r, n, verdict)| Record::Accept {
                txn: TxnId(t),
                client: ClientId(c),
                ballot: Ballot {
                    round: r,
                    node: NodeId(n),
                },
                verdict,
            }),
        (
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..4),
            proptest::collection::vec((any::<u64>(), any::<u64>(), verdict()), 0..4),
            any::<u64>(),
        )
            .prop_map(|(marks, finished, floor)| {
                Record::Checkpoint(Checkpoint {
                    floor: TxnId(floor),
                    marks: marks
                        .into_iter()
                        .map(|(c, t)| (ClientId(c), TxnId(t)))
                        .collect(),
                    finished: finished
                        .into_iter()
                        .map(|(t, c, v)| (TxnId(t), ClientId(c), v))
                        .collect(),
                    open: vec![
                        Record::Forget { txn: TxnId(1) },
                        // Both intent layouts: without acceptors (format 1/2) and with.
                        Record::Intent(Intent {
                            txn: TxnId(2),
                            client: ClientId(3),
                            chain: vec![NodeId(1), NodeId(2)],
                            writes: Vec::new(),
                            acceptors: 0,
                        }),
                        Record::Intent(Intent {
                            txn: TxnId(4),
                            client: ClientId(3),
                            chain: vec![NodeId(1), NodeId(2)],
                            writes: Vec::new(),
                            acceptors: 1,
                        }),
                    ],
                })
            }),
    ]
}

/// Encode `records`, returning the image and each frame's end offset.
fn image(records: &[Record]) -> (Vec<u8>, Vec<usize>) {
    let mut buf = Vec::new();
    let mut ends = Vec::new();
    for r in records {
        encode(r, &mut buf).unwrap();
        ends.push(buf.len());
    }
    (buf, ends)
}

proptest! {
    #[test]
    fn round_trip(records in proptest::collection::vec(record(), 0..20)) {
        let (buf, _) = image(&records);
        let out = replay(&buf);
        prop_assert_eq!(&out.records, &records);
        prop_assert_eq!(out.valid_len, buf.len());
        prop_assert!(out.corruption.is_none());
    }

    /// Cutting the log anywhere keeps exactly the frames that end before the cut.
    #[test]
    fn any_prefix_yields_only_whole_records(
        records in proptest::collection::vec(record(), 1..12),
        cut in any::<prop::sample::Index>(),
    ) {
        let (buf, ends) = image(&records);
        let cut = cut.index(buf.len() + 1);
        let out = replay(&buf[..cut]);
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        prop_assert_eq!(&out.records[..], &records[..whole]);
        let valid = if whole == 0 { 0 } else { ends[whole - 1] };
        prop_assert_eq!(out.valid_len, valid);
        prop_assert_eq!(out.corruption.is_some(), cut != valid);
    }

    /// A flipped bit anywhere loses the damaged frame and everything after it, and
    /// nothing before it.
    #[test]
    fn any_bit_flip_stops_at_the_damaged_record(
        records in proptest::collection::vec(record(), 1..12),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let (mut buf, ends) = image(&records);
        let at = at.index(buf.len());
        buf[at] ^= 1 << bit;
        let out = replay(&buf);
        let damaged = ends.iter().position(|&e| e > at).unwrap();
        prop_assert_eq!(&out.records[..], &records[..damaged]);
        let start = if damaged == 0 { 0 } else { ends[damaged - 1] };
        prop_assert_eq!(out.valid_len, start);
        let corruption = out.corruption.unwrap();
        prop_assert_eq!(corruption.offset, start);
    }

    /// Random bytes never panic the decoder and never yield a record past the input.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let out = replay(&bytes);
        prop_assert!(out.valid_len <= bytes.len());
    }

    /// Frames with a *valid* checksum over random payloads reach the decoder itself:
    /// it must reject or decode them, never panic.
    #[test]
    fn random_payloads_with_valid_checksums_never_panic(
        kind in 0u8..8,
        payload in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let len = (payload.len() as u32).to_le_bytes();
        let crc = crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(&len), &[kind]), &payload);
        let mut frame = len.to_vec();
        frame.extend_from_slice(&crc.to_le_bytes());
        frame.push(kind);
        frame.extend_from_slice(&payload);
        match decode_frame(&frame) {
            Ok((_, n)) => prop_assert_eq!(n, frame.len()),
            Err(reason) => {
                let typed = matches!(
                    reason,
                    CorruptionReason::UnknownType(_) | CorruptionReason::Undecodable { .. }
                );
                prop_assert!(typed, "unexpected reason {:?}", reason);
            }
        }
    }
}

#[test]
fn reasons_are_typed() {
    let mut buf = Vec::new();
    encode(&Record::Forget { txn: TxnId(3) }, &mut buf).unwrap();
    assert!(matches!(
        decode_frame(&buf[..4]),
        Err(CorruptionReason::TornHeader { have: 4 })
    ));
    assert!(matches!(
        decode_frame(&buf[..buf.len() - 1]),
        Err(CorruptionReason::TornPayload { .. })
    ));
    let mut bad = buf.clone();
    bad[FRAME_HEADER] ^= 0x80;
    assert!(matches!(
        decode_frame(&bad),
        Err(CorruptionReason::BadChecksum { .. })
    ));
    let mut huge = buf.clone();
    huge[3] = 0xff;
    assert!(matches!(
        decode_frame(&huge),
        Err(CorruptionReason::TooLong { .. })
    ));
    // A zero-filled (preallocated) tail is corruption, not records.
    buf.extend_from_slice(&[0; 32]);
    let out = replay(&buf);
    assert_eq!(out.records.len(), 1);
    assert!(matches!(
        out.corruption.unwrap().reason,
        CorruptionReason::BadChecksum { .. }
    ));
}

#[test]
fn replay_a_torn_file_then_truncate_and_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mut buf = Vec::new();
    for t in 0..5 {
        encode(
            &Record::Completion {
                txn: TxnId(t),
                client: ClientId(1),
                verdict: Verdict::Commit,
            },
            &mut buf,
        )
        .unwrap();
    }
    let torn = buf.len() - 3;
    std::fs::write(&path, &buf[..torn]).unwrap();
    let out = replay_file(&path).unwrap();
    assert_eq!(out.records.len(), 4);
    // The node truncates to the valid prefix, then appends.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(out.valid_len as u64).unwrap();
    let mut more = Vec::new();
    encode(&Record::Forget { txn: TxnId(9) }, &mut more).unwrap();
    let mut all = std::fs::read(&path).unwrap();
    all.extend_from_slice(&more);
    std::fs::write(&path, &all).unwrap();
    let out = replay_file(&path).unwrap();
    assert_eq!(out.records.len(), 5);
    assert_eq!(out.records[4], Record::Forget { txn: TxnId(9) });
    assert!(out.corruption.is_none());
}

/// A segment whose bad bytes are followed by intact frames is damage, not a torn tail:
/// opening it is refused and the file left as it was (cutting would drop committed
/// decisions). A torn tail alone is cut as before.
#[test]
fn damage_before_intact_frames_is_refused_a_torn_tail_is_cut() {
    use pipewright_storage::log::segments;
    let records: Vec<Record> = (0..3u64)
        .map(|t| Record::Decision {
            txn: TxnId(t + 1),
            client: ClientId(7),
            verdict: Verdict::Commit,
        })
        .collect();
    let mut bytes = Vec::new();
    let mut ends = Vec::new();
    for r in &records {
        encode(r, &mut bytes).unwrap();
        ends.push(bytes.len());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = segments::segment_path(dir.path(), 0);
    // A flipped bit in the second frame, the third intact after it.
    let mut damaged = bytes.clone();
    damaged[ends[0] + FRAME_HEADER] ^= 1;
    std::fs::write(&path, &damaged).unwrap();
    let e = segments::open(dir.path()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(
        e.to_string().contains(&format!("at byte {}", ends[0])),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        damaged,
        "the segment was changed"
    );
    // Torn: the last frame cut short.
    std::fs::write(&path, &bytes[..ends[2] - 3]).unwrap();
    let opened = segments::open(dir.path()).unwrap();
    assert_eq!(opened.replay.records, records[..2]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), ends[1] as u64);
}
