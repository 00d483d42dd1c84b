//! Atomic file writes: a crash or Ctrl-C never leaves a half-written output behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A temp file beside `path`; `commit` renames it into place.
pub struct AtomicFile {
    tmp: PathBuf,
    path: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Self {
            tmp,
            path: path.to_path_buf(),
            file: Some(std::io::BufWriter::new(file)),
        })
    }

    pub fn writer(&mut self) -> &mut impl Write {
        self.file.as_mut().expect("open until commit")
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let tmp = self.tmp.clone();
        self.writer()
            .write_all(bytes)
            .map_err(|e| Error::io(tmp, e))
    }

    pub fn commit(mut self) -> Result<()> {
        let w = self.file.take().expect("open until commit");
        let f = w
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes)?;
    f.commit()
}

/// What to do when an output (a directory or a file) already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Stop with [`Error::Exists`], touching nothing.
    Refuse,
    /// Replace it whole: nothing of the old one (stale shards, unrelated files) is left beside the new.
    Replace,
}

impl Existing {
    /// Fails with [`Error::Exists`] when `path` exists and replacing it was not asked for.
    pub fn check(self, path: &Path) -> Result<()> {
        if self == Existing::Refuse && path.exists() {
            return Err(Error::Exists {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }
}

/// An empty directory beside `dir` to build an output in before [`publish_dir`] moves it into place.
pub fn staging_dir(dir: &Path) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = parent
        .unwrap_or(Path::new("."))
        .join(format!(".{name}.{}.tmp", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(tmp)
}

/// Moves the finished directory `staged` to `dir` by renames, so `dir` is never half-written: absent
/// (or refused), or the old one, or the new one whole. An existing `dir` is replaced only with
/// [`Existing::Replace`]; the old one is removed after the new one is in place.
pub fn publish_dir(staged: &Path, dir: &Path, existing: Existing) -> Result<()> {
    if let Err(e) = existing.check(dir) {
        let _ = std::fs::remove_dir_all(staged);
        return Err(e);
    }
    let old = staged.with_extension("old");
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(staged, dir).map_err(|e| Error::io(dir, e))?;
    if had_old {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// What identifies a file's contents cheaply for a cache key: its size and modification time (empty
/// when it cannot be read, so a missing file never matches a cached one).
pub fn file_stamp(path: &Path) -> String {
    std::fs::metadata(path)
        .map(|m| format!("{}:{:?}", m.len(), m.modified().ok()))
        .unwrap_or_default()
}

/// FNV-1a, 64 bits: a stable hash for cache keys and step fingerprints (fixed by this code alone, unlike
/// `std`'s hasher, so keys survive toolchain updates).
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_replaces_a_directory_whole_or_refuses() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model-00001-of-00002.safetensors"), b"stale").unwrap();
        let staged = staging_dir(&dir).unwrap();
        std::fs::write(staged.join("model.safetensors"), b"new").unwrap();
        let e = publish_dir(&staged, &dir, Existing::Refuse).unwrap_err();
        assert!(matches!(e, Error::Exists { .. }), "{e}");
        assert!(dir.join("model-00001-of-00002.safetensors").exists());
        assert!(
            !staged.exists(),
            "a refused staging directory is cleaned up"
        );
        let staged = staging_dir(&dir).unwrap();
        std::fs::write(staged.join("model.safetensors"), b"new").unwrap();
        publish_dir(&staged, &dir, Existing::Replace).unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("model.safetensors")]);
        let leftovers = std::fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no staging or old directory is left");
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(Fnv64::new().finish(), 0xcbf2_9ce4_8422_2325);
        assert_eq!(Fnv64::new().write(b"a").finish(), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            Fnv64::new().write(b"foobar").finish(),
            0x8594_4171_f739_67e8
        );
    }
}
