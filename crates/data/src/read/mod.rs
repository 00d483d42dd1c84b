//! Streaming record readers: JSON Lines, JSON arrays, CSV/TSV and Parquet, each optionally gzip-compressed.
//! Every reader yields one JSON object per record together with its location, holding only the current
//! record in memory, so files larger than memory can be read (and `limit` stops reading early).
//!
//! Errors: a bad record is an `Error::Record` and the reader carries on after it; any other error ends
//! the stream (the reader yields `None` afterwards).
//!
//! One record (a JSON line, a JSON array element, a CSV row) may be at most [`MAX_RECORD_BYTES`]: the
//! bound on what a reader holds, whatever the input (a small gzip file can inflate to one endless line).

mod delimited;
mod json;
mod parquet_rows;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Location, Result};

/// The longest record a text reader accepts (64 MiB, far beyond any training example): a longer JSON line
/// or array element is a bad record (skipped, the reader carries on), a longer CSV row ends the read.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Jsonl,
    /// A JSON array of objects, or JSON Lines in a `.json` file (what `datasets.to_json` writes).
    Json,
    Csv,
    Tsv,
    Parquet,
}

impl Format {
    /// From the extension, looking through a trailing `.gz`.
    pub fn from_path(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        let ext = name.rsplit_once('.')?.1;
        Some(match ext {
            "jsonl" | "ndjson" => Format::Jsonl,
            "json" => Format::Json,
            "csv" => Format::Csv,
            "tsv" => Format::Tsv,
            "parquet" | "pq" => Format::Parquet,
            _ => return None,
        })
    }
}

/// One record: a JSON object (CSV cells are strings, Parquet values map to their JSON equivalents).
#[derive(Clone, Debug)]
pub struct RawRecord {
    pub loc: Location,
    pub value: Map<String, Value>,
}

pub type Records = Box<dyn Iterator<Item = Result<RawRecord>>>;

/// Opens `path` as a stream of records; `format` overrides detection by extension.
pub fn open(path: &Path, format: Option<Format>) -> Result<Records> {
    let format = match format.or_else(|| Format::from_path(path)) {
        Some(f) => f,
        None => {
            return Err(Error::file(
                path,
                "cannot tell the format from the extension; set `format` to jsonl, json, csv, tsv or parquet",
            ))
        }
    };
    let shared: Arc<Path> = Arc::from(path);
    if format == Format::Parquet {
        return parquet_rows::open(shared);
    }
    let reader = open_text(path)?;
    Ok(match format {
        Format::Jsonl => Box::new(json::JsonLines::new(reader, shared)),
        Format::Json => json::open_json(reader, shared)?,
        Format::Csv => delimited::open(reader, shared, b',')?,
        Format::Tsv => delimited::open(reader, shared, b'\t')?,
        Format::Parquet => unreachable!("handled above"),
    })
}

/// A buffered reader over the file, gunzipped when it starts with the gzip magic bytes (whatever its name).
fn open_text(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    if is_gzip(path)? {
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            MultiGzDecoder::new(file),
        )))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 16, file)))
    }
}

pub(crate) fn is_gzip(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 2];
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

/// Reading errors of the underlying stream (including corrupt gzip data) are fatal.
fn read_error(path: &Path, e: std::io::Error) -> Error {
    Error::io(PathBuf::from(path), e)
}

/// `Value::Object` or a record error saying what the value was instead.
fn into_object(v: Value) -> std::result::Result<Map<String, Value>, String> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(format!("expected a JSON object, got {}", kind(&other))),
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
