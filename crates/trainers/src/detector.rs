//! A learned refusal detector: a reward model (LoRA + the scalar `score` head, `reward.rs`) trained with
//! `response_only = true` on answer-vs-refusal pairs (`[data] refusal_style = "detector"`), so that
//! answers score above refusals. It reads the response alone, after a fixed prompt, as phrase matching
//! does — a verdict must not depend on which request a reply answers — and calls a response a refusal
//! when its score is below the threshold (0: the centring term of the reward loss keeps each pair's
//! two scores around it). Its directory is the run's `adapter/` with `detector.json` beside the adapter
//! and the head: the base model it was trained on, the prompt, the threshold.
//! `[data.refusal] detector = "model:DIR"` uses it in the data pipeline, and eval in its reports.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burnish_core::adapter::load_adapter;
use burnish_core::burn;
use burnish_core::{Llama, Message, Precision, Pretrained};
use burnish_data::{ChatEncoder, EncodeOptions, RefusalClassifier};
use serde::{Deserialize, Serialize};

use crate::reward::{load_head, score_exchanges};
use crate::{Error, Result};

/// The file that makes a reward model's adapter directory a refusal detector.
pub const DETECTOR_FILE: &str = "detector.json";

/// The user turn every response is read after, in training and in use.
pub const DETECTOR_PROMPT: &str = "Reply to my request.";

/// `detector.json`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorMeta {
    /// The base model (absolute path) and the adapter merged into it before training, if any.
    pub base_model: PathBuf,
    #[serde(default)]
    pub merge_adapter: Option<PathBuf>,
    #[serde(default)]
    pub dtype: Precision,
    pub prompt: String,
    /// A response whose score is below this is a refusal.
    pub threshold: f32,
}

impl DetectorMeta {
    /// The meta of a detector trained on the base model at `path` (with `merge_adapter` merged in),
    /// loaded as `dtype`; the threshold is 0 until calibrated.
    pub fn for_model(path: &Path, merge_adapter: Option<&Path>, dtype: Precision) -> Self {
        let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        Self {
            base_model: abs(path),
            merge_adapter: merge_adapter.map(abs),
            dtype,
            prompt: DETECTOR_PROMPT.into(),
            threshold: 0.0,
        }
    }

    /// Writes `dir/detector.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(DETECTOR_FILE);
        let text = serde_json::to_string_pretty(self).expect("plain data serializes");
        let mut f = burnish_core::io::AtomicFile::create(&path)?;
        f.write_all(text.as_bytes())?;
        Ok(f.commit()?)
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(DETECTOR_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::Config(
                path.clone(),
                format!(
                    "{e} (a learned detector is the adapter directory of a reward run with \
                     `response_only = true`)"
                ),
            )
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Config(path, e.to_string()))
    }
}

pub struct LearnedDetector<B: Backend> {
    model: Llama<B>,
    head: Tensor<B, 2>,
    encoder: ChatEncoder,
    pad_id: u32,
    pub meta: DetectorMeta,
}

impl<B: Backend> LearnedDetector<B> {
    /// The detector in `dir`: its base model with the adapter on, and the head.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        let meta = DetectorMeta::read(dir)?;
        let (bundle, mut model) =
            Pretrained::<B>::load_as(&meta.base_model, device, meta.dtype)?.into_parts();
        if let Some(a) = &meta.merge_adapter {
            load_adapter(&mut model, a, device)?;
            model.drop_adapters(true);
        }
        load_adapter(&mut model, dir, device)?;
        let head = load_head::<B>(dir, device)?;
        Ok(Self {
            model,
            head,
            encoder: ChatEncoder::from_bundle(&bundle, EncodeOptions::untruncated())?,
            pad_id: bundle.pad_id(),
            meta,
        })
    }

    /// Scores of `responses`: higher reads as answering.
    pub fn scores(&self, responses: &[&str]) -> Result<Vec<f32>> {
        let prompt = [Message::user(self.meta.prompt.clone())];
        let exchanges: Vec<(&[Message], &str)> =
            responses.iter().map(|r| (&prompt[..], *r)).collect();
        score_exchanges(
            &self.model,
            &self.head,
            &self.encoder,
            &exchanges,
            self.pad_id,
        )
    }

    /// Whether a response with this score refuses (the score is below the threshold).
    pub fn is_refusal(&self, score: f32) -> bool {
        score < self.meta.threshold
    }

    /// Whether each response refuses.
    pub fn refuses(&self, responses: &[&str]) -> Result<Vec<bool>> {
        Ok(self
            .scores(responses)?
            .into_iter()
            .map(|s| self.is_refusal(s))
            .collect())
    }
}

impl<B: Backend> RefusalClassifier for LearnedDetector<B> {
    fn refusals(&mut self, responses: &[&str]) -> burnish_data::Result<Vec<bool>> {
        self.refuses(responses)
            .map_err(|e| burnish_data::Error::Invalid(format!("learned refusal detector: {e}")))
    }
}
