//! `burnish sweep SWEEP.toml`: trains one run file over a grid of overrides, evaluates every trial on
//! validation prompt sets, and writes the Pareto front of the trade-off it names (`front`): violation
//! rate against false refusal rate for a safety recipe, harmful prompts still refused against
//! first-token KL to the model being tuned for a refusal-free one (`<out>/sweep.md`,
//! `<out>/pareto.png`, `<out>/trials.jsonl`). Recipes are found by measurement: a user lists what to
//! vary (method, learning rate, data mix, ...) and reads off the trade-off.
//!
//! Each trial runs as its own `burnish train` and `burnish eval` process and records a key of its
//! inputs, like the showcase's steps; re-running skips finished trials, so an interrupted sweep resumes
//! and a grid that grows only runs its new points.
//!
//! ```toml
//! config = "refusals.toml"            # the run file every trial trains (relative to this file)
//! out = "../../runs/sweep"            # default: sweep-<name> beside this file
//! set = ["data.goal=safety"]          # overrides of every trial (as --set)
//!
//! [[grid]]                            # every combination of the axes' values is a trial
//! key = "train.learning_rate"
//! values = [2e-4, 5e-4]
//!
//! [eval]                              # validation sets (never the test sets a variant is judged on)
//! harmful = ["../../../shared/data/refusal_direction/splits/harmful_val.json"]
//! benign = ["../../../shared/data/jailbreakbench/benign-behaviors.csv"]
//! harmless = "../../../shared/data/refusal_direction/splits/harmless_val.json"
//! limit = 50
//! max_new_tokens = 48
//! ```

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burnish_core::backend::DeviceSpec;
use burnish_trainers::ablate::search::pareto_indices;
use burnish_trainers::RunFile;
use clap::Args;
use serde::Deserialize;
use serde_json::{json, Value};

use super::steps::{burnish, config_key_text, done, key, mark, minutes, EvalSpec};

#[derive(Args)]
pub struct SweepArgs {
    /// The sweep file (TOML): `config`, `set`, `[[grid]]`, `[eval]` (docs/sweep.md).
    sweep: PathBuf,
    /// Output directory (default: the file's `out`, else `sweep-<name>` beside it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run every trial on cpu, wgpu, wgpu:N, cuda or cuda:N.
    #[arg(long)]
    backend: Option<DeviceSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    config: PathBuf,
    #[serde(default)]
    out: Option<PathBuf>,
    #[serde(default)]
    set: Vec<String>,
    /// The trade-off the report draws and picks from (default "safety").
    #[serde(default)]
    front: Front,
    /// `front = "refusal-free"`: the KL a pick may spend (default 0.1, as the ablation search's).
    #[serde(default = "default_kl_target")]
    kl_target: f64,
    grid: Vec<Axis>,
    eval: EvalSection,
}

/// `front`: which two numbers a recipe trades.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Front {
    /// Violation rate against false refusal rate (benign sets, else harmless ones); ★ is the front's
    /// trial with the lowest sum of the two.
    #[default]
    Safety,
    /// Harmful prompts still refused against first-token KL to the run file's `[model]` (the model
    /// being made refusal-free); ★ is the front's trial with the fewest refusals within `kl_target`,
    /// else its closest one — the ablation search's rule.
    RefusalFree,
}

fn default_kl_target() -> f64 {
    0.1
}

impl Front {
    /// The plot's axes.
    fn axes(self) -> (&'static str, &'static str) {
        match self {
            Front::Safety => ("violation rate", "false refusal rate"),
            Front::RefusalFree => ("harmful prompts refused", "first-token KL to the source"),
        }
    }

    /// How ★ was chosen, and what the front is, for sweep.md.
    fn star(self) -> &'static str {
        match self {
            Front::Safety => "★ front, best sum",
            Front::RefusalFree => "★ front, fewest refusals within kl_target",
        }
    }

    fn rule(self, kl_target: f64) -> String {
        match self {
            Front::Safety => "Pareto: no other trial has both a lower violation rate and a lower false \
                 refusal rate."
                .into(),
            Front::RefusalFree => format!(
                "Pareto: no other trial both refuses fewer harmful prompts and is closer (first-token \
                 KL) to the run file's [model]. ★: the fewest refusals among front trials within KL \
                 {kl_target} (else the closest trial)."
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Axis {
    key: String,
    values: Vec<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalSection {
    #[serde(default)]
    harmful: Vec<PathBuf>,
    #[serde(default)]
    benign: Vec<PathBuf>,
    #[serde(default)]
    harmless: Option<PathBuf>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default = "default_new_tokens")]
    max_new_tokens: usize,
}

fn default_new_tokens() -> usize {
    48
}

/// One point of the grid: its overrides, as `key=value` strings.
struct Trial {
    name: String,
    set: Vec<String>,
}

/// A finished trial's numbers (a line of trials.jsonl).
struct Measured {
    trial: Trial,
    violation: f64,
    false_refusal: f64,
    harmless_refusal: f64,
    kl_first: f64,
    train_seconds: f64,
}

pub fn sweep(a: SweepArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.sweep)
        .with_context(|| format!("reading {}", a.sweep.display()))?;
    let file: SweepFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", a.sweep.display(), e.to_string().trim_end()))?;
    if !(file.kl_target.is_finite() && file.kl_target >= 0.0) {
        bail!(
            "{}: `kl_target` = {} must be a number ≥ 0",
            a.sweep.display(),
            file.kl_target
        );
    }
    let dir = std::path::absolute(a.sweep.parent().unwrap_or(Path::new(".")))?;
    let stem = a.sweep.file_stem().unwrap_or_default().to_string_lossy();
    let out = match (&a.out, &file.out) {
        (Some(o), _) => std::path::absolute(o)?,
        (None, Some(o)) => dir.join(o),
        (None, None) => dir.join(format!("sweep-{stem}")),
    };
    let spec = eval_spec(&file.eval, &dir, &a.sweep)?;
    let config = dir.join(&file.config);
    let config_text = std::fs::read_to_string(&config).with_context(|| {
        format!(
            "{}: config: reading {}",
            a.sweep.display(),
            config.display()
        )
    })?;
    // Parsed once: every trial's key starts with it.
    let config_key = config_key_text(&config_text);
    let trials = grid(&file, &a.sweep)?;
    std::fs::create_dir_all(&out)?;
    let mut measured = Vec::new();
    for (i, trial) in trials.into_iter().enumerate() {
        let n = i + 1;
        let label = format!("[{n}] {} ({})", trial.name, trial.set.join(", "));
        let run = |t| run_trial(t, &label, &config, &config_key, &spec, &out, a.backend);
        let at = || format!("{}: trial {label}", a.sweep.display());
        measured.push(run(trial).with_context(at)?);
    }
    let md = report(&measured, &out, file.front, file.kl_target)?;
    println!("{md}");
    eprintln!("wrote {}", out.join("sweep.md").display());
    Ok(())
}

/// The `[eval]` section with its paths made absolute; at least one harmful set and one benign or
/// harmless set, or there is no trade-off to measure.
fn eval_spec(e: &EvalSection, dir: &Path, file: &Path) -> Result<EvalSpec> {
    if e.harmful.is_empty() || (e.benign.is_empty() && e.harmless.is_none()) {
        bail!(
            "{}: [eval] needs `harmful` sets and `benign` sets or a `harmless` set (the two sides of \
             the trade-off)",
            file.display()
        );
    }
    let abs = |p: &PathBuf| dir.join(p);
    Ok(EvalSpec {
        harmful: e.harmful.iter().map(abs).collect(),
        benign: e.benign.iter().map(abs).collect(),
        harmless: e.harmless.as_ref().map(abs),
        limit: e.limit,
        max_new_tokens: e.max_new_tokens,
    })
}

/// Every combination of the axes' values, the first axis varying slowest, after the common `set`.
fn grid(file: &SweepFile, path: &Path) -> Result<Vec<Trial>> {
    if file.grid.is_empty() {
        bail!("{}: no [[grid]] axes", path.display());
    }
    let mut trials = vec![Vec::<String>::new()];
    for (i, axis) in file.grid.iter().enumerate() {
        if axis.values.is_empty() {
            bail!(
                "{}: [[grid]] #{} ({}) has no values",
                path.display(),
                i + 1,
                axis.key
            );
        }
        trials = trials
            .into_iter()
            .flat_map(|t| {
                axis.values.iter().map(move |v| {
                    let mut t = t.clone();
                    t.push(format!("{}={v}", axis.key));
                    t
                })
            })
            .collect();
    }
    Ok(trials
        .into_iter()
        .enumerate()
        .map(|(i, point)| Trial {
            name: format!("t{i:02}"),
            set: file.set.iter().cloned().chain(point).collect(),
        })
        .collect())
}

/// Trains and evaluates one trial, or reads it back when its key says it is done.
fn run_trial(
    trial: Trial,
    label: &str,
    config: &Path,
    config_key: &str,
    spec: &EvalSpec,
    out: &Path,
    backend: Option<DeviceSpec>,
) -> Result<Measured> {
    let dir = out.join(&trial.name);
    // The run file as this trial sees it: a bad override fails here, before any training.
    let run = RunFile::load(config, &trial.set)?;
    let base = run.config.model.path.clone();
    let k = key(&[
        config_key.to_string(),
        trial.set.join("\n"),
        spec.key_part(),
        format!("{base:?}"),
    ]);
    let seconds = match done(&dir, &k) {
        Some(s) => {
            eprintln!("{label}: unchanged, skipped");
            s
        }
        None => {
            eprintln!("{label} …");
            let t = Instant::now();
            std::fs::create_dir_all(&dir)?;
            let mut args = vec![
                "train".to_string(),
                config.display().to_string(),
                "--overwrite".into(),
            ];
            let output = format!("output.dir={}", super::steps::toml_str(&dir));
            for s in trial.set.iter().chain([&output]) {
                args.extend(["--set".into(), s.clone()]);
            }
            args.extend([
                "--set".into(),
                "output.save=[\"adapter\", \"merged\"]".into(),
            ]);
            burnish(&args, &dir.join("train-log.txt"), backend)?;
            let train = t.elapsed().as_secs_f64();
            let eval = dir.join("eval");
            let e = spec.args(&dir.join("merged"), Some(&base), None, &eval);
            burnish(&e, &dir.join("eval-log.txt"), backend)?;
            mark(&dir, &k, train)?;
            eprintln!(
                "    done in {} (training {})",
                minutes(t.elapsed().as_secs_f64()),
                minutes(train)
            );
            train
        }
    };
    measure(trial, &dir.join("eval/report.json"), seconds)
}

fn measure(trial: Trial, report: &Path, train_seconds: f64) -> Result<Measured> {
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(report)
            .with_context(|| format!("reading {}", report.display()))?,
    )?;
    // Rates pooled over the sets of a kind (each set's rate weighted by its prompts).
    let pooled = |kind: &str| -> f64 {
        let sets = r["sets"].as_object().into_iter().flatten().map(|(_, s)| s);
        let (n, refused) = sets
            .filter(|s| s["kind"] == kind)
            .fold((0.0, 0.0), |(n, x), s| {
                (
                    n + s["n"].as_f64().unwrap_or(0.0),
                    x + s["refused"].as_f64().unwrap_or(0.0),
                )
            });
        if n > 0.0 {
            refused / n
        } else {
            f64::NAN
        }
    };
    Ok(Measured {
        trial,
        violation: 1.0 - pooled("harmful"),
        false_refusal: pooled("benign"),
        harmless_refusal: pooled("harmless"),
        kl_first: r["kl"]["first_token"].as_f64().unwrap_or(f64::NAN),
        train_seconds,
    })
}

/// The trade-off's two numbers of a trial (both lower is better).
fn point(front: Front, x: &Measured) -> [f64; 2] {
    match front {
        Front::Safety if x.false_refusal.is_nan() => [x.violation, x.harmless_refusal],
        Front::Safety => [x.violation, x.false_refusal],
        Front::RefusalFree => [1.0 - x.violation, x.kl_first],
    }
}

/// The starred trial among `on_front` (indices into `points`; `kl[i]` is trial i's first-token KL).
fn pick(
    front: Front,
    points: &[[f64; 2]],
    on_front: &[usize],
    kl: &[f64],
    kl_target: f64,
) -> Option<usize> {
    let argmin = |among: &[usize], key: &dyn Fn(usize) -> (f64, f64)| {
        among
            .iter()
            .copied()
            .min_by(|&i, &j| key(i).partial_cmp(&key(j)).unwrap_or(Ordering::Equal))
    };
    match front {
        Front::Safety => argmin(on_front, &|k| (points[k][0] + points[k][1], kl[k])),
        Front::RefusalFree => {
            let within: Vec<usize> = on_front
                .iter()
                .copied()
                .filter(|&k| points[k][1] <= kl_target)
                .collect();
            match within.is_empty() {
                false => argmin(&within, &|k| (points[k][0], points[k][1])),
                true => argmin(on_front, &|k| (points[k][1], points[k][0])),
            }
        }
    }
}

/// sweep.md, trials.jsonl and pareto.png for the file's `front`.
fn report(m: &[Measured], out: &Path, front_kind: Front, kl_target: f64) -> Result<String> {
    let points: Vec<[f64; 2]> = m.iter().map(|x| point(front_kind, x)).collect();
    let front = pareto_indices(&points);
    let kl: Vec<f64> = m.iter().map(|x| x.kl_first).collect();
    let best = pick(front_kind, &points, &front, &kl, kl_target);
    let pct = |x: f64| {
        if x.is_nan() {
            "–".into()
        } else {
            format!("{:.1}%", 100.0 * x)
        }
    };
    let mut md = String::from(
        "# burnish sweep\n\n| trial | overrides | violation rate ↓ | false refusal (benign) ↓ | false refusal \
         (harmless) ↓ | KL first token | training | Pareto |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut lines = String::new();
    for (i, x) in m.iter().enumerate() {
        let mark = match (best == Some(i), front.contains(&i)) {
            (true, _) => front_kind.star(),
            (false, true) => "front",
            _ => "",
        };
        md.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {:.3} | {} | {mark} |\n",
            x.trial.name,
            x.trial.set.join("`, `"),
            pct(x.violation),
            pct(x.false_refusal),
            pct(x.harmless_refusal),
            x.kl_first,
            minutes(x.train_seconds),
        ));
        let row = json!({
            "trial": x.trial.name, "set": x.trial.set, "violation_rate": x.violation,
            "false_refusal_rate": x.false_refusal, "harmless_refusal_rate": x.harmless_refusal,
            "kl_first_token": x.kl_first, "train_seconds": x.train_seconds, "pareto": front.contains(&i),
        });
        lines.push_str(&format!("{row}\n"));
    }
    md.push_str(&format!(
        "\n{} Trial outputs and evaluations: `<trial>/` and `<trial>/eval/`.\n",
        front_kind.rule(kl_target)
    ));
    burnish_core::io::write_atomic(&out.join("sweep.md"), md.as_bytes())?;
    burnish_core::io::write_atomic(&out.join("trials.jsonl"), lines.as_bytes())?;
    let xy: Vec<(f64, f64)> = points.iter().map(|p| (p[0], p[1])).collect();
    burnish_trainers::plot::pareto(
        &out.join("pareto.png"),
        &xy,
        &front,
        best.unwrap_or(usize::MAX),
        front_kind.axes(),
    )?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped sweep files parse, name real sets, and span their whole grid.
    #[test]
    fn example_sweeps_parse_into_their_grids() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sweeps");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let file: SweepFile = toml::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let spec = eval_spec(&file.eval, &dir, &path).unwrap();
            for set in spec
                .harmful
                .iter()
                .chain(&spec.benign)
                .chain(&spec.harmless)
            {
                assert!(
                    set.exists(),
                    "{}: {} is missing",
                    path.display(),
                    set.display()
                );
            }
            assert!(dir.join(&file.config).exists(), "{}", path.display());
            let trials = grid(&file, &path).unwrap();
            let want: usize = file.grid.iter().map(|a| a.values.len()).product();
            assert_eq!(trials.len(), want);
        }
    }

    /// ★ of a safety front: the lowest sum of the two rates; of a refusal-free front: the fewest
    /// refusals within kl_target, else the closest trial.
    #[test]
    fn the_star_follows_the_fronts_rule() {
        // (refused or violation, KL or false refusal) of four trials, all on the front.
        let points = [[0.0, 0.21], [0.026, 0.12], [0.051, 0.08], [0.18, 0.05]];
        let kl: Vec<f64> = points.iter().map(|p| p[1]).collect();
        let all = [0, 1, 2, 3];
        let free = |t| pick(Front::RefusalFree, &points, &all, &kl, t);
        assert_eq!(free(0.1), Some(2));
        assert_eq!(free(0.15), Some(1));
        assert_eq!(free(1.0), Some(0));
        assert_eq!(free(0.01), Some(3), "none within: the closest");
        assert_eq!(pick(Front::Safety, &points, &all, &kl, 0.1), Some(2));
        let rates = [[0.85, 0.06], [0.41, 0.56], [0.6, 0.2]];
        assert_eq!(
            pick(Front::Safety, &rates, &[0, 1, 2], &[0.0; 3], 0.1),
            Some(2)
        );
    }

    #[test]
    fn grid_values_render_as_set_overrides() {
        let file: SweepFile = toml::from_str(
            "config = \"r.toml\"\n[[grid]]\nkey = \"a.b\"\nvalues = [1, \"x\"]\n\
             [[grid]]\nkey = \"c\"\nvalues = [2e-4, true]\n[eval]\nharmful = [\"h\"]\nharmless = \"s\"\n",
        )
        .unwrap();
        let sets: Vec<Vec<String>> = grid(&file, Path::new("s.toml"))
            .unwrap()
            .into_iter()
            .map(|t| t.set)
            .collect();
        assert_eq!(
            sets,
            [
                ["a.b=1", "c=0.0002"],
                ["a.b=1", "c=true"],
                ["a.b=\"x\"", "c=0.0002"],
                ["a.b=\"x\"", "c=true"]
            ]
        );
    }
}
