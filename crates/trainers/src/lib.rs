//! burnish-trainers: the training engine and the methods that run on it (SFT; DPO, RLHF, ablation and
//! evaluation build on the same pieces).

pub mod ablate;
pub mod checkpoint;
pub mod config;
pub mod dpo;
pub mod engine;
pub mod eval;
pub mod logps;
pub mod loss;
pub mod method;
pub mod optim;
pub mod plot;
pub mod ppo;
pub mod reward;
pub mod sft;
pub mod train;

pub use burnish_core::burn;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}", path = .0.display(), source = .1)]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{path}: {msg}", path = .0.display(), msg = .1)]
    Config(PathBuf, String),
    #[error(transparent)]
    Core(#[from] burnish_core::Error),
    #[error(transparent)]
    Data(#[from] burnish_data::Error),
    #[error("training stopped: {0}")]
    Diverged(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
