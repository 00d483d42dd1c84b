//! CSV and TSV with a header row. Cells become JSON strings keyed by the header; a row with the wrong
//! number of cells or invalid UTF-8 is a bad record at the line where it starts.

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{RawRecord, Records};
use crate::error::{Error, FieldError, Location, Result};

pub fn open(reader: Box<dyn BufRead>, path: Arc<Path>, delimiter: u8) -> Result<Records> {
    let mut csv = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(false)
        .from_reader(reader);
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
    Ok(Box::new(std::iter::from_fn(move || {
        if done {
            return None;
        }
        match csv.read_record(&mut record) {
            Ok(false) => {
                done = true;
                None
            }
            Ok(true) => {
                let line = record.position().map_or(0, |p| p.line());
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
                        return Some(Err(Error::file(
                            path.to_path_buf(),
                            format!("line {line}: {e}"),
                        )));
                    }
                };
                Some(Err(err.at(&loc).into()))
            }
        }
    })))
}
