//! Parquet through arrow-rs's `parquet` crate, row by row (its record API reads one row group at a time,
//! so memory stays bounded by a row group). Nested columns (lists of structs, as HF datasets store
//! `messages`) become JSON arrays of objects.
//!
//! Parquet needs random access (the footer is at the end), so a gzipped Parquet file is first
//! decompressed into an anonymous temporary file, streaming, never into memory.

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
    let reader = SerializedFileReader::new(file).map_err(|e| {
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
        match iter.next()? {
            Ok(r) => {
                let loc = Location::row(&path, row);
                row += 1;
                match r.to_json_value() {
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
