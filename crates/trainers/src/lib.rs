//! burnish-trainers: fine-tuning runs as a library. [`run()`] takes a [`RunConfig`] (built in code or
//! loaded from a run file with [`RunFile::load`]) and performs the whole `burnish train` / `burnish
//! ablate` path as typed stages — data, encode, method, engine, outputs (see [`mod@run`]). The pieces
//! are public too: the [`engine`] loop runs any [`Method`] (SFT, DPO, reward model, PPO), [`eval`]
//! measures refusals and KL, [`ablate`] edits the refusal direction.
//!
//! Modules are layered; each imports only from the layers below it (a test checks this):
//!
//! 1. `progress`, `loss`, `optim`, `plot`, `checkpoint`, `output`, `logps`
//! 2. `method`, `engine` (the loop and its `[train]` section)
//! 3. `sft`, `dpo`, `reward`, `ppo`
//! 4. `detector` (a reward model as a refusal detector), then `eval` (`[eval]`; may use it)
//! 5. `ablate` (uses `eval`)
//! 6. `config` (the run file: every section)
//! 7. `run` (the stages)

pub mod ablate;
pub mod checkpoint;
pub mod config;
pub mod detector;
pub mod dpo;
pub mod engine;
pub mod eval;
pub mod logps;
pub mod loss;
pub mod method;
pub mod optim;
pub mod output;
pub mod parallel;
pub mod plot;
pub mod ppo;
pub mod progress;
pub mod reward;
pub mod run;
pub mod sft;
pub mod team;

pub use ablate::{AblateConfig, AblateJob, AblateReport};
pub use config::{MethodConfig, ModelSection, RunConfig, RunFile};
pub use dpo::{Dpo, DpoConfig};
pub use engine::{EngineConfig, Outcome, StepLog, Summary, TrainConfig};
pub use eval::{EvalConfig, EvalReport};
pub use method::{Method, Metrics};
pub use output::{OutputConfig, SaveKind};
pub use ppo::{Ppo, PpoConfig};
pub use progress::{Log, Progress, StopToken};
pub use reward::{Reward, RewardConfig};
pub use run::{run, Resume, RunOptions, RunReport, TrainReport};
pub use sft::Sft;

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
    /// A setting out of range given without a file (from code or flags); the message names the key.
    #[error("{0}")]
    Invalid(String),
    // Training.
    /// A tensor file (checkpoint, optimizer state, head) that does not hold what it should.
    #[error("{path}: {what}", path = .0.display(), what = .1)]
    BadTensorFile(PathBuf, String),
    #[error("{path}: no tensor `{name}`", path = .0.display(), name = .1)]
    MissingTensor(PathBuf, &'static str),
    #[error("--resume: no finished checkpoint in {}", .0.display())]
    NoCheckpoint(PathBuf),
    #[error("{dir}: holds another run's outputs ({found}); pass --overwrite (or set `[output] overwrite = true`) to replace them, --resume to continue that run, or choose another `[output] dir`", dir = .dir.display())]
    OutputInUse { dir: PathBuf, found: String },
    /// A checkpoint written by a run whose config differs in a key that matters to resuming.
    #[error("{path}: checkpoint is from a different run: `{key}` is {checkpoint} there but {config} in this config", path = .path.display())]
    CheckpointMismatch {
        path: PathBuf,
        key: String,
        checkpoint: String,
        config: String,
    },
    /// The data set's examples are not the kind the method trains on.
    #[error("method `{method}` needs {needs}, but [data] gives {got}")]
    WrongData {
        method: &'static str,
        needs: &'static str,
        got: &'static str,
    },
    #[error("method `{0}`: no training rows (every example was filtered or dropped; see the data report)")]
    NoTrainingRows(&'static str),
    #[error("step {0}: the batch has no loss units (every label masked?)")]
    NoLossUnits(usize),
    #[error("ppo: a rollout produced an empty response")]
    EmptyResponse,
    #[error("{path}: plotting failed: {msg}", path = .0.display(), msg = .1)]
    Plot(PathBuf, String),
    /// A worker of a data-parallel run failed; the run stopped on every device.
    #[error("data-parallel worker {rank} ({device}): {message}")]
    Worker {
        rank: usize,
        device: String,
        message: String,
    },
    #[error("method `{0}` trains on one device; set one entry in `train.devices`")]
    OneDeviceOnly(&'static str),
    #[error("backend {0:?} is not compiled in (build with `--features {feature}`)", feature = .0.feature())]
    BackendMissing(burnish_core::backend::BackendKind),
    // Evaluation and ablation.
    #[error("nothing to evaluate: no [[eval.sets]] (or --harmful/--benign/--harmless)")]
    NoEvalSets,
    #[error("{0}: no prompt column among {1:?}; name it (`prompt = \"...\"` in the set, or --prompt-column)")]
    NoPromptColumn(burnish_data::Location, Vec<String>),
    #[error("{0}: `{1}` is missing or not a non-empty string")]
    BadPrompt(burnish_data::Location, String),
    #[error("{path}: no prompts", path = .0.display())]
    NoPrompts(PathBuf),
    #[error("hazard `{hazard}` for category `{category}` is not one of {known}", known = crate::eval::hazard::HAZARDS.join(", "))]
    UnknownHazard { category: String, hazard: String },
    #[error("judge: the judge's tokenizer has no single-token Yes/No")]
    JudgeVocabulary,
    #[error("ablation: every [data] prompt needs `harmful = true|false` (set it on each [[data.sources]])")]
    UnlabelledPrompt,
    #[error("ablation needs both harmful and harmless prompts in [data] (`harmful = true` and `harmful = false` sources)")]
    OneSidedPrompts,
    #[error("[method] split = \"refusals\": the model {0} every [data] prompt, so there is no second class (use split = \"labels\")")]
    OneSidedRefusals(&'static str),
    #[error("ablation validates on the first {0} [[eval.sets]]; there is none")]
    NoValidationSet(crate::eval::SetKind),
    #[error("[method] directions_from {path}: {theirs:?} (layers, hidden) differs from the model's {ours:?}", path = .path.display())]
    DirectionsShape {
        path: PathBuf,
        theirs: (usize, usize),
        ours: (usize, usize),
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
