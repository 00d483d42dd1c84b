//! Batched generation with a KV cache: left-padded prompts, greedy or sampled (temperature, top-k,
//! top-p, seeded), stopping on EOS ids, stop strings or a token budget. Finished rows leave the batch,
//! so a long straggler does not make every row pay for its steps.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::model::{causal_padding_mask, positions_tensor, KvCache, Llama};
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Nucleus sampling: smallest set with probability mass >= top_p (1.0 = off).
    pub top_p: f32,
    pub seed: u64,
    /// Generation stops at any of these; the EOS token is included in the output.
    pub eos_ids: Vec<u32>,
    /// Generation stops once the decoded new text contains one of these.
    pub stop_strings: Vec<String>,
    /// Token used for left padding (never attended to).
    pub pad_id: u32,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            eos_ids: vec![],
            stop_strings: vec![],
            pad_id: 0,
        }
    }
}

impl GenerationConfig {
    /// Range checks: a negative, NaN or infinite temperature would silently act as greedy or as
    /// uniform sampling, and a `top_p` outside (0, 1] as no filter or an empty one.
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            return Err(Error::Generate(
                "max_new_tokens = 0: nothing would be generated (at least 1)".into(),
            ));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Generate(format!(
                "temperature = {} must be a finite number >= 0 (0 = greedy)",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Generate(format!(
                "top_p = {} must be in (0, 1] (1 = off)",
                self.top_p
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Eos,
    StopString,
    Length,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub new_ids: Vec<u32>,
    pub finish: FinishReason,
}

/// Set by the first warning about generating past the context: a run generates in many batches
/// (eval sets, PPO rollouts, data answers), and one warning per process says it all.
static CONTEXT_WARNED: AtomicBool = AtomicBool::new(false);

/// The warning for `prompts` that, with `max_new_tokens` more, would run past `context` positions;
/// `None` when every prompt fits.
pub fn context_overflow(
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    context: usize,
) -> Option<String> {
    let longest = prompts.iter().map(Vec::len).max()?;
    let over = prompts
        .iter()
        .filter(|p| p.len() + max_new_tokens > context)
        .count();
    (over > 0).then(|| {
        format!(
            "{over} of {} prompts (longest {longest} tokens) + max_new_tokens {max_new_tokens} \
             exceed the model's context of {context} tokens; positions past it were never trained \
             and output there degrades",
            prompts.len()
        )
    })
}

/// Refuses empty prompts, ids outside the vocabulary and stop strings without a tokenizer; warns
/// (once per process) when a prompt plus `max_new_tokens` passes the model's context.
fn check_inputs<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    has_tokenizer: bool,
) -> Result<()> {
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(Error::Generate(format!(
            "prompt {i} is empty; at least one token is needed"
        )));
    }
    if !cfg.stop_strings.is_empty() && !has_tokenizer {
        return Err(Error::Generate("stop strings need a tokenizer".into()));
    }
    let vocab = model.vocab_size();
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t as usize >= vocab) {
        return Err(Error::Generate(format!(
            "token id {bad} is outside the vocabulary ({vocab})"
        )));
    }
    if let Some(w) = context_overflow(prompts, cfg.max_new_tokens, model.max_position_embeddings) {
        if !CONTEXT_WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(target: "burnish", "{w}");
        }
    }
    Ok(())
}

/// Token ids or positions, one row per sequence.
type Rows = Vec<Vec<i64>>;

/// Generates continuations of `prompts` (token ids, no padding) in one batch. Warns once per process
/// (`tracing`, level warn) when a prompt plus `max_new_tokens` exceeds the model's context.
pub fn generate<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    tokenizer: Option<&Tokenizer>,
) -> Result<Vec<Generated>> {
    cfg.validate()?;
    if prompts.is_empty() {
        return Ok(vec![]);
    }
    check_inputs(model, prompts, cfg, tokenizer.is_some())?;
    let vocab = model.vocab_size();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let (mut state, mut last) = Decoding::prefill(model, prompts, cfg.pad_id);
    let mut out: Vec<Generated> = (0..prompts.len())
        .map(|_| Generated {
            new_ids: vec![],
            finish: FinishReason::Length,
        })
        .collect();
    for step in 0..cfg.max_new_tokens {
        let n = state.active.len();
        let logits = model
            .logits(last)
            .reshape([n, vocab])
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| Error::Generate(format!("reading logits: {e:?}")))?;
        // Batch rows that go on, and their new tokens.
        let (mut keep, mut tokens) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (i, &row) in state.active.iter().enumerate() {
            let tok = pick(&logits[i * vocab..(i + 1) * vocab], cfg, &mut rng);
            if !record(&mut out[row], tok, cfg, tokenizer)? {
                keep.push(i);
                tokens.push(tok as i64);
            }
        }
        if keep.is_empty() || step + 1 == cfg.max_new_tokens {
            break;
        }
        if keep.len() < n {
            state.keep_rows(&keep);
        }
        last = state.advance(model, tokens);
    }
    Ok(out)
}

/// Appends `tok` to `g` and says whether its row is done (EOS, or a stop string in the decoded text).
fn record(
    g: &mut Generated,
    tok: u32,
    cfg: &GenerationConfig,
    tokenizer: Option<&Tokenizer>,
) -> Result<bool> {
    g.new_ids.push(tok);
    if cfg.eos_ids.contains(&tok) {
        g.finish = FinishReason::Eos;
        return Ok(true);
    }
    let (Some(t), false) = (tokenizer, cfg.stop_strings.is_empty()) else {
        return Ok(false);
    };
    let text = t.decode(&g.new_ids, false)?;
    let hit = cfg.stop_strings.iter().any(|s| text.contains(s.as_str()));
    if hit {
        g.finish = FinishReason::StopString;
    }
    Ok(hit)
}

/// The batch being decoded: which prompt each row is, its attention mask and next position, the KV
/// cache, and (for a model whose cache may have to be rebuilt, LongRoPE) every row's tokens so far.
struct Decoding<B: Backend> {
    /// `active[i]` = the prompt of batch row i.
    active: Vec<usize>,
    /// Per row, which cached positions are real tokens (left padding is not).
    valid: Vec<Vec<bool>>,
    next_pos: Vec<i64>,
    cache: KvCache<B>,
    history: Option<(Rows, Rows)>,
    device: B::Device,
}

impl<B: Backend> Decoding<B> {
    /// Runs the left-padded prompts through the model: the state, and each row's last hidden state.
    /// Positions count real tokens only (transformers: cumsum(mask) - 1, pads at 1).
    fn prefill(model: &Llama<B>, prompts: &[Vec<u32>], pad_id: u32) -> (Self, Tensor<B, 3>) {
        let device = model.model.embed_tokens.device();
        let b = prompts.len();
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let mut valid: Vec<Vec<bool>> = Vec::with_capacity(b);
        let mut ids = Vec::with_capacity(b * width);
        let mut pos_rows = Vec::with_capacity(b);
        for p in prompts {
            let pad = width - p.len();
            valid.push((0..width).map(|j| j >= pad).collect());
            ids.extend(std::iter::repeat_n(pad_id as i64, pad).chain(p.iter().map(|&t| t as i64)));
            pos_rows.push(
                (0..width)
                    .map(|j| if j < pad { 1 } else { (j - pad) as i64 })
                    .collect::<Vec<_>>(),
            );
        }
        let padded = valid.iter().any(|r| !r[0]);
        let history = model.long_rope.as_ref().map(|_| {
            (
                ids.chunks(width).map(<[i64]>::to_vec).collect(),
                pos_rows.clone(),
            )
        });
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, width]), &device);
        let mask = (padded || model.sliding_window.is_some_and(|w| width > w))
            .then(|| causal_padding_mask::<B>(&valid, width, None, &device));
        let ctx = model.context(positions_tensor::<B>(&pos_rows, &device), mask);
        let mut cache = KvCache::new(model.num_layers());
        let hidden = model.forward_hidden(input, &ctx, Some(&mut cache), None);
        let state = Decoding {
            active: (0..b).collect(),
            next_pos: pos_rows.iter().map(|r| r[width - 1] + 1).collect(),
            valid,
            cache,
            history,
            device,
        };
        (state, hidden.slice([0..b, width - 1..width]))
    }

    /// Keeps only batch rows `keep` (finished sequences leave the batch).
    fn keep_rows(&mut self, keep: &[usize]) {
        let rows: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
        let rows =
            Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [keep.len()]), &self.device);
        self.cache.select_rows(rows);
        if let Some((ids, pos)) = self.history.as_mut() {
            *ids = keep.iter().map(|&i| ids[i].clone()).collect();
            *pos = keep.iter().map(|&i| pos[i].clone()).collect();
        }
        self.valid = keep.iter().map(|&i| self.valid[i].clone()).collect();
        self.next_pos = keep.iter().map(|&i| self.next_pos[i]).collect();
        self.active = keep.iter().map(|&i| self.active[i]).collect();
    }

    /// Feeds each row's new token through the model (one position, through the cache) and returns
    /// the rows' hidden states.
    fn advance(&mut self, model: &Llama<B>, tokens: Vec<i64>) -> Tensor<B, 3> {
        let n = self.active.len();
        for row in self.valid.iter_mut() {
            row.push(true);
        }
        let kv = self.valid[0].len();
        if let Some((ids, pos)) = self.history.as_mut() {
            for (i, &t) in tokens.iter().enumerate() {
                ids[i].push(t);
                pos[i].push(self.next_pos[i]);
            }
            if model.long_rope.as_ref().is_some_and(|l| kv == l.from + 1) {
                let (cache, last) = refill(model, ids, pos, &self.valid);
                self.cache = cache;
                self.next_pos.iter_mut().for_each(|p| *p += 1);
                return last;
            }
        }
        let still_padded = self.valid.iter().any(|r| !r[0]);
        let device = &self.device;
        let mask = (still_padded || model.sliding_window.is_some_and(|w| kv > w))
            .then(|| causal_padding_mask::<B>(&self.valid, 1, None, device));
        let pos: Vec<Vec<i64>> = self.next_pos.iter().map(|&p| vec![p]).collect();
        let ctx = model.context(positions_tensor::<B>(&pos, device), mask);
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [n, 1]), device);
        let last = model.forward_hidden(input, &ctx, Some(&mut self.cache), None);
        for p in self.next_pos.iter_mut() {
            *p += 1;
        }
        last
    }
}

/// transformers' Phi-3 drops its cache once, when the sequence first grows past LongRoPE's original
/// context, and recomputes every key with the long factors (`prepare_inputs_for_generation`); so does
/// this: a fresh cache from every row's tokens so far, and the hidden state of the last position.
fn refill<B: Backend>(
    model: &Llama<B>,
    ids: &Rows,
    pos: &Rows,
    valid: &[Vec<bool>],
) -> (KvCache<B>, Tensor<B, 3>) {
    let device = model.device();
    let (n, kv) = (ids.len(), valid[0].len());
    let flat: Vec<i64> = ids.iter().flatten().copied().collect();
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [n, kv]), &device);
    let mask = causal_padding_mask::<B>(valid, kv, None, &device);
    let ctx = model.context(positions_tensor::<B>(pos, &device), Some(mask));
    let mut cache = KvCache::new(model.num_layers());
    let hidden = model.forward_hidden(input, &ctx, Some(&mut cache), None);
    (cache, hidden.slice([0..n, kv - 1..kv]))
}

/// Chooses the next token from one row of logits.
fn pick(logits: &[f32], cfg: &GenerationConfig, rng: &mut StdRng) -> u32 {
    if cfg.temperature <= 0.0 {
        return argmax(logits);
    }
    if (cfg.top_k == 0 || cfg.top_k >= logits.len()) && cfg.top_p >= 1.0 {
        // Plain sampling needs no sort of the vocabulary (PPO rollouts sample every token this way).
        let t = cfg.temperature;
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let probs: Vec<f32> = logits.iter().map(|&l| ((l - max) / t).exp()).collect();
        let r: f32 = rng.random::<f32>() * probs.iter().sum::<f32>();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if r < acc {
                return i as u32;
            }
        }
        return argmax(logits);
    }
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / cfg.temperature))
        .collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1));
    if cfg.top_k > 0 && cfg.top_k < cand.len() {
        cand.truncate(cfg.top_k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f32> = cand.iter().map(|&(_, l)| (l - max).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    if cfg.top_p < 1.0 {
        let mut mass = 0.0;
        let mut cut = probs.len();
        for (i, p) in probs.iter().enumerate() {
            mass += p;
            if mass >= cfg.top_p {
                cut = i + 1;
                break;
            }
        }
        probs.truncate(cut);
        let s: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= s);
    }
    let r: f32 = rng.random();
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if r < acc {
            return cand[i].0;
        }
    }
    cand[probs.len() - 1].0
}

/// Index of the largest logit; the first one on ties, as torch.argmax.
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_overflow_counts_the_prompts_that_do_not_fit() {
        let prompts = vec![vec![1; 10], vec![1; 200], vec![1; 250]];
        assert_eq!(context_overflow(&prompts, 6, 256), None);
        let w = context_overflow(&prompts, 60, 256).unwrap();
        assert!(w.starts_with("2 of 3 prompts (longest 250 tokens)"), "{w}");
        assert!(w.contains("context of 256 tokens"), "{w}");
        assert_eq!(context_overflow(&[], 1000, 256), None);
    }

    #[test]
    fn sampling_settings_out_of_range_are_refused() {
        let with = |temperature: f32, top_p: f32| GenerationConfig {
            temperature,
            top_p,
            ..Default::default()
        };
        for t in [-1.0, f32::NAN, f32::INFINITY] {
            let e = with(t, 1.0).validate().unwrap_err().to_string();
            assert!(e.contains("temperature"), "{e}");
        }
        for p in [2.0, -0.5, 0.0, f32::NAN] {
            let e = with(0.7, p).validate().unwrap_err().to_string();
            assert!(e.contains("top_p"), "{e}");
        }
        assert!(with(0.0, 1.0).validate().is_ok() && with(1.5, 0.9).validate().is_ok());
        let none = GenerationConfig {
            max_new_tokens: 0,
            ..Default::default()
        };
        assert!(none
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_new_tokens"));
    }

    #[test]
    fn argmax_first_on_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_sampling_is_seeded() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 7) % 13) as f32 * 0.3).collect();
        let mut rng = StdRng::seed_from_u64(1);
        let cfg = GenerationConfig {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        };
        assert_eq!(pick(&logits, &cfg, &mut rng), argmax(&logits));
        let cfg = GenerationConfig {
            temperature: 1.0,
            top_p: 0.9,
            ..Default::default()
        };
        let a: Vec<u32> = {
            let mut r = StdRng::seed_from_u64(7);
            (0..20).map(|_| pick(&logits, &cfg, &mut r)).collect()
        };
        let b: Vec<u32> = {
            let mut r = StdRng::seed_from_u64(7);
            (0..20).map(|_| pick(&logits, &cfg, &mut r)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
    }

    #[test]
    fn plain_sampling_follows_the_softmax() {
        let logits = [0.0f32, 1.0, 2.0, -30.0];
        let cfg = GenerationConfig {
            temperature: 0.5,
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(3);
        let mut counts = [0usize; 4];
        let n = 20_000;
        for _ in 0..n {
            counts[pick(&logits, &cfg, &mut rng) as usize] += 1;
        }
        let z: f64 = logits.iter().map(|&l| (f64::from(l) / 0.5).exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let p = (f64::from(logits[i]) / 0.5).exp() / z;
            assert!(
                (c as f64 / n as f64 - p).abs() < 0.015,
                "token {i}: {c} vs p {p}"
            );
        }
    }
}
