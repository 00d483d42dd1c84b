//! Parquet through arrow-rs's `parquet` crate, row by row (its record API reads one row group at a time,
//! so memory stays bounded by a row group). Nested columns (lists of structs, as HF datasets store
//! `messages`) become JSON arrays of objects.
//!
//! Parquet needs random access (the footer is at the end), so a gzipped Parquet file is first
//! decompressed into an anonymous temporary file, streaming, never into memory.
//!
//! The `parquet` crate can panic on a corrupt file (fuzzing found a single flipped bit in a page that makes
//! its RLE decoder slice past its buffer), so every call into it runs under `catch_unwind` and a panic
//! becomes an `Error::File` naming the file and row, like any other decoding error.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use flate2::read::MultiGzDecoder;
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::{is_gzip, RawRecord, Records};
use crate::error::{Error, Location, Result};

pub fn open(path: Arc<Path>) -> Result<Records> {
    let file = File::open(&path).map_err(|e| Error::io(path.to_path_buf(), e))?;
    let file = if is_gzip(&path)? {
        let mut tmp = tempfile::tempfile().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        std::io::copy(&mut MultiGzDecoder::new(file), &mut tmp)
            .map_err(|e| Error::io(path.to_path_buf(), e))?;
        tmp
    } else {
        file
    };
    let reader = guarded(|| SerializedFileReader::new(file))
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|e| {
            Error::file(
                path.to_path_buf(),
                format!("not a readable Parquet file: {e}"),
            )
        })?;
    let rows = reader.metadata().file_metadata().num_rows().max(0) as u64;
    tracing::debug!(path = %path.display(), rows, "parquet");
    let mut iter = reader.into_iter();
    let mut row = 0u64;
    let mut done = false;
    Ok(Box::new(std::iter::from_fn(move || {
        if done {
            return None;
        }
        let next = match guarded(|| iter.next()) {
            Ok(next) => next?.map_err(|e| e.to_string()),
            Err(panic) => Err(panic),
        };
        match next.and_then(|r| guarded(|| r.to_json_value())) {
            Ok(value) => {
                let loc = Location::row(&path, row);
                row += 1;
                match value {
                    serde_json::Value::Object(value) => Some(Ok(RawRecord { loc, value })),
                    other => Some(Err(Error::file(
                        path.to_path_buf(),
                        format!(
                            "row {}: converts to {}, not an object",
                            row - 1,
                            super::kind(&other)
                        ),
                    ))),
                }
            }
            // A page that does not decode leaves the reader without a position to resume from.
            Err(e) => {
                done = true;
                Some(Err(Error::file(
                    path.to_path_buf(),
                    format!("row {row}: {e}"),
                )))
            }
        }
    })))
}

/// Runs a call into the `parquet` crate, turning a panic into a message. The decoder that panicked is not
/// used again: each caller stops reading the file after an error.
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        format!("the Parquet decoder failed on corrupt data ({msg})")
    })
}
