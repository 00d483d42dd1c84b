//! `burnish eval`: refusal / violation / false refusal rates by category and KL to a base, for a model
//! (HF dir or GGUF), optionally with an adapter, from flags or a run file's `[eval]` section.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burnish_core::adapter::load_adapter;
use burnish_core::backend::Cpu;
use burnish_core::Pretrained;
use burnish_data::RefusalConfig;
use burnish_trainers::config::{EvalConfig, Run};
use burnish_trainers::eval::{evaluate_config, summary, SetKind, SetSpec};
use clap::Args;
use serde_json::json;

#[derive(Args)]
pub struct EvalArgs {
    /// Model to evaluate: HF directory or .gguf file (default with --config: its [model]).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A PEFT adapter applied to the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Measure KL against this model (default: the model with the adapter off, when --adapter is given).
    #[arg(long)]
    base: Option<PathBuf>,
    /// Harmful prompts (violation rate); repeatable.
    #[arg(long)]
    harmful: Vec<PathBuf>,
    /// Benign / borderline prompts (false refusal rate); repeatable.
    #[arg(long)]
    benign: Vec<PathBuf>,
    /// Harmless prompts (false refusal rate, and KL to the base).
    #[arg(long)]
    harmless: Option<PathBuf>,
    /// Take the model, sets and options from a run file's [model], [eval] and [data.refusal].
    #[arg(long)]
    config: Option<PathBuf>,
    /// New tokens per response (greedy).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Prompts per generation batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Prompts per set at most.
    #[arg(long)]
    limit: Option<usize>,
    /// A judge model that decides refusals instead of phrase matching.
    #[arg(long)]
    judge: Option<PathBuf>,
    /// Map a dataset category to a hazard category, e.g. --hazard "Expert advice=other" (repeatable).
    #[arg(long, value_name = "CATEGORY=HAZARD")]
    hazard: Vec<String>,
    /// Skip the KL measurement.
    #[arg(long)]
    no_kl: bool,
    /// Output directory (report.json, report.md, completions.jsonl, refusal_rates.png).
    #[arg(long)]
    out: PathBuf,
    /// Print report.json to stdout.
    #[arg(long)]
    json: bool,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let cwd = PathBuf::new();
    let (mut cfg, refusal, model_path, merge, base_dir) = match &a.config {
        Some(c) => {
            let run = Run::load(c, &[])?;
            let model = a
                .model
                .clone()
                .unwrap_or_else(|| run.resolve(&run.config.model.path));
            let merge = run
                .config
                .model
                .merge_adapter
                .as_ref()
                .map(|p| run.resolve(p));
            let rc = run.config;
            (rc.eval, rc.data.refusal, model, merge, run.base_dir)
        }
        None => {
            let Some(m) = a.model.clone() else {
                bail!("--model is required (or --config RUN.toml)")
            };
            (
                EvalConfig::default(),
                RefusalConfig::default(),
                m,
                None,
                cwd.clone(),
            )
        }
    };
    // Flags add sets (relative to the working directory, so they are made absolute) and override options.
    let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    let mut add = |paths: &[PathBuf], kind| {
        for p in paths {
            cfg.sets.push(SetSpec {
                path: abs(p),
                kind,
                name: None,
                prompt: None,
                category: None,
            });
        }
    };
    add(&a.harmful, SetKind::Harmful);
    add(&a.benign, SetKind::Benign);
    add(a.harmless.as_slice(), SetKind::Harmless);
    if let Some(n) = a.max_new_tokens {
        cfg.max_new_tokens = n;
    }
    if let Some(n) = a.batch_size {
        cfg.generation_batch_size = n;
    }
    if a.limit.is_some() {
        cfg.limit = a.limit;
    }
    if let Some(j) = &a.judge {
        cfg.judge = Some(abs(j));
    }
    if a.no_kl {
        cfg.kl = false;
    }
    for h in &a.hazard {
        let (k, v) = h
            .split_once('=')
            .with_context(|| format!("--hazard `{h}`: expected CATEGORY=HAZARD"))?;
        cfg.hazards.insert(k.trim().into(), v.trim().into());
    }
    let device = Default::default();
    eprintln!("loading {}", model_path.display());
    let mut model = Pretrained::<Cpu>::load(&model_path, &device)?;
    if let Some(m) = &merge {
        load_adapter(&mut model.model, m, &device)?;
        model.model.drop_adapters(true);
    }
    let mut base = match &a.base {
        Some(b) => {
            let base = Pretrained::<Cpu>::load(b, &device)?;
            if base.config.vocab_size != model.config.vocab_size {
                bail!(
                    "--base {}: vocabulary of {} tokens, the model has {}",
                    b.display(),
                    base.config.vocab_size,
                    model.config.vocab_size
                );
            }
            Some(base.model)
        }
        None => None,
    };
    if let Some(ad) = &a.adapter {
        load_adapter(&mut model.model, ad, &device)?;
        if base.is_none() {
            // The same weights without the adapter (no copy: tensors are shared).
            let mut b = model.model.clone();
            b.drop_adapters(false);
            base = Some(b);
        }
    }
    if base.is_none() && cfg.kl {
        eprintln!("eval: no --base (or --adapter), so KL is not measured");
    }
    let meta = json!({
        "model": model_path,
        "merged_adapter": merge,
        "adapter": a.adapter,
        "base": a.base.clone().or(a.adapter.as_ref().map(|_| PathBuf::from("adapter off"))),
    });
    let report = evaluate_config(
        &model,
        base.as_ref(),
        &cfg,
        &base_dir,
        &refusal,
        &a.out,
        meta,
        &device,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    eprint!("{}", summary(&report));
    eprintln!("wrote {}", a.out.join("report.json").display());
    Ok(())
}
