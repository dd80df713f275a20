//! The ready-made sources on real files and real loopback sockets.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pipewright_runtime::sources::{
    length_prefixed, BadLine, FileError, FileLines, FileRecords, Framing, Line, TcpSource,
    UdpSource,
};
use pipewright_runtime::{stage, PipelineBuilder, Plan, Runtime};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pw-sources-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_for(counter: &AtomicU64, at_least: u64) {
    while counter.load(Ordering::Relaxed) < at_least {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs a file-lines pipeline to its end and returns what came out.
fn read_lines(
    source: FileLines,
    plan: Plan,
) -> (Vec<Result<Line, BadLine>>, pipewright_runtime::Report) {
    let b = PipelineBuilder::new();
    let out = b
        .source("lines", source)
        .then("pass", stage::map(|l: Result<Line, BadLine>| l))
        .output("lines-out");
    let mut running = Runtime::start(b.build().unwrap(), plan).unwrap();
    let rx = running.output(&out).unwrap();
    let reader = std::thread::spawn(move || rx.collect());
    let report = running.join().unwrap();
    (reader.join().unwrap(), report)
}

#[test]
fn file_lines_have_exact_offsets_and_bad_utf8_is_a_typed_error() {
    let dir = temp_dir("lines");
    let path = dir.join("mixed.log");
    let mut content: Vec<u8> = Vec::new();
    content.extend_from_slice(b"first\n");
    content.extend_from_slice(b"windows\r\n");
    content.extend_from_slice(b"\n");
    content.extend_from_slice(b"bad \xff\xfe bytes\n");
    content.extend_from_slice("ünïcode\n".as_bytes());
    content.extend_from_slice(b"no newline at end");
    std::fs::write(&path, &content).unwrap();

    let (items, report) = read_lines(FileLines::open(&path).unwrap(), Plan::fused());
    assert!(report.completed && report.source_errors.is_empty());
    let ok = |offset: u64, text: &str| {
        Ok(Line {
            offset,
            text: text.to_string(),
        })
    };
    assert_eq!(items.len(), 6);
    assert_eq!(items[0], ok(0, "first"));
    assert_eq!(items[1], ok(6, "windows"));
    assert_eq!(items[2], ok(15, ""));
    let bad = items[3].as_ref().unwrap_err();
    let BadLine::NotUtf8 {
        offset,
        bytes,
        error,
    } = bad
    else {
        panic!("expected NotUtf8, got {bad:?}");
    };
    assert_eq!((*offset, bad.offset()), (16, 16));
    assert_eq!(bytes, b"bad \xff\xfe bytes");
    assert_eq!(error.valid_up_to(), 4);
    assert!(bad.to_string().contains("byte 16 is not valid UTF-8"));
    assert_eq!(items[4], ok(29, "ünïcode"));
    assert_eq!(
        items[5],
        ok(29 + "ünïcode\n".len() as u64, "no newline at end")
    );
    // Every offset points at its line in the file.
    for line in items.iter().flatten() {
        let at = line.offset as usize;
        assert_eq!(&content[at..at + line.text.len()], line.text.as_bytes());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_overlong_line_is_skipped_as_a_typed_error_without_being_held() {
    let dir = temp_dir("long");
    let path = dir.join("long.log");
    let mut content = b"short\n".to_vec();
    content.extend(std::iter::repeat_n(b'z', 300_000));
    content.extend_from_slice(b"\r\nafter\n");
    content.extend_from_slice(&[b'q'; 101]);
    content.extend_from_slice(b"\nexactly-100:");
    content.extend_from_slice(&[b'k'; 87]);
    content.extend_from_slice(b"\n");
    content.extend(std::iter::repeat_n(b'e', 5_000)); // over the limit, no newline
    std::fs::write(&path, &content).unwrap();
    let (items, report) = read_lines(FileLines::open(&path).unwrap().max_line(100), Plan::fused());
    assert!(report.completed);
    let ok = |offset: u64, text: String| Ok(Line { offset, text });
    let too_long = |offset: u64, len: u64| {
        Err(BadLine::TooLong {
            offset,
            len,
            max: 100,
        })
    };
    assert_eq!(items.len(), 6, "{items:?}");
    assert_eq!(items[0], ok(0, "short".into()));
    assert_eq!(items[1], too_long(6, 300_002));
    assert_eq!(items[2], ok(300_008, "after".into()));
    assert_eq!(items[3], too_long(300_014, 102));
    let exact = format!("exactly-100:{}", "k".repeat(87));
    assert_eq!(exact.len(), 99);
    assert_eq!(items[4], ok(300_116, exact));
    assert_eq!(items[5], too_long(300_216, 5_000));
    assert_eq!(300_216 + 5_000, content.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_large_file_is_read_whole_through_a_small_ring() {
    let dir = temp_dir("large");
    let path = dir.join("big.log");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in 0..200_000u64 {
        writeln!(file, "line {i} {}", "x".repeat((i % 17) as usize)).unwrap();
    }
    file.into_inner().unwrap().sync_all().unwrap();
    // A 64-slot ring: the source must wait for room many times.
    let plan = Plan::spread(2).ring_capacity(64);
    let (items, report) = read_lines(FileLines::open(&path).unwrap(), plan);
    assert!(report.completed);
    assert_eq!(items.len(), 200_000);
    let mut offset = 0u64;
    for (i, item) in items.iter().enumerate() {
        let line = item.as_ref().unwrap();
        let text = format!("line {i} {}", "x".repeat(i % 17));
        assert_eq!((line.offset, &line.text), (offset, &text));
        offset += text.len() as u64 + 1;
    }
    assert_eq!(offset, std::fs::metadata(&path).unwrap().len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_read_error_ends_the_source_and_is_reported() {
    let dir = temp_dir("dir");
    // Opening a directory succeeds; reading it fails with EISDIR: a real I/O error.
    let (items, report) = read_lines(FileLines::open(&dir).unwrap(), Plan::fused());
    assert!(items.is_empty());
    assert_eq!(report.source_errors.len(), 1);
    assert_eq!(report.source_errors[0].stage, "lines");
    let message = &report.source_errors[0].message;
    assert!(message.contains("failed at byte 0"), "{message}");
    assert!(message.contains("directory"), "{message}");
    let missing = FileLines::open(dir.join("missing")).unwrap_err();
    assert!(matches!(missing, FileError::Open { .. }));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn following_a_growing_file_until_stopped() {
    let dir = temp_dir("follow");
    let path = dir.join("growing.log");
    let mut file = std::fs::File::create(&path).unwrap();
    for i in 0..100 {
        writeln!(file, "early {i}").unwrap();
    }
    file.sync_all().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let b = PipelineBuilder::new();
    let (count, keep) = (seen.clone(), lines.clone());
    b.source(
        "tail",
        FileLines::open(&path)
            .unwrap()
            .follow(Duration::from_millis(2)),
    )
    .for_each("sink", move |l| {
        keep.lock().unwrap().push(l.unwrap().text);
        count.fetch_add(1, Ordering::Relaxed);
    });
    let running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    wait_for(&seen, 100);
    for i in 0..50 {
        writeln!(file, "late {i}").unwrap();
    }
    write!(file, "half").unwrap();
    file.sync_all().unwrap();
    wait_for(&seen, 150);
    // The half line is held until its newline arrives.
    writeln!(file, " and the rest").unwrap();
    file.sync_all().unwrap();
    wait_for(&seen, 151);
    running.stop_handle().stop();
    let report = running.drain().unwrap();
    assert_eq!(report.snapshot.stage("sink").unwrap().items_in, 151);
    let lines = lines.lock().unwrap();
    assert_eq!(lines[100], "late 0");
    assert_eq!(lines[150], "half and the rest");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fixed_records_with_offsets_and_a_partial_tail() {
    let dir = temp_dir("records");
    let path = dir.join("records.bin");
    let mut content = Vec::new();
    for i in 0..1000u32 {
        content.extend_from_slice(&i.to_le_bytes());
        content.extend_from_slice(&[i as u8; 12]);
    }
    content.extend_from_slice(&[9; 5]);
    std::fs::write(&path, &content).unwrap();
    let b = PipelineBuilder::new();
    let out = b
        .source("records", FileRecords::open(&path, 16).unwrap())
        .output("r");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let rx = running.output(&out).unwrap();
    let reader = std::thread::spawn(move || rx.collect());
    let report = running.join().unwrap();
    let records = reader.join().unwrap();
    assert_eq!(records.len(), 1000);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, i as u64 * 16);
        assert_eq!(r.bytes[..4], (i as u32).to_le_bytes());
    }
    assert_eq!(report.source_errors.len(), 1);
    assert!(report.source_errors[0]
        .message
        .contains("partial record of 5 bytes at byte 16000"));
    assert!(matches!(
        FileRecords::open(&path, 0),
        Err(FileError::ZeroRecordSize(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs a TCP source with `clients` connections each sending `per_client` messages,
/// then one connection that breaks the framing; every message must arrive, in order
/// per connection.
fn tcp_roundtrip(framing: Framing, encode: fn(&str) -> Vec<u8>, oversized: Vec<u8>) {
    let source = TcpSource::bind("127.0.0.1:0", framing).unwrap().queue(64);
    let addr = source.local_addr();
    let stats = source.stats();
    let seen = Arc::new(AtomicU64::new(0));
    let per_connection: Arc<Mutex<HashMap<u64, Vec<String>>>> = Arc::default();
    let b = PipelineBuilder::new();
    let (count, keep) = (seen.clone(), per_connection.clone());
    b.source_async("tcp", source)
        .then(
            "text",
            stage::map(|m: pipewright_runtime::sources::Message| {
                (m.connection, m.text().unwrap().to_string())
            }),
        )
        .for_each("sink", move |(connection, text)| {
            keep.lock()
                .unwrap()
                .entry(connection)
                .or_default()
                .push(text);
            count.fetch_add(1, Ordering::Relaxed);
        });
    let running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let (clients, per_client) = (3u64, 5_000u64);
    let senders: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(addr).unwrap();
                let mut bytes = Vec::new();
                for i in 0..per_client {
                    bytes.extend(encode(&format!("client {c} message {i}")));
                }
                stream.write_all(&bytes).unwrap();
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    wait_for(&seen, clients * per_client);
    let mut bad = std::net::TcpStream::connect(addr).unwrap();
    bad.write_all(&oversized).unwrap();
    drop(bad);
    while stats.errors() < 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    running.stop_handle().stop();
    let report = running.drain().unwrap();
    assert!(report.completed && report.source_errors.is_empty());
    assert_eq!(seen.load(Ordering::Relaxed), clients * per_client);
    assert_eq!(
        report.snapshot.stage("tcp").unwrap().items_out,
        clients * per_client
    );
    assert_eq!(stats.connections(), clients + 1);
    assert_eq!(stats.errors(), 1);
    let per_connection = per_connection.lock().unwrap();
    assert_eq!(per_connection.len(), clients as usize);
    for messages in per_connection.values() {
        let client = messages[0].split(' ').nth(1).unwrap().to_string();
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(m, &format!("client {client} message {i}"));
        }
    }
}

#[test]
fn tcp_lines_from_several_connections() {
    tcp_roundtrip(
        Framing::Lines { max: 100 },
        |s| format!("{s}\n").into_bytes(),
        vec![b'x'; 1000],
    );
}

#[test]
fn tcp_length_prefixed_frames_from_several_connections() {
    tcp_roundtrip(
        Framing::LengthPrefixed { max: 100 },
        |s| length_prefixed(s.as_bytes()),
        length_prefixed(&[b'y'; 101]),
    );
}

#[test]
fn udp_datagrams_on_loopback() {
    let source = UdpSource::bind("127.0.0.1:0").unwrap();
    let addr = source.local_addr();
    let seen = Arc::new(AtomicU64::new(0));
    let sum = Arc::new(AtomicU64::new(0));
    let b = PipelineBuilder::new();
    let (count, total) = (seen.clone(), sum.clone());
    b.source_async("udp", source).for_each(
        "sink",
        move |d: pipewright_runtime::sources::Datagram| {
            let n = u64::from_le_bytes(d.data[..8].try_into().unwrap());
            total.fetch_add(n, Ordering::Relaxed);
            count.fetch_add(1, Ordering::Relaxed);
        },
    );
    let running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Batches of 50, each waited for: loopback UDP never overflows the receive buffer.
    let mut sent = 0u64;
    for batch in 0..40u64 {
        for i in 0..50u64 {
            sender
                .send_to(&(batch * 50 + i).to_le_bytes(), addr)
                .unwrap();
            sent += 1;
        }
        wait_for(&seen, sent);
    }
    running.stop_handle().stop();
    let report = running.drain().unwrap();
    assert_eq!(report.snapshot.stage("udp").unwrap().items_out, 2000);
    assert_eq!(sum.load(Ordering::Relaxed), (0..2000u64).sum::<u64>());
}

#[test]
fn an_interval_source_ticks_until_stopped() {
    let seen = Arc::new(AtomicU64::new(0));
    let b = PipelineBuilder::new();
    let count = seen.clone();
    b.source_async(
        "tick",
        pipewright_stages::source::interval(Duration::from_millis(1)),
    )
    .for_each("sink", move |_| {
        count.fetch_add(1, Ordering::Relaxed);
    });
    let running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    wait_for(&seen, 5);
    running.stop_handle().stop();
    let report = running.drain().unwrap();
    let ticks = report.snapshot.stage("tick").unwrap().items_out;
    assert!(ticks >= 5);
    assert_eq!(seen.load(Ordering::Relaxed), ticks);
}

#[test]
fn a_full_pipeline_stops_reading_tcp_and_the_sender_blocks() {
    use std::sync::atomic::AtomicBool;

    let source = TcpSource::bind("127.0.0.1:0", Framing::LINES)
        .unwrap()
        .queue(64);
    let addr = source.local_addr();
    let stats = source.stats();
    let gate = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let b = PipelineBuilder::new();
    let (open, count) = (gate.clone(), seen.clone());
    b.source_async("tcp", source).for_each("sink", move |_| {
        // Held shut until the sender has been pushed back.
        while !open.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        count.fetch_add(1, Ordering::Relaxed);
    });
    let running = Runtime::start(b.build().unwrap(), Plan::spread(2).ring_capacity(64)).unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_nonblocking(true).unwrap();
    let line = b"a line of the kind a log shipper sends, long enough to fill buffers\n";
    let (mut lines, mut written_in_line) = (0u64, 0usize);
    // Write until the kernel says the peer stopped reading (bounded: 1 GiB).
    let mut total = 0usize;
    loop {
        match stream.write(&line[written_in_line..]) {
            Ok(n) => {
                total += n;
                written_in_line += n;
                if written_in_line == line.len() {
                    lines += 1;
                    written_in_line = 0;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("write failed: {e}"),
        }
        assert!(total < 1 << 30, "the source never pushed back");
    }
    // Everything in the kernel's buffers is unread: the source took only what fits
    // in its queue, its burst, the ring and the sink's burst.
    let queued = stats.messages();
    assert!(
        queued <= 64 + 64 + 3 * 32 + 1,
        "{queued} messages taken while the pipeline was full"
    );
    assert!(lines > 10 * queued, "{lines} lines sent, {queued} taken");
    // Open the gate, finish the last line, and everything arrives.
    gate.store(true, Ordering::Release);
    stream.set_nonblocking(false).unwrap();
    // (A whole line is not pending when the kernel pushed back between two lines.)
    if written_in_line > 0 {
        stream.write_all(&line[written_in_line..]).unwrap();
        lines += 1;
    }
    drop(stream);
    wait_for(&seen, lines);
    running.stop_handle().stop();
    let report = running.drain().unwrap();
    assert_eq!(report.snapshot.stage("sink").unwrap().items_in, lines);
    println!("{lines} lines; at most {queued} taken while full");
}
