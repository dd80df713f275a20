//! The local-file backend: every regular file of a directory is a volume.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use rustc_hash::FxHashMap;

use super::{Backend, VolumeInfo};

/// Volumes as files of one directory (every regular file is a volume, its name the
/// file name), read and written with positioned I/O on tokio's blocking pool; the
/// cache reads its misses from the files directly ([`Backend::local_file`]).
#[derive(Debug, Clone)]
pub struct FileBackend {
    dir: PathBuf,
    files: Arc<Mutex<FxHashMap<String, Arc<File>>>>,
}

impl FileBackend {
    /// Serves the files of `dir`.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("backend directory {} does not exist", dir.display()),
            ));
        }
        Ok(Self {
            dir,
            files: Arc::default(),
        })
    }

    fn file(&self, volume: &str) -> io::Result<Arc<File>> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = files.get(volume) {
            return Ok(f.clone());
        }
        if volume.contains('/') || volume.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("volume name {volume:?} is not a plain file name"),
            ));
        }
        let f = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.dir.join(volume))?,
        );
        files.insert(volume.to_string(), f.clone());
        Ok(f)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?
}

impl Backend for FileBackend {
    fn volumes(&self) -> BoxFuture<'_, io::Result<Vec<VolumeInfo>>> {
        let dir = self.dir.clone();
        Box::pin(blocking(move || {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                if !meta.is_file() {
                    continue;
                }
                if let Some(name) = entry.file_name().to_str() {
                    if !name.starts_with('.') {
                        out.push(VolumeInfo {
                            name: name.to_string(),
                            size: meta.len(),
                        });
                    }
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        }))
    }

    fn read(&self, volume: &str, offset: u64, len: usize) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        let file = self.file(volume);
        Box::pin(async move {
            let file = file?;
            blocking(move || {
                let mut buf = vec![0u8; len];
                let mut done = 0;
                while done < len {
                    let n = file.read_at(&mut buf[done..], offset + done as u64)?;
                    if n == 0 {
                        break; // past the end: zeros
                    }
                    done += n;
                }
                Ok(buf)
            })
            .await
        })
    }

    fn write(&self, volume: &str, offset: u64, data: Vec<u8>) -> BoxFuture<'_, io::Result<()>> {
        let file = self.file(volume);
        Box::pin(async move {
            let file = file?;
            blocking(move || file.write_all_at(&data, offset)).await
        })
    }

    fn sync(&self, volume: &str) -> BoxFuture<'_, io::Result<()>> {
        let file = self.file(volume);
        Box::pin(async move {
            let file = file?;
            blocking(move || file.sync_data()).await
        })
    }

    fn local_file(&self, volume: &str) -> Option<Arc<File>> {
        self.file(volume).ok()
    }
}
