//! `serve` in process: HTTP ingestion with per-line errors in the acknowledgement,
//! the JSON report, metrics, recovery after a restart, and the HTML report opened in
//! headless Chromium (screenshot not blank, the planted finding in the DOM).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;

use pipewright_failures::{generate, FleetConfig, ServeOptions, Server};

/// One HTTP/1.1 request on a fresh connection: (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

fn fleet() -> (Vec<u8>, u64) {
    let mut bytes = Vec::new();
    let now = pipewright_failures::unix_now();
    let s = generate(&FleetConfig::new(5, 60_000, now), &mut bytes).unwrap();
    (bytes, s.events)
}

fn post_all(addr: SocketAddr, bytes: &[u8]) -> u64 {
    let text = std::str::from_utf8(bytes).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut accepted = 0;
    for chunk in lines.chunks(4000) {
        let body = chunk.join("\n");
        let (status, ack) = http(addr, "POST", "/v1/events", body.as_bytes());
        assert_eq!(status, 200, "{ack}");
        let v: serde_json::Value = serde_json::from_str(&ack).unwrap();
        accepted += v["accepted"].as_u64().unwrap();
    }
    accepted
}

fn start(rt: &tokio::runtime::Runtime, dir: &Path) -> Server {
    let mut opts = ServeOptions::new(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap());
    opts.checkpoint_every = 25_000;
    rt.block_on(Server::start(opts)).unwrap()
}

#[test]
fn ingests_over_http_reports_and_recovers() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (bytes, events) = fleet();
    let server = start(&rt, dir.path());
    let addr = server.local_addr();
    // A batch with bad lines: those are refused with their reasons, the rest kept.
    let good = std::str::from_utf8(&bytes).unwrap().lines().next().unwrap();
    let bad = format!(
        "{good}\n{{oops\n{}\n{good}\n",
        good.replace("\"hours\":", "\"hours\":-")
    );
    let (status, ack) = http(addr, "POST", "/v1/events", bad.as_bytes());
    assert_eq!(status, 200);
    let ack: serde_json::Value = serde_json::from_str(&ack).unwrap();
    assert_eq!(ack["accepted"], 2);
    assert_eq!(ack["rejected"], 2);
    assert_eq!(ack["errors"][0]["line"], 2);
    assert_eq!(ack["errors"][0]["reason"], "malformed_json");
    assert_eq!(ack["errors"][1]["reason"], "bad_exposure");

    assert_eq!(post_all(addr, &bytes), events);
    let (status, report) = http(addr, "GET", "/v1/report", b"");
    assert_eq!(status, 200);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["accepted"].as_u64().unwrap(), events + 2);
    assert_eq!(report["bad_lines"]["malformed_json"], 1);
    let findings = report["findings"].as_array().unwrap();
    assert!(findings
        .iter()
        .any(|f| f["app_type"] == "web" && f["combination"]["kernel"] == "6.1.12"));
    for f in findings {
        for field in [
            "failures",
            "exposure",
            "rate",
            "baseline_rate",
            "rate_ratio",
            "p_value",
            "q_value",
            "suggestion",
        ] {
            assert!(f.get(field).is_some(), "finding without {field}: {f}");
        }
    }
    let (status, metrics) = http(addr, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!("failures_state_accepted_events {}", events + 2)),
        "{metrics}"
    );
    assert!(metrics.contains("failures_state_bad_lines{reason=\"bad_exposure\"} 1"));
    let (status, _) = http(addr, "GET", "/nope", b"");
    assert_eq!(status, 404);

    // Checkpoints released the log's prefix: fewer blocks than its size.
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dir.path().join("events.log")).unwrap();
        assert!(
            m.blocks() * 512 < m.len() / 2,
            "log of {} bytes holds {} blocks",
            m.len(),
            m.blocks()
        );
    }
    let before = server.aggregates().canonical();
    server.shutdown().unwrap();
    // Restart: the shutdown's checkpoint gives back the same state, the counts of
    // refused lines (which the log does not hold) included, with nothing to replay.
    let server = start(&rt, dir.path());
    let r = server.recovered().clone();
    assert_eq!((r.checkpointed, r.events), (events + 2, 0), "{r:?}");
    assert_eq!(server.aggregates().canonical(), before);
    chromium_check(server.local_addr(), dir.path());
    server.shutdown().unwrap();
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

fn chromium_check(addr: SocketAddr, dir: &Path) {
    let Some(bin) = chromium() else {
        if std::env::var("PIPEWRIGHT_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") {
            panic!(
                "chromium is required (PIPEWRIGHT_REQUIRE_CHROMIUM=1): apt-get install chromium"
            );
        }
        eprintln!("skipped: chromium not found (Debian package chromium)");
        return;
    };
    let url = format!("http://{addr}/");
    let profile = dir.join("chromium-profile");
    let shot = dir.join("report.png");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ];
    let out = Command::new(bin)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<svg id=\"rates\""),
        "no rates chart in the DOM: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dom.contains("kernel=6.1.12"),
        "planted finding not in the DOM"
    );
    assert!(dom.contains("class=\"heatmap\"") && dom.contains("class=\"series\""));
    let out = Command::new(bin)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--window-size=1200,1600")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::fs::File::open(&shot).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = &buf[..info.buffer_size()];
    let channels = info.color_type.samples();
    let mut colours = std::collections::BTreeSet::new();
    let mut non_white = 0usize;
    for p in px.chunks(channels) {
        if p[..3].iter().any(|&c| c < 240) {
            non_white += 1;
        }
        colours.insert((p[0] >> 4, p[1] >> 4, p[2] >> 4));
    }
    let total = px.len() / channels;
    eprintln!(
        "screenshot {}x{}: {non_white} of {total} pixels not white, {} colours",
        info.width,
        info.height,
        colours.len()
    );
    assert!(non_white * 100 > total, "the screenshot is blank");
    assert!(
        colours.len() > 10,
        "the screenshot has {} colours",
        colours.len()
    );
}
