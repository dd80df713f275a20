//! `pipewright top` against a pipeline served live from this process: the real
//! binary, a real socket, the same table the in-process live view draws.
#![cfg(feature = "cli")]

use std::process::Command;

use pipewright::{live, stage, PipelineBuilder, Plan, Runtime};

#[test]
fn top_draws_the_stages_of_a_pipeline_in_another_process() {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then("square", stage::map(|x: u64| x * x))
        .then("odd-only", stage::filter(|x: &u64| x % 2 == 1))
        .output("odd-squares");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let mut tx = running.input(&input).unwrap();
    let rx = running.output(&out).unwrap();
    let collector = std::thread::spawn(move || rx.collect().len());
    for x in 0..10_000u64 {
        tx.send(x).unwrap();
    }
    let server = live::serve(running.watch(), "127.0.0.1:0").unwrap();
    let shown = Command::new(env!("CARGO_BIN_EXE_pipewright"))
        .args([
            "top",
            "--connect",
            &server.local_addr().to_string(),
            "--frames",
            "2",
            "--every-ms",
            "20",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    for name in ["square", "odd-only", "in/s", "plan: spread"] {
        assert!(text.contains(name), "`{name}` missing from:\n{text}");
    }
    drop(tx);
    running.drain().unwrap();
    assert_eq!(collector.join().unwrap(), 5_000);
    // After the run the endpoint still answers, with the final counters.
    let frame = live::LiveClient::connect(server.local_addr())
        .unwrap()
        .frame()
        .unwrap();
    assert_eq!(frame.snapshot.stage("square").unwrap().items_in, 10_000);
}

#[test]
fn top_says_what_is_wrong_when_nothing_listens() {
    // A port that was just free: bind, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let shown = Command::new(env!("CARGO_BIN_EXE_pipewright"))
        .args([
            "top",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--frames",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!shown.status.success());
    let err = String::from_utf8_lossy(&shown.stderr);
    assert!(err.contains("cannot reach the live endpoint"), "{err}");
}

/// Durations no `Duration` can hold are refused by the argument parser with the
/// allowed range, instead of a panic once the run started.
#[test]
fn out_of_range_durations_are_refused_with_the_range() {
    for seconds in ["inf", "1e20", "-1", "nan"] {
        let shown = Command::new(env!("CARGO_BIN_EXE_pipewright"))
            .arg("demo")
            .arg(format!("--seconds={seconds}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&shown.stderr);
        assert_eq!(shown.status.code(), Some(2), "{seconds}: {err}");
        assert!(err.contains("from 0 to 86400"), "{seconds}: {err}");
        assert!(!err.contains("panicked"), "{seconds}: {err}");
    }
}
