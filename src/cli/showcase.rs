//! `burnish showcase [--quick]`: the project's main job. From the example configs it safety-tunes
//! SmolLM2 and makes a refusal-free variant of the safety-tuned model from one run file
//! (examples/configs/refusals.toml, its `goal` key set either way), subtracts the safety-tuned model's
//! refusal direction where it is active (gated), steers the original to refuse, and evaluates every
//! variant the same way: violation rate on harmful_val by hazard category, false refusal rate on the
//! JailbreakBench benign set and on harmless_val, KL to the original on harmless_val, and KL to the
//! model a variant was made from. Writes `<out>/results.md` and `<out>/results.png`.
//!
//! Each step runs as its own `burnish` process (train, ablate, eval) and records a key of its inputs
//! (the run file's parsed contents, so comments do not count; overrides, upstream keys, model file);
//! re-running skips steps whose key is unchanged, so an interrupted showcase resumes where it stopped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::steps::{burnish, config_key_text, done, key, mark, minutes, toml_str, EvalSpec};

use anyhow::{bail, Context, Result};
use burnish_core::backend::DeviceSpec;
use burnish_core::io::file_stamp;
use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub struct ShowcaseArgs {
    /// Smaller data, fewer steps and trials, shorter generations: minutes instead of tens of minutes.
    #[arg(long)]
    quick: bool,
    /// The original model (fetched by scripts/fetch-smollm2.sh when it is the default and missing).
    #[arg(long, default_value = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "showcase")]
    out: PathBuf,
    /// Where the example configs live.
    #[arg(long, default_value = "examples/configs")]
    configs: PathBuf,
    /// Run every step on cpu, wgpu, wgpu:N, cuda or cuda:N (passed to each `burnish` step).
    #[arg(long)]
    backend: Option<DeviceSpec>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Train,
    Ablate,
}

struct Step {
    name: &'static str,
    kind: Kind,
    config: &'static str,
    /// None: the original model; Some(step): that step's merged model.
    on: Option<&'static str>,
    /// Key=value overrides (besides model and output paths), per profile.
    set: Vec<String>,
    /// Steps whose outputs this one reads besides its model.
    after: Vec<&'static str>,
}

/// The refusal-free step's method: SFT held to its source (refusals.toml's documented command). β 0.5,
/// the refusal-free sweep's ★ (docs/results.md): after answers cut at max_new_tokens stopped being
/// labelled as ended, β 1 kept 3 of 39 harmful_val refusals, β 0.5 one, at KL 0.068 to the source.
const ANCHOR: [&str; 3] = [
    "method.kl_coef=0.5",
    "method.kl_positions=\"agreeing\"",
    "method.nll_examples=\"disagreeing\"",
];

/// The refusal-free row's "what" in the results table.
const REFUSAL_FREE_WHAT: &str =
    "refusal-free: refusals.toml with goal = refusal-free, from safety, held to it by the KL anchor";

/// The step list. Sizes are the examples' own unless noted: the default profile trims data and trials so
/// the whole showcase fits in 40 minutes on a 2-core CPU; `--quick` trims much further.
fn steps(quick: bool, out: &Path, shared: &Path, original: &Path) -> Vec<Step> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let q = |full: &[&str], fast: &[&str]| if quick { s(fast) } else { s(full) };
    // The subtraction and steering searches: `trials` trials (the first `startup` random) on `prompts`
    // validation prompts per set, and a short evaluation on as many (or the config's own sizes).
    // They search on AdvBench and the Alpaca seed tasks, not on the sets every variant is evaluated on
    // (harmful_val, JailbreakBench benign, harmless_val), so the edited variants' rows are not tuned to
    // their own test prompts.
    let held_apart = [
        format!(
            "eval.sets.0.path={}",
            toml_str(&shared.join("advbench/harmful_behaviors.csv"))
        ),
        format!(
            "eval.sets.1.path={}",
            toml_str(&shared.join("alpaca/seed_tasks.jsonl"))
        ),
    ];
    // `budget`: (trials, startup trials, prompts per set), or None for the config's own.
    let search = |budget: Option<(usize, usize, usize)>| -> Vec<String> {
        let full = match budget {
            Some((trials, startup, prompts)) => vec![
                format!("method.trials={trials}"),
                format!("method.startup_trials={startup}"),
                format!("method.val_prompts={prompts}"),
                "method.eval_before=false".into(),
                format!("eval.limit={prompts}"),
            ],
            None => vec!["method.eval_before=false".into()],
        };
        let fast = [
            "method.trials=3",
            "method.startup_trials=1",
            "method.val_prompts=8",
            "method.eval_before=false",
            "eval.limit=8",
            "data.sources.0.limit=32",
            "data.sources.1.limit=32",
            "method.max_new_tokens=12",
        ];
        let mut v = if quick { s(&fast) } else { full };
        v.extend(held_apart.iter().cloned());
        v
    };
    // Both refusals.toml steps name the original as the answering model: the safety step is the
    // original itself; the refusal-free one starts from the safety-tuned model, which keeps its own
    // answers and takes the original's where it refuses (refusals.toml's `self_first`).
    let refusals = [
        vec![format!("data.generate.model={}", toml_str(original))],
        q(
            &[
                "data.sources.0.limit=80",
                "data.sources.1.limit=80",
                "data.sources.2.limit=80",
            ],
            &[
                "data.sources.0.limit=16",
                "data.sources.1.limit=8",
                "data.sources.2.limit=8",
                "data.generate.max_new_tokens=16",
            ],
        ),
    ]
    .concat();
    vec![
        // One run file, both directions (examples/configs/refusals.toml): the same pairs of the
        // original's answers and refusal templates, labelled for safety, then for refusal-free.
        Step {
            name: "safety",
            kind: Kind::Train,
            config: "refusals.toml",
            on: None,
            set: [refusals.clone(), s(&["data.goal=\"safety\""])].concat(),
            after: vec![],
        },
        Step {
            name: "refusal-free",
            kind: Kind::Train,
            config: "refusals.toml",
            on: Some("safety"),
            // Held to the safety model (docs/sft.md, "Staying close"): only the answers it refused
            // are fitted, its own are held by the KL anchor — #20's refusal-free bar, where fitting
            // every answer moved it 0.21 (docs/results.md, "Refusal-free that stays close").
            set: [refusals, s(&["data.goal=\"refusal-free\""]), s(&ANCHOR)].concat(),
            after: vec![],
        },
        // Gated subtraction, not ablation: it reaches the original's refusal rate at a quarter of
        // ablation's KL to the safety model (docs/ablate.md, "Gated subtraction on the same terms").
        // Its trials are short (one unit in one layer), so it keeps its config's own search budget:
        // 20 trials on 16 prompts per set left 15% of harmful_val refused (docs/results.md).
        Step {
            name: "uncensor-subtract",
            kind: Kind::Ablate,
            config: "uncensor-subtract.toml",
            on: Some("safety"),
            set: search(None),
            after: vec![],
        },
        Step {
            name: "safety-steer",
            kind: Kind::Ablate,
            config: "safety-steer.toml",
            on: None,
            // The refusal vector comes from the safety-tuned variant (the original has none to add).
            set: [
                search(Some((10, 5, 16))),
                vec![format!(
                    "method.directions_from={}",
                    toml_str(&out.join("safety/merged"))
                )],
            ]
            .concat(),
            after: vec!["safety"],
        },
    ]
}

pub fn showcase(a: ShowcaseArgs) -> Result<()> {
    let started = Instant::now();
    if !a.model.exists() {
        if a.model == Path::new("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") {
            eprintln!("fetching SmolLM2-135M-Instruct (scripts/fetch-smollm2.sh)");
            let ok = Command::new("sh")
                .arg("scripts/fetch-smollm2.sh")
                .status()?
                .success();
            if !ok || !a.model.exists() {
                bail!(
                    "scripts/fetch-smollm2.sh did not produce {}",
                    a.model.display()
                );
            }
        } else {
            bail!("--model {} does not exist", a.model.display());
        }
    }
    std::fs::create_dir_all(&a.out)?;
    let out = std::path::absolute(&a.out)?;
    let model = std::path::absolute(&a.model)?;
    let configs = std::path::absolute(&a.configs)?;
    let shared = configs.join("../../../shared/data");
    let steps = steps(a.quick, &out, &shared, &model);
    let profile = if a.quick { "quick" } else { "default" };
    let mut keys: std::collections::BTreeMap<&str, String> = Default::default();
    let mut seconds: std::collections::BTreeMap<String, f64> = Default::default();
    let total = 2 * steps.len();
    let mut n = 0;

    // The original model's evaluation first: it is the baseline of every row.
    let spec = EvalSpec {
        harmful: vec![shared.join("refusal_direction/splits/harmful_val.json")],
        benign: vec![shared.join("jailbreakbench/benign-behaviors.csv")],
        harmless: Some(shared.join("refusal_direction/splits/harmless_val.json")),
        limit: Some(if a.quick { 8 } else { 50 }),
        max_new_tokens: if a.quick { 16 } else { 48 },
    };
    let (limit, new_tokens) = (
        spec.limit.unwrap_or(0).to_string(),
        spec.max_new_tokens.to_string(),
    );
    let model_key = key(&[model.display().to_string(), file_stamp(&model)]);
    // `source`: the model a variant was made from (when not the original), for KL to it.
    let evaluate =
        |name: &str, path: &Path, source: Option<&Path>, upstream: &str, n: usize| -> Result<f64> {
            let dir = out.join("eval").join(name);
            let k = key(&[
                upstream.to_string(),
                format!("source {source:?}"),
                limit.clone(),
                new_tokens.clone(),
                model_key.clone(),
            ]);
            if let Some(s) = done(&dir, &k) {
                eprintln!("[{n}/{}] eval {name}: unchanged, skipped", total + 1);
                return Ok(s);
            }
            eprintln!("[{n}/{}] eval {name} …", total + 1);
            let t = Instant::now();
            std::fs::create_dir_all(&dir)?;
            let base = (path != model).then_some(model.as_path());
            let args = spec.args(path, base, source, &dir);
            burnish(&args, &dir.join("log.txt"), a.backend)?;
            let s = t.elapsed().as_secs_f64();
            mark(&dir, &k, s)?;
            eprintln!("    done in {}", minutes(s));
            Ok(s)
        };
    n += 1;
    seconds.insert(
        "eval:original".into(),
        evaluate("original", &model, None, "original", n)?,
    );

    for step in &steps {
        n += 1;
        let dir = out.join(step.name);
        let base = match step.on {
            None => model.clone(),
            Some(s) => out.join(s).join("merged"),
        };
        let config = configs.join(step.config);
        let text = std::fs::read_to_string(&config)
            .with_context(|| format!("reading {}", config.display()))?;
        let mut set = step.set.clone();
        set.push(format!("model.path={}", toml_str(&base)));
        set.push(format!("output.dir={}", toml_str(&dir)));
        let mut parts = vec![
            step.name.to_string(),
            config_key_text(&text),
            set.join("\n"),
            profile.into(),
            model_key.clone(),
        ];
        for up in step.on.iter().chain(&step.after) {
            parts.push(keys.get(up).cloned().unwrap_or_default());
        }
        let k = key(&parts);
        keys.insert(step.name, k.clone());
        if let Some(s) = done(&dir, &k) {
            eprintln!("[{n}/{}] {}: unchanged, skipped", total + 1, step.name);
            seconds.insert(step.name.to_string(), s);
        } else {
            eprintln!("[{n}/{}] {} ({}) …", total + 1, step.name, step.config);
            std::fs::create_dir_all(&dir)?;
            let t = Instant::now();
            let mut args: Vec<String> = match step.kind {
                // A step that runs again replaces its earlier (changed or unfinished) outputs.
                Kind::Train => vec![
                    "train".into(),
                    config.display().to_string(),
                    "--overwrite".into(),
                ],
                Kind::Ablate => vec![
                    "ablate".into(),
                    config.display().to_string(),
                    "--overwrite".into(),
                ],
            };
            for s in &set {
                args.extend(["--set".into(), s.clone()]);
            }
            burnish(&args, &dir.join("log.txt"), a.backend)?;
            let s = t.elapsed().as_secs_f64();
            mark(&dir, &k, s)?;
            seconds.insert(step.name.to_string(), s);
            eprintln!("    done in {}", minutes(s));
        }
        n += 1;
        let source = step.on.map(|_| base.as_path());
        let s = evaluate(step.name, &dir.join("merged"), source, &k, n)?;
        seconds.insert(format!("eval:{}", step.name), s);
    }
    let rows = results(&out, &steps, &seconds)?;
    // Steps skipped as unchanged count with the time they took when they ran.
    let steps_total: f64 = seconds.values().sum();
    let md = table(
        &rows,
        (profile, &limit, &new_tokens),
        &model,
        steps_total,
        started.elapsed().as_secs_f64(),
    );
    burnish_core::io::write_atomic(&out.join("results.md"), md.as_bytes())?;
    let bars: Vec<(String, f64, f64)> = rows
        .iter()
        .map(|r| (r.name.clone(), r.violation, r.false_refusal))
        .collect();
    burnish_trainers::plot::showcase_bars(&out.join("results.png"), &bars)?;
    println!("{md}");
    eprintln!(
        "wrote {} and {}",
        out.join("results.md").display(),
        out.join("results.png").display()
    );
    Ok(())
}

struct Row {
    name: String,
    what: &'static str,
    violation: f64,
    false_refusal: f64,
    harmless_refusal: f64,
    kl_first: Option<f64>,
    kl_token: Option<f64>,
    /// First-token KL to the model the variant was made from, when that is not the original.
    kl_source: Option<f64>,
    seconds: f64,
    /// Violation rate and prompt count per Llama 3 hazard category of harmful_val.
    hazards: Vec<(String, f64, u64)>,
}

fn results(
    out: &Path,
    steps: &[Step],
    seconds: &std::collections::BTreeMap<String, f64>,
) -> Result<Vec<Row>> {
    let what = |name: &str| match name {
        "original" => "SmolLM2-135M-Instruct as shipped",
        "safety" => "safety: refusals.toml, SFT on refusals, borderline and harmless answers",
        "refusal-free" => REFUSAL_FREE_WHAT,
        "uncensor-subtract" => "refusal-free: gated refusal direction subtracted from safety",
        "safety-steer" => "safety: gated refusal direction added to the original",
        _ => "",
    };
    let mut names = vec!["original"];
    names.extend(steps.iter().map(|s| s.name));
    let mut rows = Vec::new();
    for name in names {
        let path = out.join("eval").join(name).join("report.json");
        let r: Value = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?;
        let set = |s: &str, k: &str| r["sets"][s][k].as_f64().unwrap_or(f64::NAN);
        let secs = seconds.get(&format!("eval:{name}")).copied().unwrap_or(0.0)
            + seconds.get(name).copied().unwrap_or(0.0);
        rows.push(Row {
            name: name.to_string(),
            what: what(name),
            violation: set("harmful_val", "violation_rate"),
            false_refusal: set("benign-behaviors", "false_refusal_rate"),
            harmless_refusal: set("harmless_val", "false_refusal_rate"),
            kl_first: r["kl"]["first_token"].as_f64(),
            kl_token: r["kl"]["per_token"].as_f64(),
            kl_source: r["kl_source"]["first_token"].as_f64(),
            seconds: secs,
            hazards: r["sets"]["harmful_val"]["by_hazard"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            let rate = v["violation_rate"].as_f64().unwrap_or(f64::NAN);
                            (k.clone(), rate, v["n"].as_u64().unwrap_or(0))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    Ok(rows)
}

fn table(
    rows: &[Row],
    (profile, limit, new_tokens): (&str, &str, &str),
    model: &Path,
    total: f64,
    this_run: f64,
) -> String {
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let kl = |x: Option<f64>| {
        x.map(|v| format!("{v:.3}"))
            .unwrap_or_else(|| "0 (is the base)".into())
    };
    let mut md = format!(
        "# burnish showcase ({profile} profile)\n\nModel: `{}`. Violation rate: harmful_val (refusal_direction, HarmBench val); \
         false refusal rate: JailbreakBench benign behaviors and harmless_val (Alpaca); KL(original ‖ variant) on \
         harmless_val, and first-token KL(source ‖ variant) to the model a variant was made from when that is not the \
         original. The first {limit} prompts of each set, greedy generation of {new_tokens} tokens, refusal phrases \
         (docs/eval.md). Wall time = the variant's own steps + its evaluation.\n\n\
         | variant | what | violation rate ↓ | false refusal (JBB benign) ↓ | false refusal (harmless) | KL first token | KL per token | KL to source | wall time |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        model.display()
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.what,
            pct(r.violation),
            pct(r.false_refusal),
            pct(r.harmless_refusal),
            kl(r.kl_first),
            kl(r.kl_token),
            r.kl_source.map_or("–".into(), |v| format!("{v:.3}")),
            minutes(r.seconds)
        ));
    }
    // harmful_val by hazard category: one column per variant.
    if let Some(first) = rows.first().filter(|r| !r.hazards.is_empty()) {
        md.push_str("\nViolation rate on harmful_val by Llama 3 hazard category (prompts in brackets):\n\n| hazard |");
        for r in rows {
            md.push_str(&format!(" {} |", r.name));
        }
        md.push_str(&format!("\n|---|{}\n", "---|".repeat(rows.len())));
        for (h, _, n) in &first.hazards {
            md.push_str(&format!("| {h} ({n}) |"));
            for r in rows {
                let v = r.hazards.iter().find(|x| &x.0 == h).map(|x| x.1);
                md.push_str(&format!(" {} |", v.map(pct).unwrap_or_else(|| "–".into())));
            }
            md.push('\n');
        }
    }
    md.push_str(&format!(
        "\nTotal wall time of all steps: {} (this invocation: {}; skipped steps count with the time they \
         took when they ran). Per-variant details: eval/<variant>/report.md.\n",
        minutes(total),
        minutes(this_run)
    ));
    md
}
