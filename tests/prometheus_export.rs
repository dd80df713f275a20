//! The Prometheus exporter serves per-stage counters over real HTTP.
#![cfg(feature = "prometheus")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use pipewright::layer::MetricsLayer;
use pipewright::{stage, Layer, PipelineBuilder, Plan, Runtime};

fn scrape(port: u16) -> String {
    for _ in 0..50 {
        if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) {
            conn.write_all(
                b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
            let mut body = String::new();
            conn.read_to_string(&mut body).unwrap();
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the exporter never listened on port {port}");
}

#[test]
fn stage_counters_reach_prometheus() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    pipewright::prometheus::install(([127, 0, 0, 1], port).into()).unwrap();

    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    numbers
        .then(
            "double",
            MetricsLayer::new("doubler").layer(stage::map(|x: u64| x * 2)),
        )
        .then("multiple-of-4", stage::filter(|x: &u64| x % 4 == 0))
        .for_each("sink", |_| {});
    let running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let mut tx = running.input(&input).unwrap();
    for i in 0..100 {
        tx.send(i).unwrap();
    }
    drop(tx);
    running.publish_gauges();
    running.drain().unwrap();

    let body = scrape(port);
    for line in [
        "pipewright_stage_items_in_total{stage=\"double\"} 100",
        "pipewright_stage_items_out_total{stage=\"multiple-of-4\"} 50",
        "pipewright_layer_items_in_total{layer=\"doubler\"} 100",
    ] {
        assert!(body.contains(line), "missing `{line}` in:\n{body}");
    }
    assert!(
        body.contains("pipewright_stage_queue_depth"),
        "gauges published:\n{body}"
    );
}
