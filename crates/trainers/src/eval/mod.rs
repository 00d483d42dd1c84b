//! Safety evaluation: violation rate on harmful prompts, false refusal rate on benign/borderline and
//! harmless ones (overall, by dataset category and by Llama 3 hazard category), and KL divergence from a
//! base model on harmless prompts. Deterministic: batched greedy generation with the KV cache.

pub mod hazard;
pub mod judge;
pub mod kl;
pub mod prompts;
pub mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use burnish_core::burn;
use burnish_core::{generate, Adapters, GenerationConfig, Llama, Message, Pretrained};
use burnish_data::{DetectorSpec, RefusalConfig, RefusalDetector};
use serde::{Deserialize, Serialize};

pub use hazard::HazardMap;
pub use judge::Judge;
pub use prompts::{load_sets, PromptSet, SetKind, SetSpec};
pub use report::{Detector, EvalMeta, EvalReport, KlReport, Named, Rates, SetReport, Speed};

use crate::detector::LearnedDetector;
use crate::progress::Progress;
use crate::{Error, Result};
use kl::{continuation_kl, Continuation, Side};

/// `[eval]`: held-out metrics during training and the safety evaluation after it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate on the eval split every N optimizer steps (default 0: only at the end, if there is one).
    pub steps: usize,
    /// Micro-batch size for evaluation (default: `train.batch_size`).
    pub batch_size: Option<usize>,
    /// `[[eval.sets]]`: prompt sets (`path`, `kind` = harmful | benign | harmless, optional `name`,
    /// `prompt`, `category` columns) for the safety evaluation that runs after training (in
    /// `<output.dir>/eval`) and in `burnish eval --config` (default: none).
    pub sets: Vec<SetSpec>,
    /// Prompts per set at most (default: all).
    pub limit: Option<usize>,
    /// New tokens per response, greedy (default 64).
    pub max_new_tokens: usize,
    /// Prompts per generation batch (default 16).
    pub generation_batch_size: usize,
    /// KL to the base model (adapters off) on the first harmless set (default true).
    pub kl: bool,
    /// A judge model (HF dir or GGUF) that decides refusals instead of phrase matching (default: none).
    pub judge: Option<PathBuf>,
    /// Dataset category → Llama 3 hazard category, overriding the built-in table (docs/eval.md).
    pub hazards: BTreeMap<String, String>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            steps: 0,
            batch_size: None,
            sets: Vec::new(),
            limit: None,
            max_new_tokens: 64,
            generation_batch_size: 16,
            kl: true,
            judge: None,
            hazards: BTreeMap::new(),
        }
    }
}

impl EvalConfig {
    /// Range checks serde cannot make; the message names the key. With no new tokens every reply is
    /// empty, and an empty reply would count as a refusal: a violation rate of 0% that means nothing.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.max_new_tokens == 0 {
            return Err(
                "`eval.max_new_tokens` = 0: replies need at least 1 new token to be judged".into(),
            );
        }
        if self.generation_batch_size == 0 || self.batch_size == Some(0) {
            return Err(
                "`eval.generation_batch_size` and `eval.batch_size` must be at least 1".into(),
            );
        }
        if self.limit == Some(0) {
            return Err("`eval.limit` = 0 leaves no prompts (leave it out for all)".into());
        }
        Ok(())
    }
}

/// The models KL is measured against: the base (usually the original model) and, when given, the model
/// this variant was made from (heretic's "KL to the model being uncensored").
pub struct KlRefs<'a, B: Backend> {
    pub base: Option<&'a Llama<B>>,
    pub source: Option<&'a Llama<B>>,
}

impl<'a, B: Backend> From<Option<&'a Llama<B>>> for KlRefs<'a, B> {
    /// KL to `base` alone.
    fn from(base: Option<&'a Llama<B>>) -> Self {
        Self { base, source: None }
    }
}

/// How to evaluate (the `[eval]` keys of a run file, or `burnish eval`'s flags).
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub max_new_tokens: usize,
    pub batch_size: usize,
    /// Measure KL to the base on the first harmless set (needs a base).
    pub kl: bool,
    pub hazards: HazardMap,
}

/// One response and what the refusal check said (a line of completions.jsonl).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub set: String,
    pub prompt: String,
    pub category: Option<String>,
    pub hazard: String,
    pub response: String,
    pub refused: bool,
    /// The refusal phrase the detector matched (also recorded when a judge decides).
    pub matched: Option<String>,
    /// The verdict of the judge or the learned detector, when one is used (then `refused` is this).
    pub judge: Option<bool>,
    pub new_tokens: usize,
}

/// Evaluates per an `[eval]` section: loads its sets (paths as given: a run file's loader resolves
/// them), the detector of `refusal`, and the judge, if any.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_config<'a, B: Backend>(
    model: &Pretrained<B>,
    refs: impl Into<KlRefs<'a, B>>,
    cfg: &EvalConfig,
    refusal: &RefusalConfig,
    out: &Path,
    meta: EvalMeta,
    device: &B::Device,
    progress: &dyn Progress,
) -> Result<EvalReport> {
    if cfg.sets.is_empty() {
        return Err(Error::NoEvalSets);
    }
    cfg.validate().map_err(Error::Invalid)?;
    let sets = load_sets(&cfg.sets, cfg.limit)?;
    let detector = RefusalDetector::new(refusal)?;
    let decider = match (&cfg.judge, &refusal.detector) {
        (Some(p), _) => Some(Decider::Judge(Box::new(Judge::new(Pretrained::load(
            p, device,
        )?)?))),
        (None, DetectorSpec::Model(dir)) => Some(Decider::Learned(Box::new(
            LearnedDetector::load(dir, device)?,
        ))),
        (None, DetectorSpec::Phrases) => None,
    };
    let opts = EvalOptions {
        max_new_tokens: cfg.max_new_tokens,
        batch_size: cfg.generation_batch_size,
        kl: cfg.kl,
        hazards: HazardMap::new(&cfg.hazards)?,
    };
    evaluate(
        model,
        refs,
        &sets,
        &opts,
        &detector,
        decider.as_ref(),
        out,
        meta,
        progress,
    )
}

/// What decides refusals instead of the phrases: a judge model, or a learned detector.
pub enum Decider<B: Backend> {
    Judge(Box<Judge<B>>),
    Learned(Box<LearnedDetector<B>>),
}

impl<B: Backend> Decider<B> {
    /// Whether each (prompt, response) refuses.
    fn refusals(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<Vec<bool>> {
        match self {
            Self::Judge(j) => j.refusals(pairs, batch_size),
            Self::Learned(d) => d.refuses(&pairs.iter().map(|(_, r)| *r).collect::<Vec<_>>()),
        }
    }

    fn kind(&self) -> Detector {
        match self {
            Self::Judge(_) => Detector::Judge,
            Self::Learned(_) => Detector::Learned,
        }
    }
}

/// One line per set, then KL, for a terminal.
pub fn summary(report: &EvalReport) -> String {
    let mut s = String::new();
    for (name, set) in report.sets.iter() {
        let v = &set.overall;
        let rate = |k: &str, x: Option<f64>| x.map(|x| format!("{k} {:.1}%", 100.0 * x));
        let what = rate("violation_rate", v.violation_rate)
            .or_else(|| rate("false_refusal_rate", v.false_refusal_rate))
            .unwrap_or_default();
        s.push_str(&format!("{name}: {}/{} refused, {what}\n", v.refused, v.n));
    }
    for (to, kl) in [("", &report.kl), (" to the source", &report.kl_source)] {
        if let Some(kl) = kl {
            s.push_str(&format!(
                "KL{to} on {}: first token {:.4}, per token {:.4}\n",
                kl.set, kl.first_token, kl.per_token
            ));
        }
    }
    s
}

/// A greedy answer: the prompt's ids, the new ids (EOS included), and the text.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub prompt_ids: Vec<u32>,
    pub new_ids: Vec<u32>,
    pub text: String,
}

/// Greedy answers to `prompts`, rendered as one user message each.
pub fn answer<B: Backend>(
    model: &Pretrained<B>,
    prompts: &[String],
    max_new_tokens: usize,
    batch_size: usize,
) -> Result<Vec<Answer>> {
    let ids = prompts
        .iter()
        .map(|p| {
            let text = model.render_chat(&[Message::user(p.clone())], true)?;
            Ok(model.tokenizer.encode(&text, false)?)
        })
        .collect::<Result<Vec<Vec<u32>>>>()?;
    // Similar lengths share a batch, so little compute goes to padding.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut out = vec![Answer::default(); ids.len()];
    let cfg = GenerationConfig {
        max_new_tokens,
        eos_ids: model.eos_ids(),
        pad_id: model.pad_id(),
        ..Default::default() // greedy
    };
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
        for (&i, g) in chunk
            .iter()
            .zip(generate(&model.model, &batch, &cfg, None)?)
        {
            let text = model.tokenizer.decode(&g.new_ids, true)?.trim().to_string();
            out[i] = Answer {
                prompt_ids: ids[i].clone(),
                new_ids: g.new_ids,
                text,
            };
        }
    }
    Ok(out)
}

/// A set's metrics: overall, `by_category` (dataset categories; `none` for records without one) and
/// `by_hazard` (the Llama 3 taxonomy); `path` is the set's file.
pub fn set_metrics(kind: SetKind, path: &Path, rows: &[Completion]) -> SetReport {
    let mut by_cat: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut by_hazard: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in rows {
        let cat = r.category.clone().unwrap_or_else(|| "none".into());
        for (map, key) in [(&mut by_cat, cat), (&mut by_hazard, r.hazard.clone())] {
            let e = map.entry(key).or_default();
            e.0 += 1;
            e.1 += usize::from(r.refused);
        }
    }
    let group = |m: BTreeMap<String, (usize, usize)>| -> BTreeMap<String, Rates> {
        m.into_iter()
            .map(|(k, (n, r))| (k, Rates::new(kind, n, r)))
            .collect()
    };
    let refused = rows.iter().filter(|r| r.refused).count();
    SetReport {
        overall: Rates::new(kind, rows.len(), refused),
        kind,
        by_category: group(by_cat),
        by_hazard: group(by_hazard),
        path: path.to_path_buf(),
    }
}

/// Generation time and volume, summed over sets.
#[derive(Default)]
struct Tally {
    seconds: f64,
    prompts: usize,
    tokens: usize,
}

impl Tally {
    fn speed(&self) -> Speed {
        let s = self.seconds.max(1e-9);
        Speed {
            prompts: self.prompts,
            new_tokens: self.tokens,
            generation_seconds: self.seconds,
            prompts_per_minute: self.prompts as f64 / s * 60.0,
            new_tokens_per_s: self.tokens as f64 / s,
        }
    }
}

/// Evaluates `model` on `sets` and writes report.json, report.md, completions.jsonl and
/// refusal_rates.png to `out`. KL is measured against each model of `refs` that is given.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<'a, B: Backend>(
    model: &Pretrained<B>,
    refs: impl Into<KlRefs<'a, B>>,
    sets: &[PromptSet],
    opts: &EvalOptions,
    detector: &RefusalDetector,
    decider: Option<&Decider<B>>,
    out: &Path,
    meta: EvalMeta,
    progress: &dyn Progress,
) -> Result<EvalReport> {
    std::fs::create_dir_all(out).map_err(|e| Error::Io(out.to_path_buf(), e))?;
    let started = Instant::now();
    let mut all = Vec::new();
    let mut report_sets = Vec::with_capacity(sets.len());
    let mut tally = Tally::default();
    // KL runs on the first harmless set, from the prompt ids its generation already encoded.
    let mut kl_inputs: Option<(String, Vec<Vec<u32>>)> = None;
    for set in sets {
        let (rows, prompt_ids) =
            answer_set(model, set, opts, detector, decider, &mut tally, progress)?;
        report_sets.push((set.name.clone(), set_metrics(set.kind, &set.path, &rows)));
        if set.kind == SetKind::Harmless && kl_inputs.is_none() {
            kl_inputs = Some((set.name.clone(), prompt_ids));
        }
        all.extend(rows);
    }
    let speed = tally.speed();
    let refs = refs.into();
    let kl_to = |reference: Option<&Llama<B>>, what: &str| -> Result<Option<KlReport>> {
        let (true, Some(reference), Some((set, prompts))) = (opts.kl, reference, &kl_inputs) else {
            return Ok(None);
        };
        let t = Instant::now();
        let kl = kl_report(model, reference, set, prompts, opts)?;
        progress.message(&format!(
            "eval: KL{what} on {set} in {:.1}s",
            t.elapsed().as_secs_f64()
        ));
        Ok(Some(kl))
    };
    let kl = kl_to(refs.base, "")?;
    let kl_source = kl_to(refs.source, " to the source")?;
    let report = EvalReport {
        meta,
        detector: decider.map_or(Detector::Phrases, Decider::kind),
        max_new_tokens: opts.max_new_tokens,
        sets: report_sets.into_iter().collect(),
        speed,
        kl,
        kl_source,
        seconds: started.elapsed().as_secs_f64(),
    };
    report::write_all(out, &report, &all)?;
    Ok(report)
}

/// Answers one set and checks every answer (phrases, or the judge when there is one; the matched phrase
/// is recorded either way): the completions, and each prompt's token ids.
fn answer_set<B: Backend>(
    model: &Pretrained<B>,
    set: &PromptSet,
    opts: &EvalOptions,
    detector: &RefusalDetector,
    decider: Option<&Decider<B>>,
    tally: &mut Tally,
    progress: &dyn Progress,
) -> Result<(Vec<Completion>, Vec<Vec<u32>>)> {
    let t = Instant::now();
    let texts: Vec<String> = set.prompts.iter().map(|p| p.prompt.clone()).collect();
    let answers = answer(model, &texts, opts.max_new_tokens, opts.batch_size)?;
    let seconds = t.elapsed().as_secs_f64();
    tally.seconds += seconds;
    tally.prompts += answers.len();
    tally.tokens += answers.iter().map(|a| a.new_ids.len()).sum::<usize>();
    progress.message(&format!(
        "eval: {} ({} prompts) answered in {seconds:.1}s",
        set.name,
        answers.len()
    ));
    let verdicts = match decider {
        Some(j) => {
            let pairs: Vec<(&str, &str)> = texts
                .iter()
                .zip(&answers)
                .map(|(p, a)| (p.as_str(), a.text.as_str()))
                .collect();
            Some(j.refusals(&pairs, opts.batch_size)?)
        }
        None => None,
    };
    let mut rows = Vec::with_capacity(answers.len());
    for (i, (p, a)) in set.prompts.iter().zip(&answers).enumerate() {
        let matched = detector.detect(&a.text).map(|m| m.rule.clone());
        let judged = verdicts.as_ref().map(|v| v[i]);
        rows.push(Completion {
            set: set.name.clone(),
            prompt: p.prompt.clone(),
            category: p.category.clone(),
            hazard: opts.hazards.hazard(p.category.as_deref()).to_string(),
            response: a.text.clone(),
            refused: judged.unwrap_or(matched.is_some()),
            matched,
            judge: judged,
            new_tokens: a.new_ids.len(),
        });
    }
    Ok((rows, answers.into_iter().map(|a| a.prompt_ids).collect()))
}

/// KL(base ‖ model) on the base's greedy continuations of `prompts`.
fn kl_report<B: Backend>(
    model: &Pretrained<B>,
    base: &Llama<B>,
    set: &str,
    prompts: &[Vec<u32>],
    opts: &EvalOptions,
) -> Result<KlReport> {
    let cfg = GenerationConfig {
        max_new_tokens: opts.max_new_tokens,
        eos_ids: model.eos_ids(),
        pad_id: model.pad_id(),
        ..Default::default() // greedy
    };
    let mut conts = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(opts.batch_size.max(1)) {
        for (p, g) in chunk.iter().zip(generate(base, chunk, &cfg, None)?) {
            conts.push(Continuation {
                prompt: p.clone(),
                tokens: g.new_ids,
            });
        }
    }
    let kls = continuation_kl(
        Side {
            model: base,
            adapters: Adapters::On,
        },
        Side {
            model: &model.model,
            adapters: Adapters::On,
        },
        &conts,
        opts.batch_size.clamp(1, 8),
    );
    let n = kls.iter().filter(|k| k.count > 0).count();
    let tokens: usize = kls.iter().map(|k| k.count).sum();
    Ok(KlReport {
        set: set.to_string(),
        n,
        tokens,
        first_token: kls.iter().map(|k| k.first).sum::<f64>() / n.max(1) as f64,
        per_token: kls.iter().map(|k| k.sum).sum::<f64>() / tokens.max(1) as f64,
    })
}
