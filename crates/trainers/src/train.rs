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
use burnish_data::{
    build, pack, ChatEncoder, EncodeOptions, Examples, ModelResponder, Packed, TokenizedPair,
};
use serde_json::json;

use crate::config::{MethodConfig, Run, SaveKind};
use crate::dpo::Dpo;
use crate::engine::{train as run_engine, EngineConfig, Outcome, Summary};
use crate::eval::{evaluate_config, summary as eval_summary};
use crate::ppo::{Ppo, Prompt, RewardModel};
use crate::reward::{save_head, Reward};
use crate::sft::Sft;
use crate::{Error, Result};

/// Trains per the run file; `resume` is a checkpoint dir, or `Some(None)` for the latest in the output dir.
pub fn train(run: &Run, resume: Option<Option<PathBuf>>) -> Result<Summary> {
    if let MethodConfig::Ablate(_) = run.config.method {
        return Err(Error::Config(
            run.path.clone(),
            "method `ablate` edits weights without training: run it with `burnish ablate`".into(),
        ));
    }
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
    let dataset = if c.data.needs_model() {
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
    let data = encode(run, &encoder, &bundle, &dataset.train, &dataset.eval)?;
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
    let eval_batch_size = c.eval.batch_size.unwrap_or(c.train.batch_size);
    let (model, summary) = match (&c.method, data) {
        (MethodConfig::Sft(_), Encoded::Sft(train, eval)) => {
            let mut sft = Sft {
                train: packed_rows(train, c.data.packing, c.data.max_length)?,
                eval: packed_rows(eval, c.data.packing, c.data.max_length)?,
                pad_id,
                eval_batch_size,
            };
            run_engine(&mut sft, model, &engine_cfg)?
        }
        (MethodConfig::Dpo(cfg), Encoded::Pairs(train, eval)) => {
            let mut dpo = Dpo::new(cfg.clone(), train, eval, pad_id, eval_batch_size);
            if cfg.precompute_ref_log_probs {
                let id = model_identity(&model_path, c.model.merge_adapter.as_deref());
                dpo.precompute_reference(&model.valid(), &out_dir.join("ref_logps.json"), &id)?;
            }
            run_engine(&mut dpo, model, &engine_cfg)?
        }
        (MethodConfig::Reward(cfg), Encoded::Pairs(train, eval)) => {
            let hidden = model.model.embed_tokens.dims()[1];
            let mut rm = Reward::<B>::new(
                cfg.clone(),
                train,
                eval,
                pad_id,
                eval_batch_size,
                hidden,
                device,
            );
            let (model, summary) = run_engine(&mut rm, model, &engine_cfg)?;
            if summary.outcome == Outcome::Finished {
                save_head(&out_dir.join("adapter"), rm.head.val().inner())?;
            }
            (model, summary)
        }
        (MethodConfig::Ppo(cfg), Encoded::Prompts(train, eval)) => {
            let reward_model = match &cfg.reward_model {
                Some(dir) => {
                    let dir = run.resolve(dir);
                    let inner = Default::default();
                    let mut rm = Pretrained::<B::InnerBackend>::load(&model_path, &inner)?;
                    load_adapter(&mut rm.model, &dir, &inner)?;
                    let head = crate::reward::load_head::<B::InnerBackend>(&dir, &inner)?;
                    Some(RewardModel {
                        model: rm.model,
                        head,
                    })
                }
                None => None,
            };
            let hidden = model.model.embed_tokens.dims()[1];
            let eos_ids = eos_of(&bundle);
            let mut ppo = Ppo::<B>::new(
                cfg.clone(),
                train,
                eval,
                TokenizerBundle::load(&model_path)?,
                burnish_data::RefusalDetector::new(&c.data.refusal)?,
                reward_model,
                eos_ids,
                pad_id,
                c.train.seed,
                Some(crate::ppo::samples_path(&out_dir)),
                hidden,
                device,
            );
            run_engine(&mut ppo, model, &engine_cfg)?
        }
        _ => unreachable!("encode() checks the data kind against the method"),
    };
    if summary.outcome == Outcome::Finished {
        write_outputs(run, &out_dir, &model.valid(), &model_path, &bundle)?;
        if !c.eval.sets.is_empty() {
            // Safety evaluation of the trained model; KL against the same weights with adapters off.
            let trained = model.valid();
            let mut base = trained.clone();
            base.drop_adapters(false);
            let pre =
                Pretrained::from_parts(&model_path, TokenizerBundle::load(&model_path)?, trained)?;
            let meta = json!({"model": model_path, "run": run.path, "base": "the model before training (adapters off)"});
            let report = evaluate_config(
                &pre,
                Some(&base),
                &c.eval,
                &run.base_dir,
                &c.data.refusal,
                &out_dir.join("eval"),
                meta,
                device,
            )?;
            eprint!("{}", eval_summary(&report));
        }
    }
    crate::plot::loss_and_lr(&out_dir.join("loss.png"), &summary.history)?;
    write_run_json(run, &out_dir, &summary, started.elapsed().as_secs_f64())?;
    Ok(summary)
}

enum Encoded {
    Sft(
        Vec<burnish_data::TokenizedExample>,
        Vec<burnish_data::TokenizedExample>,
    ),
    Pairs(Vec<TokenizedPair>, Vec<TokenizedPair>),
    Prompts(Vec<Prompt>, Vec<Prompt>),
}

/// Prompts rendered with the generation prompt, for rollouts.
fn prompts(
    bundle: &TokenizerBundle,
    examples: &[burnish_data::PromptExample],
) -> Result<Vec<Prompt>> {
    examples
        .iter()
        .map(|p| {
            let text = bundle.render_chat(&p.messages, true)?;
            Ok(Prompt {
                messages: p.messages.clone(),
                ids: bundle.tokenizer.encode(&text, false)?,
                harmful: p.harmful,
            })
        })
        .collect()
}

/// Tokenizes the data set for the method, which decides what kind of examples it needs.
fn encode(
    run: &Run,
    encoder: &ChatEncoder,
    bundle: &TokenizerBundle,
    train: &Examples,
    eval: &Examples,
) -> Result<Encoded> {
    let c = &run.config;
    let empty_like = |e: &Examples| match e {
        Examples::Sft(_) => Examples::Sft(vec![]),
        Examples::Pairs(_) => Examples::Pairs(vec![]),
        Examples::Prompts(_) => Examples::Prompts(vec![]),
    };
    // An empty eval split may come back as any kind.
    let eval = if eval.is_empty() {
        &empty_like(train)
    } else {
        eval
    };
    let report = |s: &burnish_data::TokenStats, what: &str| {
        eprintln!(
            "tokens: {} {what}, {} tokens, {} truncated, {} dropped (no loss left)",
            s.examples, s.tokens, s.truncated, s.dropped_no_loss
        )
    };
    match (&c.method, train, eval) {
        (MethodConfig::Sft(_), Examples::Sft(t), Examples::Sft(e)) => {
            let (train, stats) = encoder.encode_all_sft(t)?;
            report(&stats, "examples");
            Ok(Encoded::Sft(train, encoder.encode_all_sft(e)?.0))
        }
        (
            MethodConfig::Dpo(_) | MethodConfig::Reward(_),
            Examples::Pairs(t),
            Examples::Pairs(e),
        ) => {
            let (train, stats) = encoder.encode_all_pairs(t)?;
            report(&stats, "pairs");
            Ok(Encoded::Pairs(train, encoder.encode_all_pairs(e)?.0))
        }
        (MethodConfig::Ppo(_), Examples::Prompts(t), Examples::Prompts(e)) => {
            eprintln!("prompts: {} train, {} eval", t.len(), e.len());
            Ok(Encoded::Prompts(prompts(bundle, t)?, prompts(bundle, e)?))
        }
        (m, t, _) => Err(Error::Config(
            run.path.clone(),
            format!(
                "method `{}` needs {}, but [data] gives {}",
                m.name(),
                match m {
                    MethodConfig::Sft(_) => "SFT examples (prompt/completion or messages)",
                    MethodConfig::Dpo(_) =>
                        "preference pairs (chosen/rejected, or answer = \"refusal_pair\")",
                    MethodConfig::Ablate(_) => "prompts, and runs with `burnish ablate`",
                    MethodConfig::Reward(_) => "preference pairs (chosen/rejected)",
                    MethodConfig::Ppo(_) =>
                        "prompt-only records (instructions), with `harmful` for a rule reward",
                },
                t.kind().name()
            ),
        )),
    }
}

/// What identifies the reference model's weights for the reference log-prob cache.
fn model_identity(path: &Path, merged: Option<&Path>) -> String {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| format!("{}:{:?}", m.len(), m.modified().ok()))
            .unwrap_or_default()
    };
    format!(
        "{}|{}|{:?}|{}",
        path.display(),
        stamp(path),
        merged,
        merged.map(stamp).unwrap_or_default()
    )
}

/// EOS ids as `Pretrained::eos_ids` gives them: the config's plus the tokenizer's.
fn eos_of(bundle: &TokenizerBundle) -> Vec<u32> {
    let mut ids = bundle.config.eos_token_ids.clone();
    if let Some(e) = bundle.tokenizer.eos_id() {
        if !ids.contains(&e) {
            ids.push(e);
        }
    }
    ids
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
