//! Refusal-direction ablation ("abliteration", Arditi et al. 2024; heretic's kernel and search), its
//! inverse, activation addition (steering a model to refuse), and gated subtraction (removing refusal
//! only where the model's refusal direction is active). `method.name = "ablate"`, run by
//! `burnish ablate CONFIG` or `burnish train CONFIG`, or from code with [`run`]:
//!
//! 1. mean residual streams on the `[data]` prompts (train split), harmful and harmless, at the
//!    post-instruction positions → candidate directions per (layer, position);
//! 2. selection on the validation prompts (the first harmful and harmless `[[eval.sets]]`);
//! 3. a seeded search over the direction's layer and the per-layer kernel (or, steering, layer and
//!    scale), every trial measured by generation + refusal detector and first-token KL;
//! 4. the chosen edit applied to the weights, evaluated on the full `[eval]` sets, and exported.

mod config;
pub mod directions;
mod edit;
pub mod gate;
mod output;
mod prepare;
mod report;
pub mod search;
mod select;
pub mod weights;

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use burnish_core::burn;
use burnish_core::{Llama, Pretrained};
use burnish_data::{PromptExample, RefusalConfig};

use crate::eval::{evaluate_config, EvalConfig, EvalMeta, EvalReport};
use crate::output::{write_model, SaveKind};
use crate::progress::Progress;
use crate::{Error, Result};
pub use config::{AblateConfig, Mode, Positions, Split};
use edit::{Editor, Space};
use output::{markdown, write_lines};
use prepare::{Ctx, Directions, Prompts};
pub use report::{AblateReport, Baseline, Measured, TrialInfo};
use search::{pareto_front, Search, Trial};
pub use select::{AblateScores, Candidate, Scores, Selection, SteerScores};

/// What an ablation works on; the caller loads the model and builds the data set.
pub struct AblateJob<'a, B: Backend> {
    /// The model to edit, any `merge_adapter` already merged.
    pub model: Pretrained<B>,
    /// Its file (HF dir or GGUF): export takes GGUF metadata from it; recorded in reports.
    pub model_path: &'a Path,
    /// The `[data]` train split: prompts, each with `harmful` set.
    pub prompts: &'a [PromptExample],
    pub eval: &'a EvalConfig,
    pub refusal: &'a RefusalConfig,
    pub out_dir: &'a Path,
    /// `[output] save`: merged/ is always written; `gguf` adds model.gguf.
    pub save: &'a [SaveKind],
    /// The run file, recorded in reports (None when run from code).
    pub run_file: Option<&'a Path>,
}

fn tensor<B: Backend>(v: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

/// Runs an ablation (or steering) end to end (see the module docs) and writes its outputs to
/// `job.out_dir`: selection.jsonl, trials.jsonl, pareto.png, direction.safetensors, eval-before/,
/// eval/, merged/ (and model.gguf), report.json and report.md.
pub fn run<B: Backend>(
    cfg: &AblateConfig,
    job: AblateJob<'_, B>,
    progress: &dyn Progress,
) -> Result<AblateReport> {
    let started = Instant::now();
    let out = job.out_dir;
    std::fs::create_dir_all(out).map_err(|e| Error::Io(out.to_path_buf(), e))?;
    let found = find_edit(cfg, &job, progress)?;
    let (before, after) = evaluate_and_export(cfg, job, found.edited, progress)?;
    let report = AblateReport {
        mode: cfg.mode,
        layers: found.layers,
        positions: found.positions,
        selected: found.selection.selected,
        selection_filter: found.selection.filter.to_string(),
        unedited_refusal_score: found.unedited_score,
        baseline_val: found.searched.baseline,
        chosen: found.searched.chosen,
        pareto_front: found.searched.front,
        search_seconds: found.searched.seconds,
        before,
        after,
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&report).expect("json");
    burnish_core::io::write_atomic(&out.join("report.json"), json.as_bytes())?;
    burnish_core::io::write_atomic(&out.join("report.md"), markdown(&report).as_bytes())?;
    Ok(report)
}

/// The chosen edit and how it was found.
struct Found<B: Backend> {
    edited: Llama<B>,
    layers: usize,
    positions: usize,
    selection: Selection,
    /// The unedited model's mean refusal score on the harmful validation prompts.
    unedited_score: f64,
    searched: Searched,
}

/// Prompts → activations and candidate directions → selection → search → the chosen edit, whose
/// vectors go to direction.safetensors.
fn find_edit<B: Backend>(
    cfg: &AblateConfig,
    job: &AblateJob<'_, B>,
    progress: &dyn Progress,
) -> Result<Found<B>> {
    let model = &job.model;
    let mut prompts = Prompts::encode(cfg, model, job.prompts, job.eval)?;
    let t = Instant::now();
    if cfg.split == Split::Refusals {
        let (split, [answered, refused]) = prompts.split_by_refusal(cfg, model, job.refusal)?;
        prompts = split;
        progress.message(&format!(
            "ablate: split by refusals in {:.1}s: {} refused, {} answered ({answered} labelled \
             harmful answered, {refused} labelled harmless refused)",
            t.elapsed().as_secs_f64(),
            prompts.harmful.len(),
            prompts.harmless.len(),
        ));
    }
    let t = Instant::now();
    let dirs = Directions::read(cfg, model, &prompts, &model.model.device())?;
    progress.message(&format!(
        "ablate: activations of {} harmful and {} harmless prompts at {} position(s) in {:.1}s",
        prompts.harmful.len(),
        prompts.harmless.len(),
        dirs.npos,
        t.elapsed().as_secs_f64()
    ));
    let ctx = Ctx::new(cfg, model, job.refusal, prompts, progress)?;
    let max_layer =
        ((dirs.layers as f64 * cfg.max_layer_fraction).floor() as usize).clamp(2, dirs.layers);
    let (selection, unedited_score) = select_stage(&ctx, &dirs, max_layer, job.out_dir)?;
    // Without selection the search starts from random points, at the last position (the first
    // generated token's).
    let selected = selection.selected.as_ref();
    let editor = Editor {
        cfg,
        model: &model.model,
        dirs: &dirs,
        position: selected.map_or(dirs.npos - 1, |c| c.position),
    };
    let space = editor.space(selected.map(|c| c.layer), max_layer);
    let searched = search_stage(&ctx, &editor, space, job.out_dir)?;
    let edited = editor.build(&searched.chosen.params)?;
    editor.write(
        &job.out_dir.join("direction.safetensors"),
        &searched.chosen.params,
    )?;
    Ok(Found {
        edited,
        layers: dirs.layers,
        positions: dirs.npos,
        selection,
        unedited_score,
        searched,
    })
}

/// Selection (Arditi et al.): one candidate per (layer, position) below `max_layer`, written to
/// selection.jsonl; with it, the unedited model's refusal score for the report.
fn select_stage<B: Backend>(
    ctx: &Ctx<'_, B>,
    dirs: &Directions,
    max_layer: usize,
    out: &Path,
) -> Result<(Selection, f64)> {
    let t = Instant::now();
    let unedited_score = ctx.score(&ctx.model.model, &ctx.harmful_val);
    if !ctx.cfg.select {
        return Ok((Selection::skipped(), unedited_score));
    }
    let s = select::select(ctx, dirs, max_layer)?;
    let (layer, position) = s
        .selected
        .as_ref()
        .map_or((0, dirs.npos - 1), |c| (c.layer, c.position));
    ctx.progress.message(&format!(
        "ablate: selection over {} candidates in {:.1}s → layer {layer}, position {position} ({})",
        s.candidates.len(),
        t.elapsed().as_secs_f64(),
        s.filter
    ));
    write_lines(&out.join("selection.jsonl"), &s.candidates)?;
    Ok((s, unedited_score))
}

/// What the search found.
struct Searched {
    /// The unedited model on the validation prompts.
    baseline: Baseline,
    chosen: Trial,
    front: Vec<usize>,
    seconds: f64,
}

/// The search, its choice, and pareto.png.
fn search_stage<B: Backend>(
    ctx: &Ctx<'_, B>,
    editor: &Editor<'_, B>,
    space: Space,
    out: &Path,
) -> Result<Searched> {
    let t = Instant::now();
    let (objectives, info) = ctx.measure(editor.model)?;
    let trials = run_trials(ctx, editor, space, out)?;
    let chosen = choose(ctx.cfg, &trials);
    let front = pareto_front(&trials);
    let seconds = t.elapsed().as_secs_f64();
    ctx.progress.message(&format!(
        "ablate: {} trials in {seconds:.1}s; chosen trial {}: {:?}",
        trials.len(),
        chosen.index + 1,
        chosen.objectives
    ));
    let points: Vec<(f64, f64)> = trials
        .iter()
        .map(|t| (t.objectives[1], t.objectives[0]))
        .collect();
    crate::plot::pareto(
        &out.join("pareto.png"),
        &points,
        &front,
        chosen.index,
        match ctx.cfg.mode {
            Mode::Ablate | Mode::Subtract => {
                ("first-token KL (harmless)", "refusal rate (harmful)")
            }
            Mode::Steer => ("refusal rate (harmless)", "1 − refusal rate (harmful)"),
        },
    )?;
    Ok(Searched {
        baseline: Baseline { objectives, info },
        chosen,
        front,
        seconds,
    })
}

/// The seeded trials. trials.jsonl is rewritten after every trial, so a long run shows its progress.
fn run_trials<B: Backend>(
    ctx: &Ctx<'_, B>,
    editor: &Editor<'_, B>,
    space: Space,
    out: &Path,
) -> Result<Vec<Trial>> {
    let cfg = ctx.cfg;
    let total = cfg.trials.max(1);
    let startup = cfg.startup_trials + usize::from(space.first.is_some());
    let mut search = Search::new(space.ranges, startup, total, cfg.seed);
    let mut trials: Vec<Trial> = Vec::new();
    for i in 0..total {
        let params = match (&space.first, i) {
            (Some(f), 0) => f.clone(),
            _ => search.propose(&trials),
        };
        let t = Instant::now();
        let m = editor.build(&params)?;
        let (objectives, measured) = ctx.measure(&m)?;
        let info = TrialInfo {
            measured,
            seconds: t.elapsed().as_secs_f64(),
            gate_accuracy: editor.gate_accuracy(&params),
            params: space
                .names
                .iter()
                .map(|n| n.to_string())
                .zip(params.iter().copied())
                .collect(),
        };
        ctx.progress.message(&format!(
            "ablate: trial {}/{total}: {} → {objectives:?}",
            i + 1,
            serde_json::to_string(&info.params).expect("json")
        ));
        trials.push(Trial {
            index: i,
            params,
            objectives,
            info,
        });
        write_lines(&out.join("trials.jsonl"), &trials)?;
    }
    Ok(trials)
}

/// The trial to apply: the best first objective (then second) among the trials within the bound on
/// the second — KL for ablation and subtraction, harmless refusals for steering — else the smallest
/// second objective.
fn choose(cfg: &AblateConfig, trials: &[Trial]) -> Trial {
    let bound = match cfg.mode {
        Mode::Ablate | Mode::Subtract => cfg.kl_target,
        Mode::Steer => cfg.max_false_refusal,
    };
    let better = |a: &&Trial, b: &&Trial| {
        a.objectives[0]
            .total_cmp(&b.objectives[0])
            .then(a.objectives[1].total_cmp(&b.objectives[1]))
    };
    trials
        .iter()
        .filter(|t| t.objectives[1] <= bound)
        .min_by(better)
        .or_else(|| {
            trials
                .iter()
                .min_by(|a, b| a.objectives[1].total_cmp(&b.objectives[1]))
        })
        .expect("at least one trial")
        .clone()
}

/// The `[eval]` sets on the unedited model (when `eval_before`) and on the edited one, with KL to the
/// unedited; then the edited model written as merged/ (and model.gguf when `[output] save` has it).
fn evaluate_and_export<B: Backend>(
    cfg: &AblateConfig,
    job: AblateJob<'_, B>,
    edited: Llama<B>,
    progress: &dyn Progress,
) -> Result<(Option<EvalReport>, EvalReport)> {
    let device = edited.device();
    let meta = EvalMeta {
        model: job.model_path.to_path_buf(),
        run: job.run_file.map(Path::to_path_buf),
        ..Default::default()
    };
    let (sets, refusal, out) = (job.eval, job.refusal, job.out_dir);
    let evaluate = |m: &Pretrained<B>, base: Option<&Llama<B>>, dir: &str| {
        let dir = out.join(dir);
        evaluate_config(
            m,
            base,
            sets,
            refusal,
            &dir,
            meta.clone(),
            &device,
            progress,
        )
    };
    let before = match cfg.eval_before {
        true => Some(evaluate(&job.model, None, "eval-before")?),
        false => None,
    };
    // The edited weights take the unedited model's tokenizer, template and config.
    let (bundle, unedited) = job.model.into_parts();
    let edited = Pretrained::from_parts(job.model_path, bundle, edited)?;
    let after = evaluate(&edited, Some(&unedited), "eval")?;
    let mut kinds = vec![SaveKind::Merged];
    if job.save.contains(&SaveKind::Gguf) {
        kinds.push(SaveKind::Gguf);
    }
    write_model(&edited, out, &kinds)?;
    Ok((before, after))
}
