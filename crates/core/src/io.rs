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
