//! One error type for everything that reads files or builds a model. Every variant names the file or key
//! it is about, so a user can act on the message without a backtrace.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: already exists; pass --overwrite to replace it")]
    Exists { path: PathBuf },
    #[error("{path}: file not found{hint}")]
    NotFound { path: PathBuf, hint: String },
    #[error("{path}: malformed JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: invalid config: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("{path}: corrupt or truncated {format} file: {msg}")]
    Corrupt {
        path: PathBuf,
        format: &'static str,
        msg: String,
    },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has unsupported type {dtype}")]
    DType {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("vocab mismatch: tokenizer has {tokenizer} tokens but the model's embedding has {model} rows")]
    VocabMismatch { tokenizer: usize, model: usize },
    #[error("chat template: {0}")]
    Template(String),
    #[error("generation: {0}")]
    Generate(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                path,
                hint: String::new(),
            }
        } else {
            Error::Io { path, source }
        }
    }

    pub fn corrupt(path: impl Into<PathBuf>, format: &'static str, msg: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            format,
            msg: msg.into(),
        }
    }
}
