//! io_uring file stages on real files: the group-commit sink acknowledges exactly the
//! records that are on disk, in order; the reader returns the file's bytes.
#![cfg(not(loom))]

use std::path::PathBuf;

use pipewright_runtime::uring::{FileReader, FileSink, ReadRange};
use pipewright_runtime::{IterSource, PipelineBuilder, Plan, Runtime};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pipewright-uring-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("file")
}

#[test]
fn group_commit_sink_acknowledges_durable_records_in_order() {
    let path = scratch("sink");
    let records: Vec<Vec<u8>> = (0..5_000u32)
        .map(|i| format!("record {i:05} {}\n", "x".repeat((i % 97) as usize)).into_bytes())
        .collect();
    let b = PipelineBuilder::new();
    let acks = b
        .source("records", IterSource(records.clone().into_iter()))
        .then_async("log", FileSink::create(&path).unwrap())
        .output("acks");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let rx = running.output(&acks).unwrap();
    // Read acknowledgements while the pipeline runs: a full output stops the pipeline.
    let reader = std::thread::spawn(move || rx.collect());
    let report = running.join().unwrap();
    let acks = reader.join().unwrap();
    assert!(report.completed);
    assert_eq!(acks.len(), records.len(), "every record acknowledged once");
    let on_disk = std::fs::read(&path).unwrap();
    let mut offset = 0u64;
    for (ack, record) in acks.iter().zip(&records) {
        assert_eq!(ack.offset, offset, "acknowledged in order, back to back");
        assert_eq!(
            &on_disk[ack.offset as usize..ack.offset as usize + ack.len],
            &record[..]
        );
        offset += record.len() as u64;
    }
    assert_eq!(on_disk.len() as u64, offset);
    let log = report.snapshot.stage("log").unwrap();
    assert!(
        log.bursts < records.len() as u64 / 4,
        "records were committed in groups ({} bursts)",
        log.bursts
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn appending_continues_after_the_existing_end() {
    let path = scratch("append");
    std::fs::write(&path, b"head\n").unwrap();
    let b = PipelineBuilder::new();
    let acks = b
        .source(
            "records",
            IterSource([b"one\n".to_vec(), b"two\n".to_vec()].into_iter()),
        )
        .then_async("log", FileSink::append(&path).unwrap())
        .output("acks");
    let mut running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let rx = running.output(&acks).unwrap();
    running.join().unwrap();
    let acks = rx.collect();
    assert_eq!(acks[0].offset, 5);
    assert_eq!(std::fs::read(&path).unwrap(), b"head\none\ntwo\n");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn reader_returns_the_file_in_order() {
    let path = scratch("reader");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let b = PipelineBuilder::new();
    let chunks = b
        .source(
            "ranges",
            IterSource(ReadRange::chunks(content.len() as u64, 64 * 1024)),
        )
        .then_async("read", FileReader::open(&path).unwrap())
        .output("chunks");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let rx = running.output(&chunks).unwrap();
    running.join().unwrap();
    let mut rebuilt = Vec::new();
    for chunk in rx.collect() {
        assert_eq!(chunk.offset, rebuilt.len() as u64);
        rebuilt.extend_from_slice(&chunk.data);
    }
    assert_eq!(rebuilt, content);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn a_read_error_is_a_typed_failure_not_a_panic() {
    let path = scratch("readerr");
    std::fs::write(&path, b"short").unwrap();
    let b = PipelineBuilder::new();
    // A range far past the end reads 0 bytes (not an error); a directory fd fails.
    let dir = path.parent().unwrap().to_path_buf();
    let chunks = b
        .source(
            "ranges",
            IterSource(
                [ReadRange {
                    offset: 1 << 40,
                    len: 16,
                }]
                .into_iter(),
            ),
        )
        .then_async("read", FileReader::open(&dir).unwrap())
        .output("chunks");
    let mut running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let rx = running.output(&chunks).unwrap();
    let report = running.join().unwrap();
    assert!(rx.collect().is_empty());
    assert_eq!(
        report.snapshot.stage("read").unwrap().dropped_total(),
        1,
        "EISDIR counted as an error drop"
    );
    let _ = std::fs::remove_dir_all(dir);
}
