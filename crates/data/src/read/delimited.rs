//! CSV and TSV with a header row. Cells become JSON strings keyed by the header; a row with the wrong
//! number of cells or invalid UTF-8 is a bad record at the line where it starts.

use std::cell::Cell;
use std::io::{BufRead, Read};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{RawRecord, Records, MAX_RECORD_BYTES};
use crate::error::{Error, FieldError, Location, Result};

/// The input with a count of the bytes read since the last record ended: the csv crate grows a record's
/// buffer as long as the row goes on, so past [`MAX_RECORD_BYTES`] (plus the crate's read-ahead) reading
/// fails instead.
struct Capped {
    inner: Box<dyn BufRead>,
    since_record: Rc<Cell<usize>>,
}

impl Read for Capped {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.since_record.get() > MAX_RECORD_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "a row longer than the {} MiB a record may be",
                    MAX_RECORD_BYTES >> 20
                ),
            ));
        }
        let n = self.inner.read(buf)?;
        self.since_record.set(self.since_record.get() + n);
        Ok(n)
    }
}

pub fn open(reader: Box<dyn BufRead>, path: Arc<Path>, delimiter: u8) -> Result<Records> {
    let since_record = Rc::new(Cell::new(0));
    let mut csv = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(false)
        .from_reader(Capped {
            inner: reader,
            since_record: since_record.clone(),
        });
    let headers: Vec<String> = csv
        .headers()
        .map_err(|e| {
            Error::file(
                path.to_path_buf(),
                format!("cannot read the header row: {e}"),
            )
        })?
        .iter()
        .map(str::to_string)
        .collect();
    let mut record = csv::StringRecord::new();
    let mut done = false;
    // Where the last record started (an I/O error has no position of its own).
    let mut last_line = 1;
    Ok(Box::new(std::iter::from_fn(move || {
        if done {
            return None;
        }
        since_record.set(0);
        match csv.read_record(&mut record) {
            Ok(false) => {
                done = true;
                None
            }
            Ok(true) => {
                let line = record.position().map_or(0, |p| p.line());
                last_line = line;
                let value: Map<String, Value> = headers
                    .iter()
                    .zip(record.iter())
                    .map(|(h, v)| (h.clone(), Value::String(v.to_string())))
                    .collect();
                Some(Ok(RawRecord {
                    loc: Location::line(&path, line),
                    value,
                }))
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                let loc = Location::line(&path, line);
                let err = match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => FieldError::record(format!(
                        "{len} cells, but the header has {expected_len}"
                    )),
                    csv::ErrorKind::Utf8 { err, .. } => {
                        let col = headers
                            .get(err.field())
                            .cloned()
                            .unwrap_or_else(|| format!("#{}", err.field()));
                        FieldError::new(col, "not valid UTF-8")
                    }
                    _ => {
                        done = true;
                        let at = match e.position() {
                            Some(_) => format!("line {line}"),
                            None => format!("after the record at line {last_line}"),
                        };
                        return Some(Err(Error::file(path.to_path_buf(), format!("{at}: {e}"))));
                    }
                };
                Some(Err(err.at(&loc).into()))
            }
        }
    })))
}
