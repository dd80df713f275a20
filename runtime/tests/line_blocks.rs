//! `LineBlocks` on real files: whatever the block size, the lines of its blocks are
//! the file's lines (offsets, `\r\n`, bad UTF-8, a last line without `\n`), and an
//! over-long line is skipped and reported once.
#![cfg(not(loom))]

use std::collections::VecDeque;
use std::path::PathBuf;

use pipewright_runtime::sources::{BadLine, LineBlock, LineBlocks};
use pipewright_runtime::{Outbox, Source, SourceState};
use proptest::prelude::*;

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pw-blocks-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("file");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Pulls the source dry, a few items per pull, as a pipeline would.
fn drain(mut source: LineBlocks) -> Vec<Result<LineBlock, BadLine>> {
    let mut items = VecDeque::new();
    loop {
        match source.pull(&mut Outbox::new(&mut items), 3) {
            SourceState::Ready => {}
            SourceState::Exhausted => return items.into(),
            other => panic!("unexpected source state {other:?}"),
        }
    }
}

/// What the lines of the blocks say: (offset, Ok(text) | Err(bad line's offset)).
fn lines_of(items: &[Result<LineBlock, BadLine>]) -> Vec<(u64, Result<String, String>)> {
    let mut lines = Vec::new();
    for item in items {
        match item {
            Ok(block) => {
                assert!(!block.bytes.is_empty(), "no empty blocks");
                for line in block.lines() {
                    lines.push(match line {
                        Ok(l) => (l.offset, Ok(l.text.to_string())),
                        Err(bad) => (bad.offset(), Err(bad.to_string())),
                    });
                }
            }
            Err(bad) => lines.push((bad.offset(), Err(bad.to_string()))),
        }
    }
    lines
}

/// The file's lines by a plain split.
fn expected(bytes: &[u8]) -> Vec<(u64, Result<String, ()>)> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    for raw in bytes.split_inclusive(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.push((
            offset,
            std::str::from_utf8(line)
                .map(str::to_string)
                .map_err(|_| ()),
        ));
        offset += raw.len() as u64;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn blocks_hold_exactly_the_files_lines(
        lines in proptest::collection::vec(
            prop_oneof![
                "[a-z ]{0,40}".prop_map(|s| s.into_bytes()),
                Just(vec![0xff, b'x']),
                "[a-z]{0,5}".prop_map(|s| format!("{s}\r").into_bytes()),
            ],
            0..60,
        ),
        last_newline in any::<bool>(),
        block in 1usize..100,
    ) {
        let mut bytes = lines.join(&b'\n');
        if last_newline && !bytes.is_empty() {
            bytes.push(b'\n');
        }
        let path = temp_file(&format!("prop-{block}-{}", bytes.len()), &bytes);
        let items = drain(LineBlocks::open(&path).unwrap().block_size(block));
        let got = lines_of(&items);
        let want = expected(&bytes);
        prop_assert_eq!(got.len(), want.len());
        for ((go, gl), (wo, wl)) in got.iter().zip(&want) {
            prop_assert_eq!(go, wo);
            match (gl, wl) {
                (Ok(g), Ok(w)) => prop_assert_eq!(g, w),
                (Err(_), Err(())) => {}
                _ => prop_assert!(false, "line at {} decoded differently", go),
            }
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}

#[test]
fn an_over_long_line_is_skipped_and_reported_once() {
    let long = "x".repeat(5000);
    let content = format!("short\n{long}\nafter\nlast");
    let path = temp_file("long", content.as_bytes());
    let items = drain(
        LineBlocks::open(&path)
            .unwrap()
            .block_size(256)
            .max_line(1000),
    );
    let lines = lines_of(&items);
    assert_eq!(lines[0], (0, Ok("short".to_string())));
    assert_eq!(lines[1].0, 6);
    assert!(lines[1]
        .1
        .as_ref()
        .unwrap_err()
        .contains("over the limit of 1000"));
    assert_eq!(lines[2], (6 + 5001, Ok("after".to_string())));
    assert_eq!(lines[3], (6 + 5001 + 6, Ok("last".to_string())));
    assert_eq!(lines.len(), 4);
    let too_long = items
        .iter()
        .filter(|i| matches!(i, Err(BadLine::TooLong { len: 5001, .. })))
        .count();
    assert_eq!(too_long, 1);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
