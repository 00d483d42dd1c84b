//! `burnish eval`: refusal / violation / false refusal rates by category and KL to a base, for a model
//! (HF dir or GGUF), optionally with an adapter, from flags or a run file's `[eval]` section.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burnish_core::adapter::load_adapter;
use burnish_core::backend::DeviceSpec;
use burnish_core::burn::tensor::backend::Backend;
use burnish_core::{Llama, Precision, Pretrained};
use burnish_data::{DetectorSpec, RefusalConfig};
use burnish_trainers::config::RunFile;
use burnish_trainers::eval::{
    evaluate_config, summary, EvalConfig, EvalMeta, KlRefs, SetKind, SetSpec,
};
use clap::Args;

use super::progress::Terminal;

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
    /// Also measure KL to the model this one was made from (e.g. the safety-tuned model a refusal-free
    /// variant was made of), reported as `kl_source` beside KL to the base.
    #[arg(long)]
    source: Option<PathBuf>,
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
    /// A learned refusal detector's directory (`[data.refusal] detector = "model:DIR"`): it decides
    /// refusals instead of phrase matching.
    #[arg(long, conflicts_with = "judge")]
    detector: Option<PathBuf>,
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
    /// cpu, wgpu, wgpu:N, cuda or cuda:N (default: the run file's [model] backend, else cpu).
    #[arg(long)]
    backend: Option<DeviceSpec>,
    /// f32, bf16 or f16 for the base's weight matrices and their matmuls, of the model and of --base
    /// (default: the run file's [model] dtype, else f32).
    #[arg(long)]
    dtype: Option<Precision>,
}

/// What `eval` runs with: the run file (read once) and the flags combined.
struct Settings {
    cfg: EvalConfig,
    refusal: RefusalConfig,
    model: PathBuf,
    merge: Option<PathBuf>,
    backend: DeviceSpec,
    dtype: Precision,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let s = settings(&a)?;
    let spec = s.backend;
    let job = (a, s);
    super::on_backend!(spec, eval_on(job: (EvalArgs, Settings)))
}

fn eval_on<B: Backend>((a, s): (EvalArgs, Settings), device: &B::Device) -> Result<()> {
    let Settings {
        cfg,
        refusal,
        model: model_path,
        merge,
        dtype,
        ..
    } = s;
    let (model, base) = load::<B>(&a, &model_path, merge.as_deref(), dtype, device)?;
    let source = match &a.source {
        Some(p) => Some(load_reference::<B>(p, "--source", &model, dtype, device)?),
        None => None,
    };
    if base.is_none() && cfg.kl {
        eprintln!("eval: no --base (or --adapter), so KL is not measured");
    }
    let meta = EvalMeta {
        model: model_path,
        run: None,
        merged_adapter: merge,
        adapter: a.adapter.clone(),
        base: match (&a.base, &a.adapter) {
            (Some(b), _) => Some(b.display().to_string()),
            (None, Some(_)) => Some("adapter off".into()),
            (None, None) => None,
        },
        source: a.source.as_ref().map(|p| p.display().to_string()),
    };
    let refs = KlRefs {
        base: base.as_ref(),
        source: source.as_ref(),
    };
    let report = evaluate_config(
        &model,
        refs,
        &cfg,
        &refusal,
        &a.out,
        meta,
        device,
        &Terminal::default(),
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    eprint!("{}", summary(&report));
    eprintln!("wrote {}", a.out.join("report.json").display());
    Ok(())
}

/// `[eval]` and `[data.refusal]` of the run file (or defaults) with the flags applied, the model file,
/// the adapter to merge into it and the backend (`--backend`, else the run file's, else the CPU).
fn settings(a: &EvalArgs) -> Result<Settings> {
    // A run file's paths come resolved against its folder.
    let (mut cfg, mut refusal, model_path, merge, (backend, dtype)) = match &a.config {
        Some(c) => {
            let rc = RunFile::load(c, &[])?.config;
            let model = a.model.clone().unwrap_or(rc.model.path);
            let on = (rc.model.backend, rc.model.dtype);
            (rc.eval, rc.data.refusal, model, rc.model.merge_adapter, on)
        }
        None => {
            let Some(m) = a.model.clone() else {
                bail!("--model is required (or --config RUN.toml)")
            };
            let none = (EvalConfig::default(), RefusalConfig::default());
            (none.0, none.1, m, None, (DeviceSpec::CPU, Precision::F32))
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
    if let Some(d) = &a.detector {
        refusal.detector = DetectorSpec::Model(abs(d));
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
    Ok(Settings {
        cfg,
        refusal,
        model: model_path,
        merge,
        backend: a.backend.unwrap_or(backend),
        dtype: a.dtype.unwrap_or(dtype),
    })
}

/// The model (with `merge` merged and `--adapter` applied) and what KL is measured against: `--base`,
/// else the model with the adapter off, else nothing.
fn load<B: Backend>(
    a: &EvalArgs,
    model_path: &Path,
    merge: Option<&Path>,
    dtype: Precision,
    device: &B::Device,
) -> Result<(Pretrained<B>, Option<Llama<B>>)> {
    eprintln!("loading {}", model_path.display());
    let mut model = Pretrained::<B>::load_as(model_path, device, dtype)?;
    if let Some(m) = merge {
        load_adapter(&mut model.model, m, device)?;
        model.model.drop_adapters(true);
    }
    let mut base = match &a.base {
        Some(b) => Some(load_reference::<B>(b, "--base", &model, dtype, device)?),
        None => None,
    };
    if let Some(ad) = &a.adapter {
        load_adapter(&mut model.model, ad, device)?;
        if base.is_none() {
            // The same weights without the adapter (no copy: tensors are shared).
            let mut b = model.model.clone();
            b.drop_adapters(false);
            base = Some(b);
        }
    }
    Ok((model, base))
}

/// A model KL is measured against (`flag` names it in errors): it must share the model's vocabulary.
fn load_reference<B: Backend>(
    path: &Path,
    flag: &str,
    model: &Pretrained<B>,
    dtype: Precision,
    device: &B::Device,
) -> Result<Llama<B>> {
    let reference = Pretrained::<B>::load_as(path, device, dtype)?;
    if reference.config.vocab_size != model.config.vocab_size {
        bail!(
            "{flag} {}: vocabulary of {} tokens, the model has {}",
            path.display(),
            reference.config.vocab_size,
            model.config.vocab_size
        );
    }
    Ok(reference.model)
}
