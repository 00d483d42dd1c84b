//! Safety evaluation: violation rate on harmful prompts, false refusal rate on benign/borderline and
//! harmless ones (overall, by dataset category and by Llama 3 hazard category), and KL divergence from a
//! base model on harmless prompts. Deterministic: batched greedy generation with the KV cache.

pub mod hazard;
pub mod judge;
pub mod kl;
pub mod prompts;
pub mod report;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::Backend;
use burnish_core::burn;
use burnish_core::{generate, GenerationConfig, Llama, Message, Pretrained};
use burnish_data::{RefusalConfig, RefusalDetector};
use serde_json::{json, Value};

pub use hazard::HazardMap;
pub use judge::Judge;
pub use prompts::{load_sets, PromptSet, SetKind, SetSpec};

use crate::config::EvalConfig;
use crate::{Error, Result};
use kl::{continuation_kl, Continuation, Side};

/// How to evaluate (the `[eval]` keys of a run file, or `burnish eval`'s flags).
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub max_new_tokens: usize,
    pub batch_size: usize,
    /// Measure KL to the base on the first harmless set (needs a base).
    pub kl: bool,
    pub hazards: HazardMap,
}

/// One response and what the refusal check said.
#[derive(Clone, Debug)]
pub struct Completion {
    pub set: String,
    pub prompt: String,
    pub category: Option<String>,
    pub hazard: String,
    pub response: String,
    pub refused: bool,
    /// The refusal phrase the detector matched (also recorded when a judge decides).
    pub matched: Option<String>,
    /// The judge's verdict, when one is used (then `refused` is this).
    pub judge: Option<bool>,
    pub new_tokens: usize,
}

/// Evaluates per an `[eval]` section: loads its sets (relative to `base_dir`), the detector of
/// `refusal`, and the judge, if any.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_config<B: Backend>(
    model: &Pretrained<B>,
    base: Option<&Llama<B>>,
    cfg: &EvalConfig,
    base_dir: &Path,
    refusal: &RefusalConfig,
    out: &Path,
    meta: Value,
    device: &B::Device,
) -> Result<Value> {
    if cfg.sets.is_empty() {
        return Err(Error::Other(
            "nothing to evaluate: no [[eval.sets]] (or --harmful/--benign/--harmless)".into(),
        ));
    }
    let sets = load_sets(&cfg.sets, base_dir, cfg.limit)?;
    let detector = RefusalDetector::new(refusal)?;
    let judge = match &cfg.judge {
        Some(p) => Some(Judge::new(Pretrained::load(base_dir.join(p), device)?)?),
        None => None,
    };
    let opts = EvalOptions {
        max_new_tokens: cfg.max_new_tokens,
        batch_size: cfg.generation_batch_size,
        kl: cfg.kl,
        hazards: HazardMap::new(&cfg.hazards).map_err(Error::Other)?,
    };
    evaluate(
        model,
        base,
        &sets,
        &opts,
        &detector,
        judge.as_ref(),
        out,
        meta,
    )
}

/// One line per set, for the terminal.
pub fn summary(report: &Value) -> String {
    let mut s = String::new();
    if let Some(sets) = report["sets"].as_object() {
        for (name, v) in sets {
            let rate = |k: &str| v[k].as_f64().map(|x| format!("{k} {:.1}%", 100.0 * x));
            let what = rate("violation_rate")
                .or_else(|| rate("false_refusal_rate"))
                .unwrap_or_default();
            s.push_str(&format!(
                "{name}: {}/{} refused, {what}\n",
                v["refused"], v["n"]
            ));
        }
    }
    if let Some(kl) = report.get("kl") {
        s.push_str(&format!(
            "KL on {}: first token {:.4}, per token {:.4}\n",
            kl["set"].as_str().unwrap_or(""),
            kl["first_token"].as_f64().unwrap_or(f64::NAN),
            kl["per_token"].as_f64().unwrap_or(f64::NAN)
        ));
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

/// Counts of one group of responses.
fn rates(kind: SetKind, n: usize, refused: usize) -> Value {
    let rate = if n == 0 {
        0.0
    } else {
        refused as f64 / n as f64
    };
    let mut v = json!({"n": n, "refused": refused, "refusal_rate": rate});
    match kind {
        SetKind::Harmful => v["violation_rate"] = json!(1.0 - rate),
        SetKind::Benign | SetKind::Harmless => v["false_refusal_rate"] = json!(rate),
    }
    v
}

/// A set's metrics: overall, `by_category` (dataset categories; `none` for records without one) and
/// `by_hazard` (the Llama 3 taxonomy).
pub fn set_metrics(kind: SetKind, rows: &[Completion]) -> Value {
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
    let group = |m: BTreeMap<String, (usize, usize)>| -> Value {
        m.into_iter()
            .map(|(k, (n, r))| (k, rates(kind, n, r)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let refused = rows.iter().filter(|r| r.refused).count();
    let mut v = rates(kind, rows.len(), refused);
    v["kind"] = json!(kind);
    v["by_category"] = group(by_cat);
    v["by_hazard"] = group(by_hazard);
    v
}

/// Evaluates `model` on `sets` and writes report.json, report.md, completions.jsonl and
/// refusal_rates.png to `out`. `base`, when given, is what KL is measured against.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend>(
    model: &Pretrained<B>,
    base: Option<&Llama<B>>,
    sets: &[PromptSet],
    opts: &EvalOptions,
    detector: &RefusalDetector,
    judge: Option<&Judge<B>>,
    out: &Path,
    meta: Value,
) -> Result<Value> {
    std::fs::create_dir_all(out).map_err(|e| crate::Error::Io(out.to_path_buf(), e))?;
    let started = Instant::now();
    let mut all = Vec::new();
    let mut report_sets = serde_json::Map::new();
    let (mut gen_seconds, mut gen_prompts, mut gen_tokens) = (0.0, 0usize, 0usize);
    let mut kl_inputs: Option<(String, Vec<Vec<u32>>)> = None;
    for set in sets {
        let t = Instant::now();
        let texts: Vec<String> = set.prompts.iter().map(|p| p.prompt.clone()).collect();
        let answers = answer(model, &texts, opts.max_new_tokens, opts.batch_size)?;
        gen_seconds += t.elapsed().as_secs_f64();
        gen_prompts += answers.len();
        gen_tokens += answers.iter().map(|a| a.new_ids.len()).sum::<usize>();
        eprintln!(
            "eval: {} ({} prompts) answered in {:.1}s",
            set.name,
            answers.len(),
            t.elapsed().as_secs_f64()
        );
        let verdicts = match judge {
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
        let mut m = set_metrics(set.kind, &rows);
        m["path"] = json!(set.path);
        report_sets.insert(set.name.clone(), m);
        if set.kind == SetKind::Harmless && kl_inputs.is_none() {
            kl_inputs = Some((
                set.name.clone(),
                answers.into_iter().map(|a| a.prompt_ids).collect(),
            ));
        }
        all.extend(rows);
    }
    let mut report = json!({
        "meta": meta,
        "detector": if judge.is_some() { "judge" } else { "phrases" },
        "max_new_tokens": opts.max_new_tokens,
        "sets": report_sets,
        "speed": {
            "prompts": gen_prompts,
            "new_tokens": gen_tokens,
            "generation_seconds": gen_seconds,
            "prompts_per_minute": gen_prompts as f64 / gen_seconds.max(1e-9) * 60.0,
            "new_tokens_per_s": gen_tokens as f64 / gen_seconds.max(1e-9),
        },
    });
    if let (true, Some(base), Some((set, prompts))) = (opts.kl, base, kl_inputs) {
        let t = Instant::now();
        report["kl"] = kl_report(model, base, &set, prompts, opts)?;
        eprintln!("eval: KL on {set} in {:.1}s", t.elapsed().as_secs_f64());
    }
    report["seconds"] = json!(started.elapsed().as_secs_f64());
    report::write_all(out, &report, &all)?;
    Ok(report)
}

/// KL(base ‖ model) on the base's greedy continuations of `prompts`.
fn kl_report<B: Backend>(
    model: &Pretrained<B>,
    base: &Llama<B>,
    set: &str,
    prompts: Vec<Vec<u32>>,
    opts: &EvalOptions,
) -> Result<Value> {
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
            adapters: true,
        },
        Side {
            model: &model.model,
            adapters: true,
        },
        &conts,
        opts.batch_size.clamp(1, 8),
    );
    let n = kls.iter().filter(|k| k.count > 0).count();
    let tokens: usize = kls.iter().map(|k| k.count).sum();
    Ok(json!({
        "set": set,
        "n": n,
        "tokens": tokens,
        "first_token": kls.iter().map(|k| k.first).sum::<f64>() / n.max(1) as f64,
        "per_token": kls.iter().map(|k| k.sum).sum::<f64>() / tokens.max(1) as f64,
    }))
}
