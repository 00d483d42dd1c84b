//! What selection and search work from: the prompts as token ids, the mean activations and candidate
//! directions, and the quick measurements on the validation prompts.

use std::path::Path;

use burn::tensor::Tensor;
use burnish_core::burn;
use burnish_core::burn::tensor::backend::Backend;
use burnish_core::{Llama, Message, Pretrained};
use burnish_data::{PromptExample, RefusalConfig, RefusalDetector};

use super::directions::{
    activations, candidates, last_logprobs, mean_activations, mean_kl, mean_of, refusal_scores,
};
use super::gate::{self, Condition};
use super::report::Measured;
use super::{AblateConfig, Mode, Positions};
use crate::eval::{load_sets, EvalConfig, SetKind};
use crate::progress::Progress;
use crate::{Error, Result};

/// The prompts, rendered with the chat template (generation prompt included) and tokenized.
pub(super) struct Prompts {
    /// `[data]` (train split): where the directions come from. With `split = "refusals"`, the prompts
    /// the unedited model refuses and those it answers instead.
    pub harmful: Vec<Vec<u32>>,
    pub harmless: Vec<Vec<u32>>,
    /// The first harmful and harmless `[[eval.sets]]`, `val_prompts` each at most: selection and search.
    pub harmful_val: Vec<Vec<u32>>,
    pub harmless_val: Vec<Vec<u32>>,
}

impl Prompts {
    pub fn encode<B: Backend>(
        cfg: &AblateConfig,
        model: &Pretrained<B>,
        data: &[PromptExample],
        eval: &EvalConfig,
    ) -> Result<Self> {
        let (mut harmful, mut harmless) = (Vec::new(), Vec::new());
        for p in data {
            let ids = chat_ids(model, &p.messages)?;
            match p.harmful {
                Some(true) => harmful.push(ids),
                Some(false) => harmless.push(ids),
                None => return Err(Error::UnlabelledPrompt),
            }
        }
        if harmful.is_empty() || harmless.is_empty() {
            return Err(Error::OneSidedPrompts);
        }
        let sets = load_sets(&eval.sets, Some(cfg.val_prompts))?;
        let val = |kind: SetKind| -> Result<Vec<Vec<u32>>> {
            let s = sets
                .iter()
                .find(|s| s.kind == kind)
                .ok_or(Error::NoValidationSet(kind))?;
            s.prompts
                .iter()
                .map(|p| chat_ids(model, &[Message::user(p.prompt.clone())]))
                .collect()
        };
        Ok(Self {
            harmful,
            harmless,
            harmful_val: val(SetKind::Harmful)?,
            harmless_val: val(SetKind::Harmless)?,
        })
    }

    /// `split = "refusals"`: the `[data]` prompts re-divided by what the unedited model does with them
    /// (refused: the first class, in place of "harmful"), whatever their labels. Also returns how many
    /// labelled-harmful prompts it answers and labelled-harmless ones it refuses, for the log.
    pub fn split_by_refusal<B: Backend>(
        self,
        cfg: &AblateConfig,
        model: &Pretrained<B>,
        refusal: &RefusalConfig,
    ) -> Result<(Self, [usize; 2])> {
        let detector = RefusalDetector::new(refusal)?;
        let n_harmful = self.harmful.len();
        let all: Vec<Vec<u32>> = self.harmful.into_iter().chain(self.harmless).collect();
        let refused = refusals(model, &model.model, &all, &detector, cfg)?;
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for (ids, &r) in all.into_iter().zip(&refused) {
            if r {
                on.push(ids)
            } else {
                off.push(ids)
            }
        }
        let answered_harmful = refused[..n_harmful].iter().filter(|r| !**r).count();
        let refused_harmless = refused[n_harmful..].iter().filter(|r| **r).count();
        if on.is_empty() || off.is_empty() {
            let what = if on.is_empty() { "answers" } else { "refuses" };
            return Err(Error::OneSidedRefusals(what));
        }
        let split = Self {
            harmful: on,
            harmless: off,
            ..self
        };
        Ok((split, [answered_harmful, refused_harmless]))
    }
}

/// Whether `m`'s greedy answer to each prompt refuses (`detector`; `cfg.max_new_tokens` new tokens).
fn refusals<B: Backend>(
    model: &Pretrained<B>,
    m: &Llama<B>,
    prompts: &[Vec<u32>],
    detector: &RefusalDetector,
    cfg: &AblateConfig,
) -> Result<Vec<bool>> {
    let gen = burnish_core::GenerationConfig {
        max_new_tokens: cfg.max_new_tokens,
        eos_ids: model.eos_ids(),
        pad_id: model.pad_id(),
        ..Default::default() // greedy
    };
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(cfg.batch_size) {
        for g in burnish_core::generate(m, chunk, &gen, None)? {
            let text = model.tokenizer.decode(&g.new_ids, true)?;
            out.push(detector.is_refusal(text.trim()));
        }
    }
    Ok(out)
}

fn chat_ids<B: Backend>(model: &Pretrained<B>, messages: &[Message]) -> Result<Vec<u32>> {
    let text = model.render_chat(messages, true)?;
    Ok(model.tokenizer.encode(&text, false)?)
}

/// How many tokens the chat template puts after the user's message (with the generation prompt).
fn post_instruction_len<B: Backend>(model: &Pretrained<B>) -> Result<usize> {
    let marker = "burnish-marker";
    let text = model.render_chat(&[Message::user(marker)], true)?;
    let tail = text.rsplit(marker).next().unwrap_or("");
    Ok(model.tokenizer.encode(tail, false)?.len().max(1))
}

/// Per-prompt activations, each flattened as `[layers][npos][hidden]`.
type Activations = Vec<Vec<f32>>;

/// Mean activations on the `[data]` prompts and the candidate directions, per (layer, position), each
/// flattened as `[layers][npos][hidden]`.
pub(super) struct Directions {
    pub layers: usize,
    pub npos: usize,
    pub hidden: usize,
    pub harmful_mean: Vec<f64>,
    pub harmless_mean: Vec<f64>,
    pub candidates: Vec<f64>,
    /// Gated steering: every prompt's activations in the model being edited (its own sense of
    /// "harmful"), whichever model the directions come from: (harmful, harmless).
    own: Option<(Activations, Activations)>,
}

impl Directions {
    /// Reads the activations from `model`, or from `directions_from` when the config names one.
    pub fn read<B: Backend>(
        cfg: &AblateConfig,
        model: &Pretrained<B>,
        prompts: &Prompts,
        device: &B::Device,
    ) -> Result<Self> {
        let pad = model.pad_id();
        let npos = match cfg.positions {
            Positions::Last => 1,
            Positions::PostInstruction => post_instruction_len(model)?,
        };
        let (layers, hidden) = shape(&model.model);
        let source = match &cfg.directions_from {
            Some(p) => Some(load_source(p, &model.model, device)?),
            None => None,
        };
        let src = source.as_ref().map_or(&model.model, |s| &s.model);
        let (harmful, harmless) = (&prompts.harmful, &prompts.harmless);
        let own = cfg.gated().then(|| {
            let acts = |p: &[Vec<u32>]| activations(&model.model, p, npos, pad, cfg.batch_size);
            (acts(harmful), acts(harmless))
        });
        // The means: from those activations when they are the source's, else one more pass.
        let (harmful_mean, harmless_mean) = match (&source, &own) {
            (None, Some((ah, al))) => (mean_of(ah), mean_of(al)),
            _ => (
                mean_activations(src, harmful, npos, pad, cfg.batch_size),
                mean_activations(src, harmless, npos, pad, cfg.batch_size),
            ),
        };
        Ok(Self {
            layers,
            npos,
            hidden,
            candidates: candidates(&harmful_mean, &harmless_mean, hidden, cfg.projected),
            harmful_mean,
            harmless_mean,
            own,
        })
    }

    /// The candidate direction at (layer, position).
    pub fn dir(&self, layer: usize, position: usize) -> Vec<f64> {
        self.candidates[(layer * self.npos + position) * self.hidden..][..self.hidden].to_vec()
    }

    /// Gated steering: where harmful and harmless prompts fall at `layer`'s input.
    pub fn condition(&self, layer: usize) -> Option<Condition> {
        self.own
            .as_ref()
            .map(|(ah, al)| gate::condition(ah, al, layer, self.npos, self.hidden))
    }
}

/// (layers, hidden size).
fn shape<B: Backend>(m: &Llama<B>) -> (usize, usize) {
    (m.num_layers(), m.model.embed_tokens.dims()[1])
}

/// The model the directions are read from instead of the edited one; it must have the same shape.
fn load_source<B: Backend>(
    path: &Path,
    model: &Llama<B>,
    device: &B::Device,
) -> Result<Pretrained<B>> {
    let other = Pretrained::<B>::load_as(path, device, model.precision())?;
    if shape(&other.model) != shape(model) {
        return Err(Error::DirectionsShape {
            path: path.to_path_buf(),
            theirs: shape(&other.model),
            ours: shape(model),
        });
    }
    Ok(other)
}

/// The quick measurements selection and search make on the validation prompts.
pub(super) struct Ctx<'a, B: Backend> {
    pub cfg: &'a AblateConfig,
    /// The unedited model.
    pub model: &'a Pretrained<B>,
    pub progress: &'a dyn Progress,
    pub harmful_val: Vec<Vec<u32>>,
    pub harmless_val: Vec<Vec<u32>>,
    detector: RefusalDetector,
    pad: u32,
    /// First tokens of refusals, for the refusal score.
    refusal_ids: Vec<u32>,
    /// The unedited model's next-token log-probabilities on the harmless validation prompts.
    base_harmless_lp: Tensor<B, 2>,
}

impl<'a, B: Backend> Ctx<'a, B> {
    pub fn new(
        cfg: &'a AblateConfig,
        model: &'a Pretrained<B>,
        refusal: &RefusalConfig,
        prompts: Prompts,
        progress: &'a dyn Progress,
    ) -> Result<Self> {
        let mut refusal_ids: Vec<u32> = cfg
            .refusal_tokens
            .iter()
            .filter_map(|t| model.tokenizer.encode(t, false).ok()?.first().copied())
            .collect();
        refusal_ids.sort_unstable();
        refusal_ids.dedup();
        let pad = model.pad_id();
        Ok(Self {
            cfg,
            model,
            progress,
            detector: RefusalDetector::new(refusal)?,
            pad,
            base_harmless_lp: last_logprobs(
                &model.model,
                &prompts.harmless_val,
                pad,
                cfg.batch_size,
            ),
            harmful_val: prompts.harmful_val,
            harmless_val: prompts.harmless_val,
            refusal_ids,
        })
    }
}

impl<B: Backend> Ctx<'_, B> {
    /// Share of `prompts` (token ids) whose greedy answer the detector flags.
    pub fn refusal_rate(&self, m: &Llama<B>, prompts: &[Vec<u32>]) -> Result<f64> {
        let refused = refusals(self.model, m, prompts, &self.detector, self.cfg)?;
        Ok(refused.iter().filter(|r| **r).count() as f64 / prompts.len().max(1) as f64)
    }

    /// Mean first-token KL(unedited ‖ m) on the harmless validation prompts.
    pub fn kl(&self, m: &Llama<B>) -> f64 {
        let lp = last_logprobs(m, &self.harmless_val, self.pad, self.cfg.batch_size);
        mean_kl(self.base_harmless_lp.clone(), lp)
    }

    /// Mean refusal score (log-odds of the refusal tokens first) of `m` on `prompts`.
    pub fn score(&self, m: &Llama<B>, prompts: &[Vec<u32>]) -> f64 {
        let lp = last_logprobs(m, prompts, self.pad, self.cfg.batch_size);
        let s = refusal_scores(lp, &self.refusal_ids);
        s.iter().sum::<f64>() / s.len().max(1) as f64
    }

    /// The search's two objectives for `m` (both minimised) and what they came from. Ablation and
    /// subtraction: harmful refusals and KL; steering: harmful compliance and harmless refusals.
    pub fn measure(&self, m: &Llama<B>) -> Result<([f64; 2], Measured)> {
        let rr = self.refusal_rate(m, &self.harmful_val)?;
        Ok(match self.cfg.mode {
            Mode::Ablate | Mode::Subtract => {
                let kl = self.kl(m);
                let info = Measured {
                    refusal_rate: rr,
                    kl: Some(kl),
                    harmless_refusal_rate: None,
                };
                ([rr, kl], info)
            }
            Mode::Steer => {
                let rl = self.refusal_rate(m, &self.harmless_val)?;
                let info = Measured {
                    refusal_rate: rr,
                    kl: None,
                    harmless_refusal_rate: Some(rl),
                };
                ([1.0 - rr, rl], info)
            }
        })
    }
}
