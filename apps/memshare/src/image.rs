//! Raw images, their manifests and content ids.
//!
//! An image is a raw file of 4 KiB blocks. Next to it may lie `<image>.manifest`: the
//! magic `PWMSMAN1`, the block count (`u64` LE) and one 32-byte content id (SHA-256 of
//! the block) per block. The generator writes one for every image; the loader verifies
//! every block it loads against it (a truncated or corrupted image is refused, not
//! loaded), and the manifests let anyone count the achievable sharing between images
//! without loading them.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::ImageError;
use crate::sys::PAGE;

const MANIFEST_MAGIC: &[u8; 8] = b"PWMSMAN1";

/// A content id: the SHA-256 of one 4 KiB block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(pub [u8; 32]);

impl ContentId {
    /// The id of `block`.
    pub fn of(block: &[u8]) -> Self {
        Self(Sha256::digest(block).into())
    }
}

/// Whether a block is all zeros (zero blocks are never stored: the guest gets fresh
/// anonymous memory, which reads as zeros).
pub fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// The path of `image`'s manifest.
pub fn manifest_path(image: &Path) -> PathBuf {
    let mut p = image.as_os_str().to_owned();
    p.push(".manifest");
    PathBuf::from(p)
}

/// Write the manifest of `ids` next to `image`.
pub fn write_manifest(image: &Path, ids: &[ContentId]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(16 + ids.len() * 32);
    out.extend_from_slice(MANIFEST_MAGIC);
    out.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.0);
    }
    std::fs::write(manifest_path(image), out)
}

/// Parse a manifest's bytes.
pub fn parse_manifest(bytes: &[u8]) -> Result<Vec<ContentId>, String> {
    if bytes.len() < 16 || &bytes[..8] != MANIFEST_MAGIC {
        return Err("no PWMSMAN1 header".into());
    }
    let n = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let body = &bytes[16..];
    if Some(body.len() as u64) != n.checked_mul(32) {
        return Err(format!("{n} blocks declared, {} bytes of ids", body.len()));
    }
    Ok(body
        .chunks_exact(32)
        .map(|c| ContentId(c.try_into().expect("32 bytes")))
        .collect())
}

/// Read `image`'s manifest, if it has one.
pub fn read_manifest(image: &Path) -> Result<Option<Vec<ContentId>>, ImageError> {
    let path = manifest_path(image);
    match std::fs::read(&path) {
        Ok(b) => parse_manifest(&b)
            .map(Some)
            .map_err(|reason| ImageError::BadManifest { path, reason }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ImageError::Io { path, source }),
    }
}

/// An image's manifest, shared between the loader's stages.
pub(crate) type Manifest = Arc<[ContentId]>;

/// An opened raw image: its size checked against the page size and its manifest.
#[derive(Debug)]
pub struct Image {
    path: PathBuf,
    file: File,
    blocks: u64,
    manifest: Option<Manifest>,
}

impl Image {
    /// The opened file's metadata (`fstat`: the file this `Image` reads, even if the
    /// path was since renamed over).
    pub fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        self.file.metadata()
    }

    /// Open `path`, check that it is a whole number of blocks and as long as its manifest.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let io = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let bytes = file.metadata().map_err(io)?.len();
        let manifest = read_manifest(path)?;
        let expected = match &manifest {
            Some(ids) => ids.len() as u64 * PAGE as u64,
            None => bytes.div_ceil(PAGE as u64).max(1) * PAGE as u64,
        };
        if bytes != expected || bytes == 0 {
            if bytes > expected && manifest.is_some() {
                return Err(ImageError::BadManifest {
                    path: manifest_path(path),
                    reason: format!("it covers {expected} bytes, the image has {bytes}"),
                });
            }
            return Err(ImageError::Truncated {
                path: path.to_path_buf(),
                bytes,
                expected,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            blocks: bytes / PAGE as u64,
            manifest: manifest.map(Arc::from),
        })
    }

    /// Blocks (pages) in the image.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Visit every block in order with its content id, verifying it against the
    /// manifest if there is one. Stops at the first error.
    pub fn for_each_block<E: From<ImageError>>(
        &mut self,
        mut f: impl FnMut(u64, &[u8], ContentId) -> Result<(), E>,
    ) -> Result<(), E> {
        const CHUNK: usize = 256 * PAGE;
        let mut buf = vec![0u8; CHUNK];
        let mut block = 0u64;
        while block < self.blocks {
            let n = ((self.blocks - block) as usize * PAGE).min(CHUNK);
            self.file
                .read_exact(&mut buf[..n])
                .map_err(|source| ImageError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            for page in buf[..n].chunks_exact(PAGE) {
                let id = ContentId::of(page);
                verify(self.manifest.as_deref(), &self.path, block, &id)?;
                f(block, page, id)?;
                block += 1;
            }
        }
        Ok(())
    }

    /// What the staged loader needs to read and verify the image from other threads: a
    /// second handle on the file (read with `pread`, at explicit offsets) and the manifest.
    pub(crate) fn shared_parts(&self) -> Result<(File, Option<Manifest>), ImageError> {
        let file = self.file.try_clone().map_err(|source| ImageError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok((file, self.manifest.clone()))
    }

    /// Read the whole image into memory (verified like [`Image::for_each_block`]).
    pub fn read_all(mut self) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::with_capacity(self.blocks as usize * PAGE);
        self.for_each_block::<ImageError>(|_, page, _| {
            out.extend_from_slice(page);
            Ok(())
        })?;
        Ok(out)
    }
}

/// Check block `block`'s content id against the manifest, if there is one.
pub(crate) fn verify(
    manifest: Option<&[ContentId]>,
    path: &Path,
    block: u64,
    id: &ContentId,
) -> Result<(), ImageError> {
    match manifest {
        Some(m) if m.get(block as usize) != Some(id) => Err(ImageError::Corrupt {
            path: path.to_path_buf(),
            block,
        }),
        _ => Ok(()),
    }
}

/// Pages loaded and the distinct non-zero contents among them, for a set of images
/// loaded `copies` times each: the most any loader can share, known from the manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Achievable {
    /// Pages loaded in total.
    pub loaded: u64,
    /// Distinct non-zero contents (the fewest pages that can hold them all).
    pub distinct: u64,
    /// Zero pages among the loaded ones (need no stored copy at all).
    pub zero: u64,
}

impl Achievable {
    /// The most pages sharing can save: everything beyond one copy of each content.
    pub fn max_saved(&self) -> u64 {
        self.loaded - self.distinct
    }
}

/// Count the achievable sharing for images given by their manifests, each loaded once.
pub fn achievable(manifests: &[Vec<ContentId>]) -> Achievable {
    let zero = ContentId::of(&[0u8; PAGE]);
    let mut seen = HashSet::new();
    let mut a = Achievable::default();
    for ids in manifests {
        for id in ids {
            a.loaded += 1;
            if *id == zero {
                a.zero += 1;
            } else if seen.insert(*id) {
                a.distinct += 1;
            }
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn manifest_roundtrips_and_junk_is_refused(n in 0usize..20, junk in proptest::collection::vec(any::<u8>(), 0..100)) {
            let ids: Vec<ContentId> = (0..n).map(|i| ContentId::of(&[i as u8; 16])).collect();
            let mut bytes = MANIFEST_MAGIC.to_vec();
            bytes.extend_from_slice(&(n as u64).to_le_bytes());
            for id in &ids { bytes.extend_from_slice(&id.0); }
            prop_assert_eq!(parse_manifest(&bytes).unwrap(), ids);
            // Anything else parses to an error or to exactly what it encodes, never panics.
            let _ = parse_manifest(&junk);
            bytes.pop();
            prop_assert!(parse_manifest(&bytes).is_err());
        }
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; PAGE]));
        let mut p = [0u8; PAGE];
        p[PAGE - 1] = 1;
        assert!(!is_zero(&p));
    }
}
