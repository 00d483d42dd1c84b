//! Turning prompts into SFT examples: a model's own answers (batched generation from burnish-core), or
//! refusal templates chosen by seed, so a safety SFT set can be built from harmful prompts alone.

use burnish_core::burn::tensor::backend::Backend;
use burnish_core::{generate, FinishReason, GenerationConfig, Message, Pretrained};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::example::{PromptExample, SftExample};
use crate::refusal::RefusalDetector;
use crate::rng::Rng;

/// `[data.generate]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// Default 256.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// 0 (default) is greedy.
    #[serde(default)]
    pub temperature: f32,
    #[serde(default = "one")]
    pub top_p: f32,
    /// 0 (default) is off.
    #[serde(default)]
    pub top_k: usize,
    #[serde(default)]
    pub seed: u64,
    /// Prompts per generation batch (default 8).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Answer with this model (HF directory or GGUF, relative to the run file) instead of `[model]`:
    /// e.g. the original model's answers when `[model]` is a safety-tuned variant being made
    /// refusal-free, whose own answers would be refusals.
    #[serde(default)]
    pub model: Option<std::path::PathBuf>,
    /// With `model`: answer each prompt with `[model]` first, and with `model` only where `[model]`'s
    /// reply refuses (the refusal phrases of `[data.refusal]`). A safety-tuned model being made
    /// refusal-free then learns its own answers wherever it answers, which keeps it close to itself
    /// (KL to the source), and the original's where it refused. Default false: every answer from
    /// `model`. When both name the same file, each prompt is answered once.
    #[serde(default)]
    pub self_first: bool,
}

fn default_max_new_tokens() -> usize {
    256
}
fn default_batch_size() -> usize {
    8
}
fn one() -> f32 {
    1.0
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: default_max_new_tokens(),
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            batch_size: default_batch_size(),
            model: None,
            self_first: false,
        }
    }
}

/// One answer to a prompt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    /// Generation stopped at `max_new_tokens`, not at an end of turn: the answer goes on past `text`.
    /// Training then labels no end-of-turn token after it, so a model does not learn to stop
    /// mid-sentence where the cut happened to fall.
    pub unfinished: bool,
}

impl Reply {
    /// An answer that ended where its author ended it.
    pub fn finished(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            unfinished: false,
        }
    }
}

/// Something that answers prompts: a model, or in tests a stand-in.
pub trait Responder {
    /// One reply per prompt, in order. Each prompt ends with a user message.
    fn respond(&mut self, prompts: &[Vec<Message>]) -> Result<Vec<Reply>>;
}

/// Answers with a loaded model and its chat template.
pub struct ModelResponder<'a, B: Backend> {
    model: &'a Pretrained<B>,
    cfg: GenerateConfig,
}

impl<'a, B: Backend> ModelResponder<'a, B> {
    pub fn new(model: &'a Pretrained<B>, cfg: GenerateConfig) -> Self {
        Self { model, cfg }
    }
}

impl<B: Backend> Responder for ModelResponder<'_, B> {
    fn respond(&mut self, prompts: &[Vec<Message>]) -> Result<Vec<Reply>> {
        let m = self.model;
        let ids = prompts
            .iter()
            .map(|p| Ok(m.tokenizer.encode(&m.render_chat(p, true)?, false)?))
            .collect::<Result<Vec<Vec<u32>>>>()?;
        // Similar lengths share a batch, so little compute goes to padding; replies return in input order.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = vec![Reply::default(); ids.len()];
        for (b, chunk) in order.chunks(self.cfg.batch_size.max(1)).enumerate() {
            let cfg = GenerationConfig {
                max_new_tokens: self.cfg.max_new_tokens,
                temperature: self.cfg.temperature,
                top_k: self.cfg.top_k,
                top_p: self.cfg.top_p,
                seed: self.cfg.seed.wrapping_add(b as u64),
                eos_ids: m.eos_ids(),
                stop_strings: vec![],
                pad_id: m.pad_id(),
            };
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let replies = generate(&m.model, &batch, &cfg, Some(&m.tokenizer))?;
            for (&i, g) in chunk.iter().zip(replies) {
                out[i] = Reply {
                    text: m.tokenizer.decode(&g.new_ids, true)?.trim().to_string(),
                    unfinished: g.finish == FinishReason::Length,
                };
            }
            tracing::info!(
                done = ((b + 1) * self.cfg.batch_size.max(1)).min(ids.len()),
                of = ids.len(),
                "generated"
            );
        }
        let unfinished = out.iter().filter(|r| r.unfinished).count();
        if unfinished > 0 {
            tracing::info!(
                unfinished,
                of = out.len(),
                max_new_tokens = self.cfg.max_new_tokens,
                "answers cut at data.generate.max_new_tokens are learned without an end of turn"
            );
        }
        Ok(out)
    }
}

/// `[data.generate] self_first`: answers with `first`, and asks `then` only for the prompts whose
/// reply from `first` refuses (by `detector`), in input order.
pub struct FallbackResponder<'a> {
    first: &'a mut dyn Responder,
    then: &'a mut dyn Responder,
    detector: &'a RefusalDetector,
    /// Prompts `first` refused, which `then` answered (summed over calls).
    pub fell_back: usize,
    /// Prompts answered (summed over calls).
    pub answered: usize,
}

impl<'a> FallbackResponder<'a> {
    pub fn new(
        first: &'a mut dyn Responder,
        then: &'a mut dyn Responder,
        detector: &'a RefusalDetector,
    ) -> Self {
        Self {
            first,
            then,
            detector,
            fell_back: 0,
            answered: 0,
        }
    }
}

impl Responder for FallbackResponder<'_> {
    fn respond(&mut self, prompts: &[Vec<Message>]) -> Result<Vec<Reply>> {
        let mut replies = respond_all(self.first, prompts)?;
        let refused: Vec<usize> = (0..replies.len())
            .filter(|&i| self.detector.detect(&replies[i].text).is_some())
            .collect();
        if !refused.is_empty() {
            let again: Vec<Vec<Message>> = refused.iter().map(|&i| prompts[i].clone()).collect();
            for (&i, reply) in refused.iter().zip(respond_all(self.then, &again)?) {
                replies[i] = reply;
            }
        }
        self.fell_back += refused.len();
        self.answered += prompts.len();
        tracing::info!(
            refused = refused.len(),
            of = prompts.len(),
            "self_first: answered by the trained model, its refusals again by data.generate.model"
        );
        Ok(replies)
    }
}

/// Refusals paired with harmful prompts when no `refusal_templates` are configured. Written for burnish:
/// short, polite, no lecture, and varied so a model does not learn a single string.
pub const DEFAULT_REFUSALS: &[&str] = &[
    "I can't help with that.",
    "I'm sorry, but I can't help with that request.",
    "I won't help with this, because it could cause real harm to people.",
    "Sorry, that's not something I can assist with.",
    "I can't provide that. If there's something else you're working on, I'm happy to help.",
    "I'm not able to help with this request.",
    "I have to decline this one, since it could be used to hurt someone.",
    "I'm sorry, I can't do that. Is there anything else I can help you with?",
];

/// The template for record `index` of source `source`: seeded, and stable when other sources change.
pub fn pick_refusal(templates: &[String], seed: u64, source: usize, index: usize) -> &str {
    let mut rng = Rng::derive(seed ^ (source as u64).rotate_left(32), index as u64);
    &templates[rng.below(templates.len())]
}

/// `responder`'s replies to `prompts`, checked to be one per prompt.
fn respond_all(responder: &mut dyn Responder, prompts: &[Vec<Message>]) -> Result<Vec<Reply>> {
    let replies = responder.respond(prompts)?;
    if replies.len() != prompts.len() {
        return Err(Error::Invalid(format!(
            "{} replies for {} prompts",
            replies.len(),
            prompts.len()
        )));
    }
    Ok(replies)
}

/// Answers prompts with `responder`. (`refused` is left for the refusal policy step to fill in.)
pub fn answer_with(
    prompts: Vec<PromptExample>,
    responder: &mut dyn Responder,
) -> Result<Vec<SftExample>> {
    let msgs: Vec<Vec<Message>> = prompts.iter().map(|p| p.messages.clone()).collect();
    let replies = respond_all(responder, &msgs)?;
    Ok(prompts
        .into_iter()
        .zip(replies)
        .map(|(p, reply)| answered(p, reply))
        .collect())
}

/// A prompt with its reply appended as the assistant turn.
pub(crate) fn answered(p: PromptExample, reply: Reply) -> SftExample {
    let mut messages = p.messages;
    messages.push(Message::assistant(reply.text));
    SftExample {
        messages,
        category: p.category,
        harmful: p.harmful,
        refused: None,
        unfinished: reply.unfinished,
        origin: p.origin,
    }
}
