//! The S3 backend, through the `object_store` crate.
//!
//! # Layout
//!
//! S3 has no partial-object write: rewriting one 4 KiB block of a volume stored as one
//! 1 GiB object would mean uploading the whole GiB. So a volume is stored as
//! fixed-size **parts**, each its own object, under `<prefix>/<volume>/`:
//!
//! ```text
//! s3://bucket/prefix/disk0/volume                   manifest: "pipewright-volume 1\nsize <bytes>\npart-size <bytes>\n"
//! s3://bucket/prefix/disk0/part-0000000000000000    bytes [0, part-size)
//! s3://bucket/prefix/disk0/part-0000000000000001    bytes [part-size, 2·part-size)
//! ...                                               (the last part may be shorter)
//! ```
//!
//! A part that does not exist reads as zeros (a new volume costs one manifest object).
//! With the part size equal to the cache's chunk size (1 MiB by default, the default
//! part size too) a chunk fill is one GET and the write-back of a chunk's dirty blocks
//! is one PUT of one part (plus one GET of that part when only some of its blocks are
//! dirty). Writes are buffered per part until [`Backend::sync`] of their volume, which
//! PUTs every touched part (one sync at a time per volume, so a sync returns only once
//! every write before it is in S3); reads see buffered writes.
//!
//! Every request has a timeout ([`S3Config::request_timeout`]) and failed requests are
//! retried with capped exponential backoff ([`RetryPolicy`]); errors come back typed
//! ([`S3Error`], inside the `io::Error` the [`Backend`] trait returns, with a matching
//! `io::ErrorKind`) and counted: [`S3Backend::stats`] and the `cache_s3_*` metrics.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::future::{try_join_all, BoxFuture};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use rustc_hash::FxHashMap;

use super::s3_config::{add, classify, Counters, S3Config, S3Error, S3Stats};
use super::s3_parts::{apply, covers, manifest_text, parse_manifest, pieces, Vol};
use super::{Backend, BackendErrorKind, VolumeInfo};

/// Writes to one part not yet in S3: (offset in the part, bytes), in write order.
#[derive(Debug, Default)]
struct Pending {
    overlays: Vec<(u64, Bytes)>,
}

#[derive(Debug)]
struct Inner {
    store: AmazonS3,
    cfg: S3Config,
    volumes: Mutex<FxHashMap<String, Vol>>,
    pending: Mutex<FxHashMap<(String, u64), Pending>>,
    sync_locks: Mutex<FxHashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    counters: Counters,
}

/// Volumes in an S3 bucket (or any S3-compatible server), stored as parts (see the
/// module docs for the layout). Requests run on the tokio runtime `connect` was
/// called on, whatever executor awaits them.
#[derive(Debug, Clone)]
pub struct S3Backend {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
}

impl S3Backend {
    /// Builds the client and lists the volumes under the prefix. Call it inside the
    /// tokio runtime the requests should run on.
    pub async fn connect(cfg: S3Config) -> Result<S3Backend, S3Error> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| S3Error::NoRuntime)?;
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&cfg.bucket);
        if let Some(ep) = &cfg.endpoint {
            b = b.with_endpoint(ep);
        }
        b = b.with_region(cfg.region.clone().unwrap_or_else(|| {
            std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_string())
        }));
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &cfg.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        // Our own retry loop (typed, counted, bounded) replaces object_store's.
        // (The client options carry allow_http too: set them first.)
        let store = b
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(cfg.request_timeout)
                    .with_connect_timeout(cfg.request_timeout),
            )
            .with_allow_http(cfg.allow_http)
            .with_retry(RetryConfig {
                max_retries: 0,
                retry_timeout: cfg.request_timeout,
                ..RetryConfig::default()
            })
            .build()
            .map_err(|e| S3Error::Config(e.to_string()))?;
        let backend = S3Backend {
            inner: Arc::new(Inner {
                store,
                cfg,
                volumes: Mutex::default(),
                pending: Mutex::default(),
                sync_locks: Mutex::default(),
                counters: Counters::default(),
            }),
            handle,
        };
        backend.refresh().await?;
        Ok(backend)
    }

    /// Lists the volumes under the prefix again (those created by others since).
    pub async fn refresh(&self) -> Result<(), S3Error> {
        let inner = self.inner.clone();
        self.run(async move { inner.refresh().await }).await
    }

    /// Creates an empty (all zeros) volume of `size` bytes with the configured part
    /// size, or keeps an existing one of that name; returns its part size.
    pub async fn create_volume(&self, name: &str, size: u64) -> Result<u64, S3Error> {
        let inner = self.inner.clone();
        let name = name.to_string();
        self.run(async move { inner.create_volume(name, size).await })
            .await
    }

    /// The object key of a volume's part (its bytes
    /// `[part·part_size, (part+1)·part_size)`).
    pub fn part_key(&self, volume: &str, part: u64) -> String {
        self.inner.part_path(volume, part).to_string()
    }

    /// The part size of a volume.
    pub fn part_size(&self, volume: &str) -> Option<u64> {
        self.inner.vol(volume).ok().map(|v| v.part_size)
    }

    /// The counters.
    pub fn stats(&self) -> S3Stats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        S3Stats {
            gets: l(&c.gets),
            puts: l(&c.puts),
            lists: l(&c.lists),
            retries: l(&c.retries),
            timeouts: l(&c.timeouts),
            throttled: l(&c.throttled),
            unavailable: l(&c.unavailable),
            auth_errors: l(&c.auth_errors),
            other_errors: l(&c.other_errors),
            failed_ops: l(&c.failed_ops),
            bytes_read: l(&c.bytes_read),
            bytes_written: l(&c.bytes_written),
        }
    }

    /// Runs `fut` on the backend's runtime (hyper's connections live there).
    async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, S3Error>> + Send + 'static,
    ) -> Result<T, S3Error> {
        match self.handle.spawn(fut).await {
            Ok(r) => r,
            Err(e) => Err(S3Error::Store {
                op: "task",
                key: String::new(),
                attempts: 1,
                detail: e.to_string(),
            }),
        }
    }
}

impl Inner {
    fn volume_dir(&self, volume: &str) -> String {
        if self.cfg.prefix.is_empty() {
            volume.to_string()
        } else {
            format!("{}/{volume}", self.cfg.prefix)
        }
    }

    fn manifest_path(&self, volume: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/volume", self.volume_dir(volume)))
    }

    fn part_path(&self, volume: &str, part: u64) -> ObjectPath {
        ObjectPath::from(format!("{}/part-{part:016x}", self.volume_dir(volume)))
    }

    fn vol(&self, volume: &str) -> Result<Vol, S3Error> {
        self.volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(volume)
            .copied()
            .ok_or_else(|| S3Error::UnknownVolume(volume.to_string()))
    }

    /// One operation with its timeout, retries and counters.
    async fn call<T, Fut>(
        &self,
        op: &'static str,
        key: &ObjectPath,
        mut attempt_fn: impl FnMut() -> Fut,
    ) -> Result<T, S3Error>
    where
        Fut: Future<Output = object_store::Result<T>>,
    {
        let c = &self.counters;
        let mut attempt = 1u32;
        loop {
            add(
                match op {
                    "put" => &c.puts,
                    "list" => &c.lists,
                    _ => &c.gets,
                },
                1,
            );
            metrics::counter!("cache_s3_requests_total", "op" => op).increment(1);
            let started = Instant::now();
            let result = tokio::time::timeout(self.cfg.request_timeout, attempt_fn()).await;
            metrics::histogram!("cache_s3_request_seconds", "op" => op)
                .record(started.elapsed().as_secs_f64());
            let (kind, detail) = match result {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => (classify(&e), e.to_string()),
                Err(_) => (BackendErrorKind::Timeout, "timed out".to_string()),
            };
            let key_s = key.to_string();
            if kind == BackendErrorKind::NotFound {
                return Err(S3Error::NotFound { key: key_s });
            }
            add(
                match kind {
                    BackendErrorKind::Timeout => &c.timeouts,
                    BackendErrorKind::Throttled => &c.throttled,
                    BackendErrorKind::Unavailable => &c.unavailable,
                    BackendErrorKind::Auth => &c.auth_errors,
                    _ => &c.other_errors,
                },
                1,
            );
            metrics::counter!("cache_s3_errors_total", "kind" => kind.label()).increment(1);
            match self.cfg.retry.next_delay(attempt, kind, fastrand::f64()) {
                Some(wait) => {
                    add(&c.retries, 1);
                    metrics::counter!("cache_s3_retries_total").increment(1);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                None => {
                    add(&c.failed_ops, 1);
                    metrics::counter!("cache_s3_failed_ops_total", "kind" => kind.label())
                        .increment(1);
                    let attempts = attempt;
                    return Err(match kind {
                        BackendErrorKind::Auth => S3Error::Auth { key: key_s, detail },
                        BackendErrorKind::Timeout => S3Error::Timeout {
                            op,
                            key: key_s,
                            attempts,
                            timeout: self.cfg.request_timeout,
                        },
                        BackendErrorKind::Throttled => S3Error::Throttled {
                            op,
                            key: key_s,
                            attempts,
                            detail,
                        },
                        BackendErrorKind::Unavailable => S3Error::Unavailable {
                            op,
                            key: key_s,
                            attempts,
                            detail,
                        },
                        _ => S3Error::Store {
                            op,
                            key: key_s,
                            attempts,
                            detail,
                        },
                    });
                }
            }
        }
    }

    async fn get(&self, key: &ObjectPath, range: Option<Range<u64>>) -> Result<Bytes, S3Error> {
        let b = self
            .call("get", key, || {
                let range = range.clone();
                async move {
                    match range {
                        Some(r) => self.store.get_range(key, r).await,
                        None => self.store.get(key).await?.bytes().await,
                    }
                }
            })
            .await?;
        add(&self.counters.bytes_read, b.len() as u64);
        metrics::counter!("cache_s3_bytes_read_total").increment(b.len() as u64);
        Ok(b)
    }

    async fn put(&self, key: &ObjectPath, data: Bytes) -> Result<(), S3Error> {
        let n = data.len() as u64;
        self.call("put", key, || {
            let payload = PutPayload::from(data.clone());
            async move { self.store.put(key, payload).await }
        })
        .await?;
        add(&self.counters.bytes_written, n);
        metrics::counter!("cache_s3_bytes_written_total").increment(n);
        Ok(())
    }

    async fn refresh(&self) -> Result<(), S3Error> {
        let prefix =
            (!self.cfg.prefix.is_empty()).then(|| ObjectPath::from(self.cfg.prefix.as_str()));
        let listing = self
            .call(
                "list",
                prefix.as_ref().unwrap_or(&ObjectPath::from("")),
                || self.store.list_with_delimiter(prefix.as_ref()),
            )
            .await?;
        let mut found = FxHashMap::default();
        for dir in listing.common_prefixes {
            let Some(name) = dir.filename().map(str::to_string) else {
                continue;
            };
            let key = self.manifest_path(&name);
            let text = match self.get(&key, None).await {
                Ok(b) => b,
                Err(S3Error::NotFound { .. }) => continue, // not a volume
                Err(e) => return Err(e),
            };
            let vol = std::str::from_utf8(&text)
                .map_err(|e| e.to_string())
                .and_then(parse_manifest)
                .map_err(|detail| S3Error::BadManifest {
                    key: key.to_string(),
                    detail,
                })?;
            found.insert(name, vol);
        }
        *self.volumes.lock().unwrap_or_else(|e| e.into_inner()) = found;
        Ok(())
    }

    async fn create_volume(&self, name: String, size: u64) -> Result<u64, S3Error> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(S3Error::Config(format!(
                "volume name {name:?} must be a non-empty name without '/'"
            )));
        }
        let key = self.manifest_path(&name);
        let vol = match self.get(&key, None).await {
            Ok(text) => std::str::from_utf8(&text)
                .map_err(|e| e.to_string())
                .and_then(parse_manifest)
                .map_err(|detail| S3Error::BadManifest {
                    key: key.to_string(),
                    detail,
                })?,
            Err(S3Error::NotFound { .. }) => {
                let vol = Vol {
                    size,
                    part_size: self.cfg.part_size.max(4096),
                };
                self.put(&key, Bytes::from(manifest_text(vol))).await?;
                vol
            }
            Err(e) => return Err(e),
        };
        self.volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, vol);
        Ok(vol.part_size)
    }

    fn part_len(vol: Vol, part: u64) -> u64 {
        vol.part_size
            .min(vol.size.saturating_sub(part * vol.part_size))
    }

    async fn read(&self, volume: String, offset: u64, len: usize) -> Result<Vec<u8>, S3Error> {
        let vol = self.vol(&volume)?;
        let mut out = vec![0u8; len];
        // Within the volume; past its end stays zeros.
        let end = (offset + len as u64).min(vol.size);
        let len_in = end.saturating_sub(offset);
        let reads = pieces(offset, len_in, vol.part_size)
            .into_iter()
            .map(|(part, range, _)| {
                let key = self.part_path(&volume, part);
                async move {
                    let whole = range.start == 0 && range.end >= Self::part_len(vol, part);
                    let got = self.get(&key, (!whole).then(|| range.clone())).await;
                    match got {
                        Ok(b) => Ok(b),
                        Err(S3Error::NotFound { .. }) => Ok(Bytes::new()), // sparse: zeros
                        Err(e) => Err(e),
                    }
                }
            });
        let parts = try_join_all(reads).await?;
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for ((part, range, at), bytes) in
            pieces(offset, len_in, vol.part_size).into_iter().zip(parts)
        {
            let dst = &mut out[at as usize..(at + range.end - range.start) as usize];
            let n = bytes.len().min(dst.len());
            dst[..n].copy_from_slice(&bytes[..n]);
            if let Some(p) = pending.get(&(volume.clone(), part)) {
                apply(dst, range.start, &p.overlays);
            }
        }
        Ok(out)
    }

    fn write(&self, volume: &str, offset: u64, data: Vec<u8>) -> Result<(), S3Error> {
        let vol = self.vol(volume)?;
        let end = (offset + data.len() as u64).min(vol.size);
        let data = Bytes::from(data);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (part, range, at) in pieces(offset, end.saturating_sub(offset), vol.part_size) {
            let piece = data.slice(at as usize..(at + range.end - range.start) as usize);
            pending
                .entry((volume.to_string(), part))
                .or_default()
                .overlays
                .push((range.start, piece));
        }
        Ok(())
    }

    fn sync_lock(&self, volume: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.sync_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(volume.to_string())
            .or_default()
            .clone()
    }

    async fn sync(&self, volume: String) -> Result<(), S3Error> {
        let vol = self.vol(&volume)?;
        let lock = self.sync_lock(&volume);
        let _one_at_a_time = lock.lock().await;
        let todo: Vec<(u64, Vec<(u64, Bytes)>)> = {
            let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending
                .iter()
                .filter(|((v, _), _)| *v == volume)
                .map(|((_, part), p)| (*part, p.overlays.clone()))
                .collect()
        };
        try_join_all(todo.into_iter().map(|(part, overlays)| {
            let volume = &volume;
            async move {
                let key = self.part_path(volume, part);
                let len = Self::part_len(vol, part);
                let mut buf = vec![0u8; len as usize];
                if !covers(&overlays, len) {
                    // Read-modify-write of this one part.
                    match self.get(&key, None).await {
                        Ok(b) => {
                            let n = b.len().min(buf.len());
                            buf[..n].copy_from_slice(&b[..n]);
                        }
                        Err(S3Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                apply(&mut buf, 0, &overlays);
                self.put(&key, Bytes::from(buf)).await?;
                // Those overlays are in S3 now; later writes stay pending.
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                let k = (volume.clone(), part);
                if let Some(p) = pending.get_mut(&k) {
                    p.overlays.drain(..overlays.len().min(p.overlays.len()));
                    if p.overlays.is_empty() {
                        pending.remove(&k);
                    }
                }
                Ok(())
            }
        }))
        .await?;
        Ok(())
    }
}

impl Backend for S3Backend {
    fn volumes(&self) -> BoxFuture<'_, io::Result<Vec<VolumeInfo>>> {
        // The volumes were listed from the bucket when the backend was opened (and
        // grow as they are written): no request here.
        let mut v: Vec<VolumeInfo> = self
            .inner
            .volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, v)| VolumeInfo {
                name: name.clone(),
                size: v.size,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Box::pin(async move { Ok(v) })
    }

    fn read(&self, volume: &str, offset: u64, len: usize) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        let inner = self.inner.clone();
        let volume = volume.to_string();
        Box::pin(async move {
            self.run(async move { inner.read(volume, offset, len).await })
                .await
                .map_err(S3Error::into_io)
        })
    }

    fn write(&self, volume: &str, offset: u64, data: Vec<u8>) -> BoxFuture<'_, io::Result<()>> {
        let r = self.inner.write(volume, offset, data);
        Box::pin(async move { r.map_err(S3Error::into_io) })
    }

    fn sync(&self, volume: &str) -> BoxFuture<'_, io::Result<()>> {
        let inner = self.inner.clone();
        let volume = volume.to_string();
        Box::pin(async move {
            self.run(async move { inner.sync(volume).await })
                .await
                .map_err(S3Error::into_io)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let c = S3Config::from_url("s3://bkt/a/b/").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bkt", "a/b"));
        let c = S3Config::from_url("s3://bkt").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bkt", ""));
        assert!(S3Config::from_url("http://bkt").is_err());
        assert!(S3Config::from_url("s3:///x").is_err());
    }
}
