//! Errors. A bad record names its file, its line (text formats) or row (Parquet) and the field, so a
//! user can fix the data without a debugger; a whole-file problem names the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a record came from. Lines are 1-based (what an editor shows); Parquet rows are 0-based (what
/// pandas, pyarrow and the HF viewer show).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub path: Arc<Path>,
    pub pos: Pos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pos {
    Line(u64),
    Row(u64),
}

impl Location {
    pub fn line(path: &Arc<Path>, line: u64) -> Self {
        Self {
            path: path.clone(),
            pos: Pos::Line(line),
        }
    }

    pub fn row(path: &Arc<Path>, row: u64) -> Self {
        Self {
            path: path.clone(),
            pos: Pos::Row(row),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Pos::Line(l) => write!(f, "{}:{l}", self.path.display()),
            Pos::Row(r) => write!(f, "{}: row {r}", self.path.display()),
        }
    }
}

/// One bad record: recoverable, `on_error = "skip"` counts it and moves on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError {
    pub loc: Location,
    /// The offending field as a path (`messages[2].role`), when one field is to blame.
    pub field: Option<String>,
    pub msg: String,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: field `{field}`: {}", self.loc, self.msg),
            None => write!(f, "{}: {}", self.loc, self.msg),
        }
    }
}

impl std::error::Error for RecordError {}

/// A problem with one field of a record, before the record's location is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: Option<String>,
    pub msg: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            msg: msg.into(),
        }
    }

    pub fn record(msg: impl Into<String>) -> Self {
        Self {
            field: None,
            msg: msg.into(),
        }
    }

    pub fn at(self, loc: &Location) -> RecordError {
        RecordError {
            loc: loc.clone(),
            field: self.field,
            msg: self.msg,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] burnish_core::Error),
    // Not `source`: the message already includes it, and anyhow's `{:#}` would print it twice.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    /// The file as a whole cannot be read (wrong format, truncated, corrupt).
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{0}")]
    Record(#[from] RecordError),
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    /// A data set that is well-formed record by record but unusable as a whole.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err,
        }
    }

    pub fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// Recoverable errors are single bad records; everything else stops the read.
    pub fn is_record(&self) -> bool {
        matches!(self, Error::Record(_))
    }
}
