//! Refusal-direction ablation ("abliteration", Arditi et al. 2024; heretic's kernel and search) and its
//! inverse, activation addition (steering a model to refuse). `method.name = "ablate"`, run by
//! `burnish ablate CONFIG` or `burnish train CONFIG`:
//!
//! 1. mean residual streams on the `[data]` sources' harmful and harmless prompts (train split) at the
//!    post-instruction positions → candidate directions per (layer, position);
//! 2. selection on the validation prompts (the first harmful and harmless `[[eval.sets]]`);
//! 3. a seeded search over the direction's layer and the per-layer kernel (or, steering, layer and
//!    scale), every trial measured by generation + refusal detector and first-token KL;
//! 4. the chosen edit applied to the weights, evaluated on the full `[eval]` sets, and exported.

mod config;
pub mod directions;
pub mod gate;
mod output;
pub mod search;
mod select;
pub mod weights;

use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use burnish_core::adapter::load_adapter;
use burnish_core::backend::Cpu;
use burnish_core::burn;
use burnish_core::{Llama, Message, Pretrained};
use burnish_data::{build, Examples, RefusalDetector};
use serde_json::{json, Value};

use crate::config::Run;
use crate::eval::{evaluate_config, load_sets, SetKind};
use crate::{Error, Result};
pub use config::{AblateConfig, Mode, Positions};
use directions::{
    activations, candidates, last_logprobs, mean_activations, mean_kl, mean_of, refusal_scores,
    unit,
};
use output::{export, markdown, write_lines};
use search::{pareto_front, Range, Search, Trial};
use select::select;
use weights::{ablate, steer, Kernel, Kernels};

/// What an ablation run produced (also in report.json).
pub struct AblateSummary {
    pub report: Value,
    pub seconds: f64,
}

struct Ctx<'a> {
    cfg: &'a AblateConfig,
    model: &'a Pretrained<Cpu>,
    detector: RefusalDetector,
    pad: u32,
    harmful_val: Vec<Vec<u32>>,
    harmless_val: Vec<Vec<u32>>,
    refusal_ids: Vec<u32>,
    base_harmless_lp: Tensor<Cpu, 2>,
}

impl Ctx<'_> {
    /// Share of `prompts` (token ids) whose greedy answer the detector flags.
    fn refusal_rate(&self, m: &Llama<Cpu>, prompts: &[Vec<u32>]) -> Result<f64> {
        let cfg = burnish_core::GenerationConfig {
            max_new_tokens: self.cfg.max_new_tokens,
            eos_ids: self.model.eos_ids(),
            pad_id: self.pad,
            ..Default::default() // greedy
        };
        let mut refused = 0;
        for chunk in prompts.chunks(self.cfg.batch_size) {
            for g in burnish_core::generate(m, chunk, &cfg, None)? {
                let text = self.model.tokenizer.decode(&g.new_ids, true)?;
                refused += usize::from(self.detector.is_refusal(text.trim()));
            }
        }
        Ok(refused as f64 / prompts.len().max(1) as f64)
    }

    /// Mean first-token KL(unedited ‖ m) on the harmless validation prompts.
    fn kl(&self, m: &Llama<Cpu>) -> f64 {
        let lp = last_logprobs(m, &self.harmless_val, self.pad, self.cfg.batch_size);
        mean_kl(self.base_harmless_lp.clone(), lp)
    }

    fn score(&self, m: &Llama<Cpu>, prompts: &[Vec<u32>]) -> f64 {
        let lp = last_logprobs(m, prompts, self.pad, self.cfg.batch_size);
        let s = refusal_scores(lp, &self.refusal_ids);
        s.iter().sum::<f64>() / s.len().max(1) as f64
    }
}

fn chat_ids(model: &Pretrained<Cpu>, messages: &[Message]) -> Result<Vec<u32>> {
    let text = model.render_chat(messages, true)?;
    Ok(model.tokenizer.encode(&text, false)?)
}

/// How many tokens the chat template puts after the user's message (with the generation prompt).
fn post_instruction_len(model: &Pretrained<Cpu>) -> Result<usize> {
    let marker = "burnish-marker";
    let text = model.render_chat(&[Message::user(marker)], true)?;
    let tail = text.rsplit(marker).next().unwrap_or("");
    Ok(model.tokenizer.encode(tail, false)?.len().max(1))
}

fn tensor(v: &[f32]) -> Tensor<Cpu, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
}

/// The direction at a fractional layer index: linear interpolation of the neighbouring layers'.
fn interpolated(dir_at: &dyn Fn(usize) -> Vec<f64>, index: f64, max: usize) -> Vec<f64> {
    let i = index.clamp(0.0, (max - 1) as f64);
    let (lo, hi) = (i.floor() as usize, (i.ceil() as usize).min(max - 1));
    let f = i - lo as f64;
    let (a, b) = (dir_at(lo), dir_at(hi));
    a.iter()
        .zip(&b)
        .map(|(x, y)| x * (1.0 - f) + y * f)
        .collect()
}

/// Runs an ablation (or steering) config end to end; see the module docs.
pub fn run(run: &Run, cfg: &AblateConfig) -> Result<AblateSummary> {
    let started = Instant::now();
    let c = &run.config;
    let out = run.resolve(&c.output.dir);
    std::fs::create_dir_all(&out).map_err(|e| Error::Io(out.clone(), e))?;
    let model_path = run.resolve(&c.model.path);
    let device = Default::default();
    let mut model = Pretrained::<Cpu>::load(&model_path, &device)?;
    if let Some(a) = &c.model.merge_adapter {
        load_adapter(&mut model.model, &run.resolve(a), &device)?;
        model.model.drop_adapters(true);
    }
    let pad = model.pad_id();
    let bad = |m: String| Error::Config(run.path.clone(), m);

    // Prompts: [data] (train) for the directions, the first harmful / harmless [eval] sets for validation.
    let data = build(&c.data, &run.base_dir, None)?;
    let Examples::Prompts(prompts) = &data.train else {
        return Err(bad(
            "method `ablate` needs prompt-only [[data.sources]] (instructions), each with `harmful = true|false`".into(),
        ));
    };
    let (mut harmful, mut harmless) = (Vec::new(), Vec::new());
    for p in prompts {
        let ids = chat_ids(&model, &p.messages)?;
        match p.harmful {
            Some(true) => harmful.push(ids),
            Some(false) => harmless.push(ids),
            None => {
                return Err(bad(
                    "every [[data.sources]] of an ablation needs `harmful = true|false`".into(),
                ))
            }
        }
    }
    if harmful.is_empty() || harmless.is_empty() {
        return Err(bad(
            "ablation needs both harmful and harmless prompts in [data]".into(),
        ));
    }
    let sets = load_sets(&c.eval.sets, &run.base_dir, Some(cfg.val_prompts))?;
    let val = |kind: SetKind| -> Result<Vec<Vec<u32>>> {
        let s = sets.iter().find(|s| s.kind == kind).ok_or_else(|| {
            bad(
                format!("ablation validates on the first {kind:?} [[eval.sets]]; there is none")
                    .to_lowercase(),
            )
        })?;
        s.prompts
            .iter()
            .map(|p| chat_ids(&model, &[Message::user(p.prompt.clone())]))
            .collect()
    };
    let (harmful_val, harmless_val) = (val(SetKind::Harmful)?, val(SetKind::Harmless)?);
    let npos = match cfg.positions {
        Positions::Last => 1,
        Positions::PostInstruction => post_instruction_len(&model)?,
    };
    let layers = model.model.num_layers();
    let hidden = model.model.model.embed_tokens.dims()[1];
    let t = Instant::now();
    let source = match &cfg.directions_from {
        Some(p) => {
            let other = Pretrained::<Cpu>::load(run.resolve(p), &device)?;
            let dims = |m: &Llama<Cpu>| (m.num_layers(), m.model.embed_tokens.dims()[1]);
            if dims(&other.model) != dims(&model.model) {
                return Err(bad(format!(
                    "[method] directions_from {}: {:?} (layers, hidden) differs from the model's {:?}",
                    p.display(),
                    dims(&other.model),
                    dims(&model.model)
                )));
            }
            Some(other)
        }
        None => None,
    };
    let src = source.as_ref().map_or(&model.model, |s| &s.model);
    // Gated steering also needs each prompt's activations in the model being edited (its own sense of
    // "harmful"), whichever model the steering vector comes from.
    let gated = cfg.mode == Mode::Steer && cfg.gate;
    let own = gated.then(|| {
        let acts = |p: &[Vec<u32>]| activations(&model.model, p, npos, pad, cfg.batch_size);
        (acts(&harmful), acts(&harmless))
    });
    // The directions' means: from those activations when they are the source's, else one more pass.
    let (mh, ml) = match (&source, &own) {
        (None, Some((ah, al))) => (mean_of(ah), mean_of(al)),
        _ => (
            mean_activations(src, &harmful, npos, pad, cfg.batch_size),
            mean_activations(src, &harmless, npos, pad, cfg.batch_size),
        ),
    };
    drop(source);
    let cond_at = |l: usize| {
        own.as_ref()
            .map(|(ah, al)| gate::condition(ah, al, l, npos, hidden))
    };
    let cands = candidates(&mh, &ml, hidden, cfg.projected);
    eprintln!(
        "ablate: activations of {} harmful and {} harmless prompts at {npos} position(s) in {:.1}s",
        harmful.len(),
        harmless.len(),
        t.elapsed().as_secs_f64()
    );
    let dir =
        |l: usize, p: usize| -> Vec<f64> { cands[(l * npos + p) * hidden..][..hidden].to_vec() };
    let mut refusal_ids: Vec<u32> = cfg
        .refusal_tokens
        .iter()
        .filter_map(|t| model.tokenizer.encode(t, false).ok()?.first().copied())
        .collect();
    refusal_ids.sort_unstable();
    refusal_ids.dedup();
    let ctx = Ctx {
        cfg,
        model: &model,
        detector: RefusalDetector::new(&c.data.refusal)?,
        pad,
        base_harmless_lp: last_logprobs(&model.model, &harmless_val, pad, cfg.batch_size),
        harmful_val,
        harmless_val,
        refusal_ids,
    };

    // Selection (Arditi et al.): one candidate per (layer, position) below the layer cut.
    let t = Instant::now();
    let max_layer = ((layers as f64 * cfg.max_layer_fraction).floor() as usize).clamp(2, layers);
    let base_score = ctx.score(&model.model, &ctx.harmful_val);
    let (selection, selected, filter) = if cfg.select {
        select(&ctx, &model.model, &dir, layers, npos, max_layer)?
    } else {
        (
            Vec::new(),
            Value::Null,
            "selection skipped (select = false)",
        )
    };
    // Without selection the search starts from random points, at the last position (the first
    // generated token's).
    let sl = selected["layer"].as_u64().map(|l| l as usize);
    let sp = selected["position"].as_u64().unwrap_or(npos as u64 - 1) as usize;
    if cfg.select {
        eprintln!(
            "ablate: selection over {} candidates in {:.1}s → layer {}, position {sp} ({filter})",
            selection.len(),
            t.elapsed().as_secs_f64(),
            sl.unwrap_or(0)
        );
        write_lines(&out.join("selection.jsonl"), &selection)?;
    }

    // Search.
    let t = Instant::now();
    let dir_p = |l: usize| dir(l, sp);
    let build_model = |params: &[f64]| -> Result<Llama<Cpu>> {
        match cfg.mode {
            Mode::Ablate => {
                let r = unit(&interpolated(&dir_p, params[0], layers));
                let kernel = |p: &[f64]| Kernel {
                    max_weight: p[0],
                    peak: p[1],
                    min_weight: p[2] * p[0],
                    distance: p[3],
                };
                let k = Kernels {
                    attn: kernel(&params[1..5]),
                    mlp: kernel(&params[5..9]),
                };
                ablate(
                    &model.model,
                    &tensor(&r),
                    &k,
                    cfg.embeddings,
                    cfg.norm_preserving,
                )
            }
            Mode::Steer => {
                let l = params[0].round() as usize;
                let v: Vec<f64> = dir_p(l).iter().map(|&x| x * params[1]).collect();
                match cond_at(l) {
                    Some(c) => {
                        gate::steer_gated(&model.model, l, &v, &c, params[2]).map_err(Into::into)
                    }
                    None => {
                        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                        steer(&model.model, l, tensor(&v))
                    }
                }
            }
        }
    };
    let measure = |m: &Llama<Cpu>| -> Result<([f64; 2], Value)> {
        Ok(match cfg.mode {
            Mode::Ablate => {
                let (rr, kl) = (ctx.refusal_rate(m, &ctx.harmful_val)?, ctx.kl(m));
                ([rr, kl], json!({"refusal_rate": rr, "kl": kl}))
            }
            Mode::Steer => {
                let (rh, rl) = (
                    ctx.refusal_rate(m, &ctx.harmful_val)?,
                    ctx.refusal_rate(m, &ctx.harmless_val)?,
                );
                (
                    [1.0 - rh, rl],
                    json!({"refusal_rate": rh, "harmless_refusal_rate": rl}),
                )
            }
        })
    };
    let (base_obj, base_info) = measure(&model.model)?;
    // Ablation ranges as heretic's: the direction from 40–90% of the depth, each component's kernel
    // peaking in the last 40% with strength 0.8–1.5; the falloff may span the whole model.
    let last = (layers - 1) as f64;
    let range = |lo: f64, hi: f64| Range { lo, hi };
    let (ranges, first): (Vec<Range>, Option<Vec<f64>>) = match cfg.mode {
        Mode::Ablate => {
            let kernel = [
                range(0.8, 1.5),
                range(0.6 * last, last),
                range(0.0, 1.0),
                range(1.0, layers as f64),
            ];
            let lo = sl.map_or(0.4 * last, |l| (l as f64).min(0.4 * last));
            let mut r = vec![range(lo, 0.9 * last)];
            r.extend(kernel);
            r.extend(kernel);
            let flat = [1.0, 0.0, 1.0, layers as f64];
            let first = sl.map(|l| [&[l as f64][..], &flat, &flat].concat());
            (r, first)
        }
        // Gated steering also searches the gate's threshold, as a fraction of the way from the harmless
        // prompts' mean cosine to the harmful prompts'.
        Mode::Steer if gated => (
            vec![
                range(1.0, (max_layer - 1) as f64),
                range(0.25, 6.0),
                range(0.1, 0.9),
            ],
            sl.map(|l| vec![l.max(1) as f64, 1.0, 0.5]),
        ),
        Mode::Steer => (
            vec![range(1.0, (max_layer - 1) as f64), range(0.25, 6.0)],
            sl.map(|l| vec![l.max(1) as f64, 1.0]),
        ),
    };
    let names: &[&str] = match cfg.mode {
        Mode::Ablate => &[
            "direction_index",
            "attn_max_weight",
            "attn_peak",
            "attn_min_weight_fraction",
            "attn_distance",
            "mlp_max_weight",
            "mlp_peak",
            "mlp_min_weight_fraction",
            "mlp_distance",
        ],
        Mode::Steer if gated => &["layer", "scale", "threshold"],
        Mode::Steer => &["layer", "scale"],
    };
    let startup = cfg.startup_trials + usize::from(first.is_some());
    let mut search = Search::new(ranges, startup, cfg.trials.max(1), cfg.seed);
    let mut trials: Vec<Trial> = Vec::new();
    for i in 0..cfg.trials.max(1) {
        let params = match (&first, i) {
            (Some(f), 0) => f.clone(),
            _ => search.propose(&trials),
        };
        let tt = Instant::now();
        let m = build_model(&params)?;
        let (objectives, mut info) = measure(&m)?;
        info["seconds"] = json!(tt.elapsed().as_secs_f64());
        if let Some(c) = cond_at(params[0].round() as usize) {
            info["gate_accuracy"] = json!(c.accuracy(c.threshold(params[2])));
        }
        info["params"] = names
            .iter()
            .zip(&params)
            .map(|(n, v)| (n.to_string(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        eprintln!(
            "ablate: trial {}/{}: {} → {:?}",
            i + 1,
            cfg.trials.max(1),
            info["params"],
            objectives
        );
        trials.push(Trial {
            index: i,
            params,
            objectives,
            info,
        });
        write_lines(
            &out.join("trials.jsonl"),
            &trials
                .iter()
                .map(|t| serde_json::to_value(t).expect("json"))
                .collect::<Vec<_>>(),
        )?;
    }
    let bound = match cfg.mode {
        Mode::Ablate => cfg.kl_target,
        Mode::Steer => cfg.max_false_refusal,
    };
    let better = |a: &&Trial, b: &&Trial| {
        a.objectives[0]
            .total_cmp(&b.objectives[0])
            .then(a.objectives[1].total_cmp(&b.objectives[1]))
    };
    let chosen = trials
        .iter()
        .filter(|t| t.objectives[1] <= bound)
        .min_by(better)
        .or_else(|| {
            trials
                .iter()
                .min_by(|a, b| a.objectives[1].total_cmp(&b.objectives[1]))
        })
        .expect("at least one trial")
        .clone();
    let front = pareto_front(&trials);
    let search_seconds = t.elapsed().as_secs_f64();
    eprintln!(
        "ablate: {} trials in {search_seconds:.1}s; chosen trial {}: {:?}",
        trials.len(),
        chosen.index + 1,
        chosen.objectives
    );
    crate::plot::pareto(
        &out.join("pareto.png"),
        &trials
            .iter()
            .map(|t| (t.objectives[1], t.objectives[0]))
            .collect::<Vec<_>>(),
        &front,
        chosen.index,
        match cfg.mode {
            Mode::Ablate => ("first-token KL (harmless)", "refusal rate (harmful)"),
            Mode::Steer => ("refusal rate (harmless)", "1 − refusal rate (harmful)"),
        },
    )?;

    // The chosen edit: weights, direction, evaluation, export.
    let edited = build_model(&chosen.params)?;
    let chosen_dir: Vec<f32> = match cfg.mode {
        Mode::Ablate => unit(&interpolated(&dir_p, chosen.params[0], layers)),
        Mode::Steer => dir_p(chosen.params[0].round() as usize)
            .iter()
            .map(|&x| (x * chosen.params[1]) as f32)
            .collect(),
    };
    let f32s =
        |v: &[f64]| -> Vec<u8> { v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect() };
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let shape = vec![layers, npos, hidden];
    let mut tensors = vec![
        ("direction".to_string(), vec![hidden], bytes(&chosen_dir)),
        ("candidates".into(), shape.clone(), f32s(&cands)),
        ("harmful_mean".into(), shape.clone(), f32s(&mh)),
        ("harmless_mean".into(), shape, f32s(&ml)),
    ];
    let l = chosen.params[0].round() as usize;
    if let (Some(c), Mode::Steer) = (cond_at(l), cfg.mode) {
        let v: Vec<f64> = chosen_dir.iter().map(|&x| f64::from(x)).collect();
        let (g, b, d) = gate::unit_weights(&model.model, l, &v, &c, chosen.params[2]);
        tensors.push(("gate_weight".into(), vec![hidden], bytes(&g)));
        tensors.push(("gate_bias".into(), vec![1], bytes(&[b])));
        tensors.push(("gate_down".into(), vec![hidden], bytes(&d)));
    }
    let mode = match (cfg.mode, gated) {
        (Mode::Ablate, _) => "ablate (unit direction)",
        (Mode::Steer, true) => "steer (added vector, gated by an MLP unit of the previous layer)",
        (Mode::Steer, false) => "steer (added vector)",
    };
    burnish_core::weights::write_safetensors(
        &out.join("direction.safetensors"),
        burnish_core::safetensors::Dtype::F32,
        &tensors,
        &[("mode", mode)],
    )?;
    let meta = json!({"model": model_path, "run": run.path});
    let before = if cfg.eval_before {
        Some(evaluate_config(
            &model,
            None,
            &c.eval,
            &run.base_dir,
            &c.data.refusal,
            &out.join("eval-before"),
            meta.clone(),
            &device,
        )?)
    } else {
        None
    };
    let bundle = burnish_core::TokenizerBundle::load(&model_path)?;
    let after_model = Pretrained::from_parts(&model_path, bundle, edited)?;
    let after = evaluate_config(
        &after_model,
        Some(&model.model),
        &c.eval,
        &run.base_dir,
        &c.data.refusal,
        &out.join("eval"),
        meta,
        &device,
    )?;
    export(run, &out, &after_model, &model_path)?;
    let report = json!({
        "mode": cfg.mode,
        "layers": layers,
        "positions": npos,
        "selected": selected,
        "selection_filter": filter,
        "unedited_refusal_score": base_score,
        "baseline_val": {"objectives": base_obj, "info": base_info},
        "chosen": chosen,
        "pareto_front": front,
        "search_seconds": search_seconds,
        "before": before,
        "after": after,
        "seconds": started.elapsed().as_secs_f64(),
    });
    burnish_core::io::write_atomic(
        &out.join("report.json"),
        serde_json::to_string_pretty(&report)
            .expect("json")
            .as_bytes(),
    )?;
    burnish_core::io::write_atomic(&out.join("report.md"), markdown(&report, names).as_bytes())?;
    Ok(AblateSummary {
        seconds: started.elapsed().as_secs_f64(),
        report,
    })
}
