//! burnish-data: what the model learns from. Readers for JSON Lines, JSON, CSV and Parquet; schemas for
//! SFT, preference and prompt-only data; chat rendering with exact assistant-only loss masks; packing;
//! refusal detection and the policies that keep, filter or label refusals; generated data.

pub mod config;
pub mod error;
pub mod example;
pub mod generate;
pub mod read;
pub mod refusal;
pub mod rng;
pub mod schema;

pub use error::{Error, Location, RecordError, Result};
