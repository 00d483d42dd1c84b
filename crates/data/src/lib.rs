//! burnish-data: what the model learns from. Readers for JSON Lines, JSON, CSV and Parquet; schemas for
//! SFT, preference and prompt-only data; chat rendering with exact assistant-only loss masks; packing;
//! refusal detection and the policies that keep, filter or label refusals; generated data.

pub mod borderline;
pub mod build;
pub mod config;
pub mod encode;
pub mod error;
pub mod example;
pub mod generate;
pub mod pack;
pub mod policy;
pub mod read;
pub mod refusal;
pub mod rng;
pub mod schema;

pub use build::{build, write_jsonl, Dataset, Examples, SourceReport};
pub use config::{
    AssistantTurns, DataConfig, LabelGoal, RefusalStyle, Rewrite, SourceConfig, Truncation,
};
pub use encode::{
    ChatEncoder, Completion, EncodeOptions, TokenStats, TokenizedExample, TokenizedPair,
    IGNORE_INDEX,
};
pub use error::{Error, Location, RecordError, Result};
pub use example::{Example, Kind, PairExample, PromptExample, SftExample};
pub use generate::{FallbackResponder, ModelResponder, Reply, Responder};
pub use pack::{pack, Batch, Packed};
pub use refusal::{
    Check, DetectorSpec, RefusalClassifier, RefusalConfig, RefusalDetector, RefusalMatch,
};
