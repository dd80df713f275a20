//! The S3 backend against a real S3-compatible server (`s3rver`, the npm package,
//! started by each test on its own port and directory), and against raw sockets that
//! hang or throttle: oracle reads through the cache equal the objects' bytes,
//! write-back reaches S3 before eviction and at flush, a stopped server gives typed
//! errors while cached data keeps being served, and a restarted one recovers.
//!
//! Skips with one line when `s3rver` is missing, unless `PIPEWRIGHT_REQUIRE_S3=1`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use pipewright_cache::{
    BackendErrorKind, Cache, CacheConfig, CacheError, RetryPolicy, S3Backend, S3Config, S3Error,
};

const BUCKET: &str = "pw-test";
const PART: u64 = 64 << 10;

fn have_s3rver() -> bool {
    let ok = Command::new("s3rver")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("PIPEWRIGHT_REQUIRE_S3").as_deref() == Ok("1") {
            panic!("s3rver not found and PIPEWRIGHT_REQUIRE_S3=1 (npm install -g s3rver@3.7)");
        }
        println!("skipped: s3rver not found (npm package s3rver@3.7: npm install -g s3rver@3.7)");
    }
    ok
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running s3rver; killed (SIGKILL) on drop or by `stop`.
struct S3rver {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl S3rver {
    fn start(dir: &Path, port: u16) -> S3rver {
        let mut child = Command::new("s3rver")
            .arg("-d")
            .arg(dir)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "--silent"])
            .args(["--configure-bucket", BUCKET])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3rver");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return S3rver {
                    child: Some(child),
                    port,
                    dir: dir.to_path_buf(),
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("s3rver did not listen on {port} within 10 s");
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        let again = S3rver::start(&self.dir.clone(), self.port);
        *self = again;
    }
}

impl Drop for S3rver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config(endpoint: &str, prefix: &str) -> S3Config {
    let mut c = S3Config::from_url(&format!("s3://{BUCKET}/{prefix}")).unwrap();
    c.endpoint = Some(endpoint.to_string());
    c.allow_http = true;
    c.access_key_id = Some("S3RVER".into());
    c.secret_access_key = Some("S3RVER".into());
    c.part_size = PART;
    c.request_timeout = Duration::from_secs(2);
    c.retry = RetryPolicy {
        max_attempts: 3,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
    };
    c
}

/// A plain object_store client of the same bucket: the test's independent view.
fn direct(endpoint: &str) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("S3RVER")
        .with_secret_access_key("S3RVER")
        .build()
        .unwrap()
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Uploads `data` as the volume `name`'s parts, straight through object_store.
async fn upload(s3: &AmazonS3, backend: &S3Backend, name: &str, data: &[u8]) {
    for (i, part) in data.chunks(PART as usize).enumerate() {
        let key = ObjectPath::from(backend.part_key(name, i as u64));
        s3.put(&key, PutPayload::from(part.to_vec())).await.unwrap();
    }
}

async fn object_bytes(s3: &AmazonS3, backend: &S3Backend, name: &str, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    for i in 0..size.div_ceil(PART as usize) {
        let key = ObjectPath::from(backend.part_key(name, i as u64));
        match s3.get(&key).await {
            Ok(r) => out.extend_from_slice(&r.bytes().await.unwrap()),
            Err(object_store::Error::NotFound { .. }) => {
                out.resize(out.len() + PART as usize, 0);
            }
            Err(e) => panic!("{e}"),
        }
    }
    out.truncate(size);
    out
}

fn cache_config(dir: &Path, chunks: u32) -> CacheConfig {
    let mut cfg = CacheConfig::new(dir.join("cache"), chunks);
    cfg.chunk_size = PART;
    cfg.low_watermark = 1;
    cfg.high_watermark = 2;
    cfg.eviction_batch = 2;
    cfg.flush_deadline = Duration::from_secs(3600); // only eviction and flush() write back
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_reads_through_the_cache_equal_the_objects() {
    if !have_s3rver() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = S3rver::start(&dir.path().join("s3"), free_port());
    let size = 2 << 20; // 32 parts of 64 KiB
    let data = pattern(size, 42);
    let backend = S3Backend::connect(config(&server.endpoint(), "vols"))
        .await
        .unwrap();
    assert_eq!(
        backend.create_volume("disk0", size as u64).await.unwrap(),
        PART
    );
    upload(&direct(&server.endpoint()), &backend, "disk0", &data).await;
    // A second connection lists the volume from its manifest.
    let backend = Arc::new(
        S3Backend::connect(config(&server.endpoint(), "vols"))
            .await
            .unwrap(),
    );
    let cache = Cache::open(cache_config(dir.path(), 6), backend.clone())
        .await
        .unwrap();
    let disk = cache.volume("disk0").unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let reads = 600;
    for _ in 0..reads {
        let off = rng.u64(0..(size as u64 - 9000));
        let len = rng.u64(1..9000);
        let got = cache.read(disk, off, len).await.unwrap();
        assert_eq!(
            got,
            &data[off as usize..(off + len) as usize],
            "read {off}+{len}"
        );
    }
    let s = cache.stats();
    let s3 = backend.stats();
    println!(
        "{reads} oracle reads over S3: {} hits, {} misses, {} fills, {} evictions; S3 {} GETs, {} bytes",
        s.hits, s.misses, s.fills, s.evictions, s3.gets, s3.bytes_read
    );
    assert!(
        s.evictions > 0 && s.fills > 6,
        "the cache must cycle: {s:?}"
    );
    assert_eq!(s3.failed_ops, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_reaches_s3_at_flush_and_before_eviction() {
    if !have_s3rver() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = S3rver::start(&dir.path().join("s3"), free_port());
    let size = 1 << 20;
    let s3 = direct(&server.endpoint());
    let backend = Arc::new(
        S3Backend::connect(config(&server.endpoint(), ""))
            .await
            .unwrap(),
    );
    backend.create_volume("vol", size as u64).await.unwrap();
    let mut oracle = pattern(size, 9);
    upload(&s3, &backend, "vol", &oracle).await;
    let cache = Cache::open(cache_config(dir.path(), 5), backend.clone())
        .await
        .unwrap();
    let vol = cache.volume("vol").unwrap();

    // Two blocks of part 1: write-back holds them in the cache only.
    let w = pattern(8192, 1);
    cache.write(vol, PART + 4096, &w).await.unwrap();
    oracle[(PART + 4096) as usize..(PART + 4096) as usize + 8192].copy_from_slice(&w);
    assert_ne!(object_bytes(&s3, &backend, "vol", size).await, oracle);
    cache.flush().await.unwrap();
    assert_eq!(
        object_bytes(&s3, &backend, "vol", size).await,
        oracle,
        "flush wrote the dirty blocks into their part object"
    );

    // A write to part 3, then reads of other parts until part 3's chunk is evicted:
    // its dirty blocks reach S3 without any flush() call.
    let w = pattern(4096, 2);
    cache.write(vol, 3 * PART + 12288, &w).await.unwrap();
    oracle[(3 * PART + 12288) as usize..(3 * PART + 12288) as usize + 4096].copy_from_slice(&w);
    let before = cache.stats();
    for part in [5u64, 6, 7, 8, 9, 10, 11, 12] {
        let got = cache.read(vol, part * PART, 4096).await.unwrap();
        assert_eq!(
            got,
            &oracle[(part * PART) as usize..(part * PART) as usize + 4096]
        );
    }
    let after = cache.stats();
    assert!(
        after.dirty_evictions > before.dirty_evictions,
        "the dirty chunk was evicted: {after:?}"
    );
    assert_eq!(
        object_bytes(&s3, &backend, "vol", size).await,
        oracle,
        "eviction wrote the dirty block back"
    );
    // And reading it again through the cache (a refill from S3) gives the new bytes.
    let got = cache.read(vol, 3 * PART, PART).await.unwrap();
    assert_eq!(got, &oracle[(3 * PART) as usize..(4 * PART) as usize]);
    println!(
        "write-back over S3: {} flushes, {} dirty evictions, {} PUTs",
        after.flushes,
        after.dirty_evictions,
        backend.stats().puts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_gives_typed_errors_and_cached_data_is_still_served() {
    if !have_s3rver() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = S3rver::start(&dir.path().join("s3"), free_port());
    let size = 1 << 20;
    let data = pattern(size, 3);
    let mut cfg = config(&server.endpoint(), "p");
    cfg.request_timeout = Duration::from_millis(500);
    let backend = Arc::new(S3Backend::connect(cfg).await.unwrap());
    backend.create_volume("d", size as u64).await.unwrap();
    upload(&direct(&server.endpoint()), &backend, "d", &data).await;
    let cache = Cache::open(cache_config(dir.path(), 8), backend.clone())
        .await
        .unwrap();
    let d = cache.volume("d").unwrap();
    for part in 0..4u64 {
        cache.read(d, part * PART, PART).await.unwrap();
    }

    server.stop();
    // Cached chunks keep being served.
    for part in 0..4u64 {
        let got = cache.read(d, part * PART + 100, 5000).await.unwrap();
        assert_eq!(
            got,
            &data[(part * PART + 100) as usize..(part * PART + 5100) as usize]
        );
    }
    // A miss gets a typed backend error, as many times as asked.
    for _ in 0..3 {
        match cache.read(d, 10 * PART, 4096).await {
            Err(CacheError::Backend { source, .. }) => {
                assert_eq!(BackendErrorKind::of(&source), BackendErrorKind::Unavailable);
                let inner = source.get_ref().and_then(|e| e.downcast_ref::<S3Error>());
                assert!(
                    matches!(inner, Some(S3Error::Unavailable { attempts: 3, .. })),
                    "{source}"
                );
            }
            other => panic!("expected a backend error, got {other:?}"),
        }
    }
    let s3 = backend.stats();
    assert!(
        s3.unavailable >= 9 && s3.retries >= 6 && s3.failed_ops >= 3,
        "{s3:?}"
    );
    assert!(cache.stats().backend_errors >= 3);

    // The server comes back: the same reads succeed, with the objects' bytes.
    server.restart();
    let got = cache.read(d, 10 * PART, 4096).await.unwrap();
    assert_eq!(
        got,
        &data[(10 * PART) as usize..(10 * PART) as usize + 4096]
    );
    println!(
        "outage: {} failed S3 operations ({} unavailable attempts, {} retries), then recovered",
        s3.failed_ops, s3.unavailable, s3.retries
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_an_auth_error() {
    if !have_s3rver() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = S3rver::start(&dir.path().join("s3"), free_port());
    let mut cfg = config(&server.endpoint(), "");
    cfg.access_key_id = Some("NOT-A-KEY".into());
    let err = S3Backend::connect(cfg).await.unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::Auth, "{err}");
}

/// A listener that accepts connections and answers each request with `reply` (or
/// never, when `reply` is None), for `conns` connections.
fn raw_server(reply: Option<&'static str>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            match reply {
                Some(r) => {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 {
                                return;
                            }
                            if s.write_all(r.as_bytes()).is_err() {
                                return;
                            }
                        }
                    });
                }
                None => held.push(s), // read nothing, answer nothing
            }
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_is_a_timeout_and_a_throttling_one_is_throttled() {
    let policy = RetryPolicy {
        max_attempts: 2,
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    };
    let port = raw_server(None);
    let mut cfg = config(&format!("http://127.0.0.1:{port}"), "");
    cfg.request_timeout = Duration::from_millis(300);
    cfg.retry = policy;
    let err = S3Backend::connect(cfg).await.unwrap_err();
    assert!(matches!(err, S3Error::Timeout { attempts: 2, .. }), "{err}");

    const SLOW_DOWN: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: 87\r\n\r\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
    let port = raw_server(Some(SLOW_DOWN));
    let mut cfg = config(&format!("http://127.0.0.1:{port}"), "");
    cfg.retry = policy;
    let err = S3Backend::connect(cfg).await.unwrap_err();
    assert_eq!(err.kind(), BackendErrorKind::Throttled, "{err}");
    assert!(
        matches!(err, S3Error::Throttled { attempts: 2, .. }),
        "{err}"
    );
}
