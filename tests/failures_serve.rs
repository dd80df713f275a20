//! `pipewright failures serve` as a real process, killed with SIGKILL during
//! ingestion: after a restart on the same data directory, every acknowledged event is
//! there (and nothing that was never sent).

// The tests run the `pipewright` binary, which needs the feature `cli`.
#![cfg(all(feature = "failures", feature = "cli"))]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use pipewright::failures::{generate, unix_now, FleetConfig};

const EXE: &str = env!("CARGO_BIN_EXE_pipewright");

fn spawn(dir: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(EXE)
        .args([
            "failures",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--checkpoint-every",
            "3000",
            "--data",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start pipewright failures serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    eprintln!("{}", line.trim());
    let addr = line
        .split_whitespace()
        .nth(2)
        .and_then(|u| u.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {text:?}")))?;
    Ok((
        status,
        text.split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default(),
    ))
}

/// The number after `"accepted":` in a JSON text.
fn accepted(json: &str) -> u64 {
    let at = json.find("\"accepted\":").expect("an accepted field") + "\"accepted\":".len();
    json[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn kill_9_during_ingestion_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    generate(&FleetConfig::new(9, 40_000, unix_now()), &mut bytes).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let batches: Vec<String> = lines.chunks(500).map(|c| c.join("\n")).collect();
    let acked = Arc::new(AtomicU64::new(0));
    let mut next = 0usize;
    let mut sent_lines = 0u64;
    for (round, kill_after) in [2_000u64, 7_500, 14_000].into_iter().enumerate() {
        let (mut child, addr) = spawn(dir.path());
        if round > 0 {
            let (_, report) = http(addr, "GET", "/v1/report", b"").unwrap();
            let have = accepted(&report);
            let a = acked.load(Ordering::SeqCst);
            eprintln!(
                "round {round}: recovered {have} events; {a} acknowledged, {sent_lines} sent"
            );
            assert!(have >= a, "lost acknowledged events: {have} < {a}");
            assert!(
                have <= sent_lines,
                "more events than sent: {have} > {sent_lines}"
            );
            // Resend what was not acknowledged (at-least-once from the client's side):
            // count from the server's state so the totals stay exact.
            acked.store(have, Ordering::SeqCst);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let client = {
            let acked = acked.clone();
            let stop = stop.clone();
            let batches = batches.clone();
            let start = next;
            std::thread::spawn(move || {
                let mut sent = 0u64;
                let mut i = start;
                while i < batches.len() && !stop.load(Ordering::SeqCst) {
                    sent += batches[i].lines().count() as u64;
                    match http(addr, "POST", "/v1/events", batches[i].as_bytes()) {
                        Ok((200, ack)) => {
                            acked.fetch_add(accepted(&ack), Ordering::SeqCst);
                        }
                        _ => break,
                    }
                    i += 1;
                }
                (i, sent)
            })
        };
        while acked.load(Ordering::SeqCst) < kill_after && !client.is_finished() {
            std::thread::yield_now();
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        stop.store(true, Ordering::SeqCst);
        let (i, sent) = client.join().unwrap();
        next = i;
        sent_lines += sent;
    }
    let (mut child, addr) = spawn(dir.path());
    let (_, report) = http(addr, "GET", "/v1/report", b"").unwrap();
    let have = accepted(&report);
    let a = acked.load(Ordering::SeqCst);
    eprintln!("final: recovered {have} events; {a} acknowledged, {sent_lines} sent");
    assert!(have >= a && have <= sent_lines);
    assert!(a >= 14_000);
    // SIGTERM: a clean stop.
    // SAFETY: kill(2) on our own child's pid.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    assert!(child.wait().unwrap().success());
}
