//! `burnish train CONFIG`: data → tokens → model with adapters → engine → outputs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burnish_core::adapter::{load_adapter, save_adapter};
use burnish_core::backend::{Autodiff, BackendKind, Cpu};
use burnish_core::burn;
use burnish_core::export::{export_gguf, export_hf, Dtype, ExportSource, GgufQuant};
use burnish_core::weights::gguf::GgufFile;
use burnish_core::{ModelPath, Pretrained, TokenizerBundle};
use burnish_data::{build, pack, ChatEncoder, EncodeOptions, Examples, ModelResponder, Packed};
use serde_json::json;

use crate::config::{MethodConfig, Run, SaveKind};
use crate::engine::{train as run_engine, EngineConfig, Outcome, Summary};
use crate::sft::Sft;
use crate::{Error, Result};

/// Trains per the run file; `resume` is a checkpoint dir, or `Some(None)` for the latest in the output dir.
pub fn train(run: &Run, resume: Option<Option<PathBuf>>) -> Result<Summary> {
    match run.config.model.backend {
        BackendKind::Cpu => train_on::<Autodiff<Cpu>>(run, resume, &Default::default()),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            train_on::<Autodiff<burnish_core::backend::Wgpu>>(run, resume, &Default::default())
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            train_on::<Autodiff<burnish_core::backend::Cuda>>(run, resume, &Default::default())
        }
        #[allow(unreachable_patterns)]
        other => Err(Error::Config(
            run.path.clone(),
            format!("backend {other:?} is not compiled in"),
        )),
    }
}

fn packed_rows(
    rows: Vec<burnish_data::TokenizedExample>,
    packing: bool,
    max_length: usize,
) -> Result<Vec<Packed>> {
    Ok(if packing {
        pack(&rows, max_length)?
    } else {
        rows.iter().map(Packed::single).collect()
    })
}

fn train_on<B: AutodiffBackend>(
    run: &Run,
    resume: Option<Option<PathBuf>>,
    device: &B::Device,
) -> Result<Summary> {
    let started = Instant::now();
    let c = &run.config;
    let model_path = run.resolve(&c.model.path);
    let out_dir = run.resolve(&c.output.dir);
    std::fs::create_dir_all(&out_dir).map_err(|e| Error::Io(out_dir.clone(), e))?;
    B::seed(device, c.train.seed);

    // Data first: generated answers need the inference model, which is dropped before training.
    let needs_model = c
        .data
        .sources
        .iter()
        .any(|s| s.answer == Some(burnish_data::config::Answer::Model));
    let dataset = if needs_model {
        let gen = Pretrained::<B::InnerBackend>::load(&model_path, &Default::default())?;
        let mut responder = ModelResponder::new(&gen, c.data.generate.clone());
        build(&c.data, &run.base_dir, Some(&mut responder))?
    } else {
        build(&c.data, &run.base_dir, None)?
    };
    for r in &dataset.sources {
        eprintln!(
            "data: {} read {}, skipped {}, kept {} → train {}, eval {} {:?}",
            r.path.display(),
            r.read,
            r.skipped,
            r.kept,
            r.train,
            r.eval,
            r.outcomes
        );
    }
    let bundle = TokenizerBundle::load(&model_path)?;
    let encoder = ChatEncoder::from_bundle(&bundle, EncodeOptions::from_config(&c.data))?;
    let (train_sft, eval_sft) = match (&dataset.train, &dataset.eval) {
        (Examples::Sft(t), Examples::Sft(e)) => (t, e),
        (Examples::Sft(t), _) => (t, &Vec::new()),
        _ => {
            return Err(Error::Config(
                run.path.clone(),
                format!(
                    "method `{}` needs SFT data (prompt/completion or messages)",
                    c.method.name()
                ),
            ))
        }
    };
    let (train_rows, stats) = encoder.encode_all_sft(train_sft)?;
    let (eval_rows, _) = encoder.encode_all_sft(eval_sft)?;
    eprintln!(
        "tokens: {} examples, {} tokens, {} truncated, {} dropped (no loss left)",
        stats.examples, stats.tokens, stats.truncated, stats.dropped_no_loss
    );
    let mut model_cpu = Pretrained::<B>::load(&model_path, device)?;
    if let Some(adapter) = &c.model.merge_adapter {
        load_adapter(&mut model_cpu.model, &run.resolve(adapter), device)?;
        model_cpu.model.drop_adapters(true);
    }
    let pad_id = model_cpu.pad_id();
    let mut model = model_cpu.model;
    let resume_dir = match resume {
        None => None,
        Some(Some(dir)) => Some(dir),
        Some(None) => Some(crate::checkpoint::list(&out_dir)?.pop().ok_or_else(|| {
            Error::Other(format!("--resume: no checkpoint in {}", out_dir.display()))
        })?),
    };
    if resume_dir.is_none() {
        model.attach_lora(&c.lora, device)?;
    }
    let engine_cfg = EngineConfig {
        train: c.train.clone(),
        lora: c.lora.clone(),
        out_dir: out_dir.clone(),
        base_model: model_path.display().to_string(),
        method: c.method.name().into(),
        eval_steps: c.eval.steps,
        resume: resume_dir,
    };
    let (model, summary) = match &c.method {
        MethodConfig::Sft(_) => {
            let mut sft = Sft {
                train: packed_rows(train_rows, c.data.packing, c.data.max_length)?,
                eval: packed_rows(eval_rows, c.data.packing, c.data.max_length)?,
                pad_id,
                eval_batch_size: c.eval.batch_size.unwrap_or(c.train.batch_size),
            };
            run_engine(&mut sft, model, &engine_cfg)?
        }
    };
    if summary.outcome == Outcome::Finished {
        write_outputs(run, &out_dir, &model.valid(), &model_path, &bundle)?;
    }
    crate::plot::loss_and_lr(&out_dir.join("loss.png"), &summary.history)?;
    write_run_json(run, &out_dir, &summary, started.elapsed().as_secs_f64())?;
    Ok(summary)
}

fn write_outputs<B: Backend>(
    run: &Run,
    out: &Path,
    model: &burnish_core::Llama<B>,
    model_path: &Path,
    bundle: &TokenizerBundle,
) -> Result<()> {
    let c = &run.config;
    if c.output.save.contains(&SaveKind::Adapter) {
        save_adapter(
            model,
            &c.lora,
            &model_path.display().to_string(),
            &out.join("adapter"),
        )?;
    }
    let wants_merged = c
        .output
        .save
        .iter()
        .any(|s| matches!(s, SaveKind::Merged | SaveKind::Gguf));
    if wants_merged {
        let mut merged = model.clone();
        merged.drop_adapters(true);
        let gguf = match ModelPath::detect(model_path)? {
            ModelPath::Gguf(f) => Some(GgufFile::open(f)?),
            ModelPath::HfDir(_) => None,
        };
        let src = ExportSource {
            config: &bundle.config,
            tokenizer: &bundle.tokenizer,
            template: bundle.template.as_ref(),
            source_gguf: gguf.as_ref(),
        };
        if c.output.save.contains(&SaveKind::Merged) {
            export_hf(&merged, &src, &out.join("merged"), Dtype::F32)?;
        }
        if c.output.save.contains(&SaveKind::Gguf) {
            export_gguf(&merged, &src, &out.join("model.gguf"), GgufQuant::F16)?;
        }
    }
    Ok(())
}

fn write_run_json(run: &Run, out: &Path, s: &Summary, seconds: f64) -> Result<()> {
    let config: toml::Value = toml::from_str(&run.text).map_err(|e| Error::Other(e.to_string()))?;
    let j = json!({
        "config_file": run.path,
        "config": config,
        "versions": {"burnish": env!("CARGO_PKG_VERSION"), "burn": "0.21.0"},
        "outcome": match s.outcome { Outcome::Finished => "finished".to_string(), Outcome::Interrupted(k) => format!("interrupted at step {k}") },
        "steps": s.steps,
        "total_steps": s.total_steps,
        "train_seconds": s.seconds,
        "wall_seconds": seconds,
        "final_metrics": s.final_metrics,
        "eval_metrics": s.eval_metrics,
    });
    burnish_core::io::write_atomic(
        &out.join("run.json"),
        serde_json::to_string_pretty(&j).expect("json").as_bytes(),
    )?;
    Ok(())
}
