//! The layered-image generator: a base ext4 image built with `mkfs.ext4 -d` from real
//! files of installed packages, and derived images that differ from it in an exact,
//! chosen number of blocks (overwritten with 4 KiB chunks of other real files), each with
//! its manifest, so the sharing any loader can achieve is known exactly.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::ImageError;
use crate::image::{achievable, is_zero, write_manifest, Achievable, ContentId};
use crate::sys::PAGE;

/// What to generate.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// Output directory (created).
    pub out: PathBuf,
    /// Directories whose files fill the base image (walked in sorted order).
    pub sources: Vec<PathBuf>,
    /// File bytes to put into the base image.
    pub base_bytes: u64,
    /// How many derived images.
    pub derived: usize,
    /// Fraction of the base's non-zero blocks each derived image changes.
    pub change: f64,
    /// Seed of the block choice.
    pub seed: u64,
}

impl ImageSet {
    /// Defaults: files from /usr/share/doc then /usr/lib, 3 derived images changing 2 %.
    pub fn new(out: impl Into<PathBuf>, base_bytes: u64) -> Self {
        Self {
            out: out.into(),
            sources: vec!["/usr/share/doc".into(), "/usr/lib".into()],
            base_bytes,
            derived: 3,
            change: 0.02,
            seed: 1,
        }
    }
}

/// What the generator made.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The base image.
    pub base: PathBuf,
    /// The derived images, with the number of blocks each changed.
    pub derived: Vec<(PathBuf, u64)>,
    /// Blocks per image.
    pub blocks: u64,
    /// Files copied into the base.
    pub files: u64,
    /// Achievable sharing with one VM per image.
    pub achievable: Achievable,
}

impl Generated {
    /// All images, base first.
    pub fn images(&self) -> Vec<PathBuf> {
        std::iter::once(self.base.clone())
            .chain(self.derived.iter().map(|(p, _)| p.clone()))
            .collect()
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            walk(&p, out);
        } else if m.is_file() {
            out.push(p);
        }
    }
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Chunks of real file content for the changed blocks: 4 KiB pieces of files not in the
/// base, never all zero, never repeated.
struct Chunks {
    files: std::vec::IntoIter<PathBuf>,
    buf: Vec<u8>,
    at: usize,
    seen: std::collections::HashSet<ContentId>,
    fallback: SplitMix,
}

impl Chunks {
    fn next(&mut self, base: &std::collections::HashSet<ContentId>) -> Vec<u8> {
        loop {
            while self.at + PAGE > self.buf.len() {
                match self.files.next() {
                    Some(f) => {
                        self.buf.clear();
                        self.at = 0;
                        if let Ok(mut h) = File::open(&f) {
                            let _ = h.by_ref().take(4 << 20).read_to_end(&mut self.buf);
                        }
                    }
                    None => {
                        // Out of files: pseudo-random content (still unique).
                        self.buf = (0..PAGE / 8)
                            .flat_map(|_| self.fallback.next().to_le_bytes())
                            .collect();
                        self.at = 0;
                    }
                }
            }
            let c = self.buf[self.at..self.at + PAGE].to_vec();
            self.at += PAGE;
            let id = ContentId::of(&c);
            if !is_zero(&c) && !base.contains(&id) && self.seen.insert(id) {
                return c;
            }
        }
    }
}

fn ids_of(path: &Path) -> Result<Vec<ContentId>, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(bytes.chunks(PAGE).map(ContentId::of).collect())
}

/// Build the base and derived images with their manifests.
pub fn generate(set: &ImageSet) -> Result<Generated, ImageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io {
            path: path.clone(),
            source,
        }
    };
    std::fs::create_dir_all(&set.out).map_err(io(&set.out))?;
    let mut files = Vec::new();
    for s in &set.sources {
        walk(s, &mut files);
    }
    let staging = set.out.join("staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let mut total = 0u64;
    let mut data_blocks = 0u64;
    let mut used = 0usize;
    let mut copied = 0u64;
    for (n, f) in files.iter().enumerate() {
        if total >= set.base_bytes {
            break;
        }
        used = n + 1;
        let Ok(m) = std::fs::metadata(f) else {
            continue;
        };
        if m.len() > set.base_bytes - total {
            continue;
        }
        let rel = f.strip_prefix("/").unwrap_or(f);
        let dst = staging.join(rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        if std::fs::copy(f, &dst).is_ok() {
            total += m.len();
            copied += 1;
            data_blocks += m.len().div_ceil(PAGE as u64);
        }
    }
    if total == 0 {
        return Err(ImageError::Build(format!(
            "no readable files under {:?}",
            set.sources
        )));
    }
    let base = set.out.join("base.raw");
    // File data plus 5 %, a little per file for inodes and directories, 4 MiB of
    // metadata; grown by 30 % per retry when mkfs.ext4 runs out of space.
    let mut size_kib = (data_blocks * 4 * 105 / 100) + copied + 4096;
    let mut ok = false;
    let mut last_err = String::new();
    for _ in 0..4 {
        let _ = std::fs::remove_file(&base);
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-m", "0", "-O", "^has_journal"])
            .args(["-L", "pwbase", "-U", "6c1e1b4e-6c6f-4ad2-9a3e-7069706577a1"])
            .args([
                "-E",
                "hash_seed=6c1e1b4e-6c6f-4ad2-9a3e-7069706577a1,root_owner=0:0",
            ])
            .arg("-d")
            .arg(&staging)
            .arg(&base)
            .arg(format!("{size_kib}k"))
            .env("E2FSPROGS_FAKE_TIME", "1700000000")
            .output()
            .map_err(|e| {
                ImageError::Build(format!("cannot run mkfs.ext4 ({e}); install e2fsprogs"))
            })?;
        if out.status.success() {
            ok = true;
            break;
        }
        last_err = String::from_utf8_lossy(&out.stderr).into_owned();
        size_kib = size_kib * 13 / 10;
    }
    let _ = std::fs::remove_dir_all(&staging);
    if !ok {
        return Err(ImageError::Build(format!("mkfs.ext4 failed: {last_err}")));
    }
    let base_ids = ids_of(&base)?;
    write_manifest(&base, &base_ids).map_err(io(&base))?;
    let blocks = base_ids.len() as u64;
    let zero = ContentId::of(&[0u8; PAGE]);
    let nonzero: Vec<u64> = (0..blocks)
        .filter(|&i| base_ids[i as usize] != zero)
        .collect();
    let base_set: std::collections::HashSet<ContentId> = base_ids.iter().copied().collect();
    let mut chunks = Chunks {
        files: files.split_off(used.min(files.len())).into_iter(),
        buf: Vec::new(),
        at: 0,
        seen: Default::default(),
        fallback: SplitMix(set.seed ^ 0xfeed),
    };
    let mut rng = SplitMix(set.seed);
    let mut derived = Vec::new();
    let mut manifests = vec![base_ids.clone()];
    for k in 0..set.derived {
        let path = set.out.join(format!("derived-{}.raw", k + 1));
        std::fs::copy(&base, &path).map_err(io(&path))?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let n = ((nonzero.len() as f64) * set.change.clamp(0.0, 1.0)).round() as usize;
        // Partial Fisher-Yates: the first n of a seeded shuffle of the non-zero blocks.
        let mut pool = nonzero.clone();
        for i in 0..n {
            let j = i + (rng.next() % (pool.len() - i) as u64) as usize;
            pool.swap(i, j);
        }
        let mut ids = base_ids.clone();
        for &b in &pool[..n] {
            let c = chunks.next(&base_set);
            f.write_all_at(&c, b * PAGE as u64).map_err(io(&path))?;
            ids[b as usize] = ContentId::of(&c);
        }
        drop(f);
        write_manifest(&path, &ids).map_err(io(&path))?;
        manifests.push(ids);
        derived.push((path, n as u64));
    }
    Ok(Generated {
        base,
        derived,
        blocks,
        files: copied,
        achievable: achievable(&manifests),
    })
}
