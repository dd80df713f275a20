//! Serving the runtime's metrics to Prometheus.

use std::net::SocketAddr;

/// Installs the Prometheus exporter as the global `metrics` recorder, serving
/// `http://ADDR/metrics`. Call before starting pipelines (handles bind at start).
///
/// Queue-depth gauges are published by [`Running::publish_gauges`](crate::Running::publish_gauges);
/// call it periodically (the CLI does every refresh).
pub fn install(addr: SocketAddr) -> Result<(), metrics_exporter_prometheus::BuildError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
}
