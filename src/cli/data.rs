//! Data commands: preview (rendered examples with the loss mask highlighted), build (policies and
//! generation applied, JSON Lines written, counts by reason) and eval-refusals (detector precision/recall).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burnish_core::backend::{Cpu, DeviceSpec};
use burnish_core::burn::tensor::backend::Backend;
use burnish_core::{Tokenizer, TokenizerBundle};
use burnish_data::build::build_with;
use burnish_data::build::{process_source, SourceReport};
use burnish_data::policy::Outcome;
use burnish_data::refusal::{
    evaluate, labelled_set, score, Labelled, PhraseList, Scores, LABELLED, LEARNED_RULE,
};
use burnish_data::{
    pack, write_jsonl, ChatEncoder, Check, DetectorSpec, EncodeOptions, Example, Examples,
    RefusalClassifier, RefusalConfig, RefusalDetector, Responder, TokenStats, IGNORE_INDEX,
};
use burnish_trainers::config::RunFile;
use burnish_trainers::detector::LearnedDetector;
use burnish_trainers::run::{learned_detector, self_first, with_responder};
use clap::{Args, Subcommand, ValueEnum};

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    cmd: DataCmd,
}

#[derive(Subcommand)]
enum DataCmd {
    /// Show the first records of each source rendered with the chat template, loss tokens highlighted,
    /// and what the refusal policy decided.
    Preview(PreviewArgs),
    /// Apply policies and generation to every source, write JSON Lines, print counts by reason.
    Build(BuildArgs),
    /// Precision and recall of the refusal detector on a labelled set (default: the built-in one).
    EvalRefusals(EvalArgs),
}

#[derive(Args)]
struct PreviewArgs {
    /// Run file (TOML); only [model].path and [data] are read.
    config: PathBuf,
    /// Records per source.
    #[arg(short, long, default_value_t = 3)]
    n: usize,
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(Args)]
struct BuildArgs {
    /// Run file (TOML); only [model] and [data] are read.
    config: PathBuf,
    /// Training set (JSON Lines); the eval split, if any, goes beside it as NAME.eval.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Override a config key, e.g. --set data.sources.0.limit=50 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Where model answers are generated: cpu, wgpu, wgpu:N, cuda or cuda:N (default: [model] backend).
    #[arg(long)]
    backend: Option<DeviceSpec>,
}

#[derive(Args)]
struct EvalArgs {
    /// Labelled responses, JSON Lines `{"response", "refusal": bool, "kind"?}`.
    #[arg(long)]
    set: Option<PathBuf>,
    /// Take the detector from this run file's [data.refusal] instead of the defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A learned detector's directory (`model:DIR` in [data.refusal]; default: the run file's, if it
    /// names one): its row comes first, beside the phrases.
    #[arg(long)]
    detector: Option<PathBuf>,
    /// Print the misclassified responses.
    #[arg(long)]
    show_errors: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

pub fn run(a: DataArgs) -> Result<()> {
    match a.cmd {
        DataCmd::Preview(a) => preview(a),
        DataCmd::Build(a) => build_cmd(a),
        DataCmd::EvalRefusals(a) => eval_refusals(a),
    }
}

/// Says which model answers the prompts, when a source answers prompts with one.
fn announce_answering_model(rf: &RunFile) {
    let c = &rf.config;
    if c.data.needs_model() {
        let path = c.data.generate.model.as_ref().unwrap_or(&c.model.path);
        match self_first(c) {
            true => eprintln!(
                "loading {} and {} (self_first) to answer prompts",
                c.model.path.display(),
                path.display()
            ),
            false => eprintln!("loading {} to answer prompts", path.display()),
        }
    }
}

fn preview(a: PreviewArgs) -> Result<()> {
    let rf = RunFile::load(&a.config, &[])?;
    let spec = rf.config.model.backend;
    let job = (a, rf);
    super::on_backend!(spec, preview_on(job: (PreviewArgs, RunFile)))
}

/// `data preview` with model answers generated on backend `B` (the run file's [model] backend).
fn preview_on<B: Backend>((a, rf): (PreviewArgs, RunFile), device: &B::Device) -> Result<()> {
    let bundle = TokenizerBundle::load(&rf.config.model.path)?;
    let enc = ChatEncoder::from_bundle(&bundle, EncodeOptions::from_config(&rf.config.data))?;
    let phrases = RefusalDetector::new(&rf.config.data.refusal)?;
    let mut learned = learned_detector::<B>(&rf.config, device)?;
    announce_answering_model(&rf);
    let color = match a.color {
        Color::Auto => std::io::stdout().is_terminal(),
        Color::Always => true,
        Color::Never => false,
    };
    let style = Style { color };
    let (_, again) = with_responder::<B, _, anyhow::Error>(&rf.config, device, |mut responder| {
        for (i, src) in rf.config.data.sources.iter().enumerate() {
            let r = responder.as_mut().map(|r| &mut **r as &mut dyn Responder);
            let mut detector = Check {
                phrases: &phrases,
                learned: learned.as_mut().map(|d| d as &mut dyn RefusalClassifier),
            };
            let (outcomes, report) = process_source(
                &rf.config.data,
                i,
                Path::new(""),
                &mut detector,
                r,
                Some(a.n),
                true,
            )?;
            println!(
                "{}",
                style.header(&format!("source #{}: {}", i + 1, src.path.display()))
            );
            for (k, o) in outcomes.iter().enumerate() {
                show_outcome(k + 1, o, &enc, &style)?;
            }
            print_report(&report, false);
            println!();
        }
        Ok(())
    })?;
    if let Some(a) = again {
        println!("{a}");
    }
    Ok(())
}

struct Style {
    color: bool,
}

impl Style {
    fn header(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[1m── {s} ──\x1b[0m")
        } else {
            format!("── {s} ──")
        }
    }

    /// Text that carries loss: green when colored, else between ⟦ ⟧.
    fn loss(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[32;1m{s}\x1b[0m")
        } else {
            format!("⟦{s}⟧")
        }
    }
}

fn show_outcome(k: usize, o: &Outcome, enc: &ChatEncoder, style: &Style) -> Result<()> {
    let at = o
        .example
        .origin()
        .map(|l| l.to_string())
        .unwrap_or_default();
    let why = match &o.refusal {
        Some(m) => format!(" · refusal: {:?} (rule {:?})", m.matched, m.rule),
        None => String::new(),
    };
    println!("#{k} {at} · {}{why}", o.decision.reason());
    let max = enc.options().max_length;
    match &o.example {
        Example::Sft(e) => {
            // As training sees it: truncated.
            let Some(t) = enc.encode_sft(e)? else {
                println!("(dropped when tokenized: no loss token left after truncation to {max})");
                return Ok(());
            };
            let cut = if t.truncated {
                format!(", truncated to max_length {max}")
            } else {
                String::new()
            };
            println!(
                "{} tokens, {} with loss{cut}",
                t.input_ids.len(),
                t.loss_tokens()
            );
            println!(
                "{}",
                highlight(enc.tokenizer(), &t.input_ids, &t.labels, style)?
            );
        }
        Example::Pair(e) => {
            let Some(p) = enc.encode_pair(e)? else {
                println!("(no loss token left after truncation to {max})");
                return Ok(());
            };
            println!("{}", enc.tokenizer().decode(&p.prompt_ids, false)?);
            for (name, c) in [("chosen", &p.chosen), ("rejected", &p.rejected)] {
                let labels: Vec<i64> = c
                    .ids
                    .iter()
                    .zip(&c.mask)
                    .map(|(&i, &m)| if m { i as i64 } else { IGNORE_INDEX })
                    .collect();
                println!(
                    "  {name}: {}",
                    highlight(enc.tokenizer(), &c.ids, &labels, style)?
                );
            }
        }
        Example::Prompt(e) => {
            let ids = enc.encode_prompt(&e.messages)?;
            println!("{} tokens", ids.len());
            println!("{}", enc.tokenizer().decode(&ids, false)?);
        }
    }
    println!();
    Ok(())
}

/// The decoded text with loss runs marked; runs are decoded whole so multi-token characters survive.
fn highlight(tok: &Tokenizer, ids: &[u32], labels: &[i64], style: &Style) -> Result<String> {
    let mut out = String::new();
    let mut start = 0;
    while start < ids.len() {
        let on = labels[start] != IGNORE_INDEX;
        let end = (start..ids.len())
            .find(|&j| (labels[j] != IGNORE_INDEX) != on)
            .unwrap_or(ids.len());
        let text = tok.decode(&ids[start..end], false)?;
        out.push_str(&if on { style.loss(&text) } else { text });
        start = end;
    }
    Ok(out)
}

fn print_report(r: &SourceReport, sizes: bool) {
    let split = if sizes {
        format!(" → train {}, eval {}", r.train, r.eval)
    } else {
        String::new()
    };
    println!(
        "  read {} records, skipped {} bad, kept {}{split}",
        r.read, r.skipped, r.kept
    );
    for (reason, n) in &r.outcomes {
        println!("    {n:>7}  {reason}");
    }
    for e in &r.errors {
        println!("    skipped: {e}");
    }
    if r.skipped > r.errors.len() {
        println!("    ... and {} more", r.skipped - r.errors.len());
    }
}

fn eval_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "jsonl".into());
    out.with_file_name(format!("{stem}.eval.{ext}"))
}

fn build_cmd(a: BuildArgs) -> Result<()> {
    let rf = RunFile::load(&a.config, &a.set)?;
    let spec = a.backend.unwrap_or(rf.config.model.backend);
    let job = (a, rf);
    super::on_backend!(spec, build_on(job: (BuildArgs, RunFile)))
}

/// `data build` with model answers generated on backend `B`.
fn build_on<B: Backend>((a, rf): (BuildArgs, RunFile), device: &B::Device) -> Result<()> {
    announce_answering_model(&rf);
    let mut learned = learned_detector::<B>(&rf.config, device)?;
    let l = learned.as_mut().map(|d| d as &mut dyn RefusalClassifier);
    let (d, again) = with_responder::<B, _, anyhow::Error>(&rf.config, device, |r| {
        Ok(build_with(&rf.config.data, Path::new(""), r, l)?)
    })?;
    if let Some(a) = again {
        println!("{a}");
    }
    for (i, s) in d.sources.iter().enumerate() {
        println!("source #{}: {}", i + 1, s.path.display());
        print_report(s, true);
    }
    write_jsonl(&a.out, &d.train).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "wrote {} {} to {}",
        d.train.len(),
        d.train.kind().name(),
        a.out.display()
    );
    if !d.eval.is_empty() {
        let ev = eval_path(&a.out);
        write_jsonl(&ev, &d.eval)?;
        println!("wrote {} to {}", d.eval.len(), ev.display());
    }
    // Token counts, with the model's tokenizer.
    let bundle = TokenizerBundle::load(&rf.config.model.path)?;
    let enc = ChatEncoder::from_bundle(&bundle, EncodeOptions::from_config(&rf.config.data))?;
    let (stats, rows) = match &d.train {
        Examples::Sft(v) => {
            let (tok, stats) = enc.encode_all_sft(v)?;
            let rows = rf
                .config
                .data
                .packing
                .then(|| pack(&tok, rf.config.data.max_length))
                .transpose()?
                .map(|r| r.len());
            (stats, rows)
        }
        Examples::Pairs(v) => (enc.encode_all_pairs(v)?.1, None),
        Examples::Prompts(_) => return Ok(()),
    };
    print_tokens(&stats, rf.config.data.max_length, rows);
    Ok(())
}

fn print_tokens(s: &TokenStats, max: usize, rows: Option<usize>) {
    println!(
        "tokens (training set, max_length {max}): {} in {} examples, {} with loss, longest {}",
        s.tokens, s.examples, s.loss_tokens, s.longest
    );
    println!(
        "  truncated: {}   dropped (no loss token left after truncation): {}",
        s.truncated, s.dropped_no_loss
    );
    if let Some(rows) = rows {
        let fill = s.tokens as f64 / (rows * max).max(1) as f64;
        println!(
            "  packing: {} rows of {max} tokens, {:.1}% filled",
            rows,
            100.0 * fill
        );
    }
}

/// The share of (refusal, non-refusal) pairs a detector's scores order right (lower for the refusal;
/// ties count half): how well the scores separate the classes at any threshold.
fn ranking_auc(scores: &[f32], refusal: &[bool]) -> Option<f64> {
    let (mut right, mut pairs) = (0.0, 0usize);
    for (r, _) in scores.iter().zip(refusal).filter(|(_, &y)| y) {
        for (a, _) in scores.iter().zip(refusal).filter(|(_, &y)| !y) {
            pairs += 1;
            right += match r.total_cmp(a) {
                std::cmp::Ordering::Less => 1.0,
                std::cmp::Ordering::Equal => 0.5,
                std::cmp::Ordering::Greater => 0.0,
            };
        }
    }
    // Undefined on a set of one class (e.g. compliant answers only, to count false refusals).
    (pairs > 0).then(|| right / pairs as f64)
}

fn eval_refusals(a: EvalArgs) -> Result<()> {
    let (set, name): (Vec<Labelled>, String) = match &a.set {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            (
                labelled_set(&text, &p.display().to_string())?,
                p.display().to_string(),
            )
        }
        None => (
            labelled_set(LABELLED, "built-in set")?,
            "built-in set (crates/data/data/refusal-labelled.jsonl)".into(),
        ),
    };
    let configured = match &a.config {
        Some(p) => RunFile::load(p, &[])?.config.data.refusal,
        None => RefusalConfig::default(),
    };
    let learned = a.detector.clone().or(match &configured.detector {
        DetectorSpec::Model(p) => Some(p.clone()),
        DetectorSpec::Phrases => None,
    });
    let positives = set.iter().filter(|x| x.refusal).count();
    println!("{name}: {} responses, {positives} refusals", set.len());
    let label = if a.config.is_some() {
        "configured"
    } else {
        "default"
    };
    let rows = [
        (label, configured),
        (
            "arditi (plain substrings)",
            RefusalConfig::plain(PhraseList::Arditi),
        ),
        (
            "heretic (plain substrings)",
            RefusalConfig::plain(PhraseList::Heretic),
        ),
    ];
    println!(
        "{:28} {:>8} {:>9} {:>7} {:>6}   tp  fp  tn  fn",
        "detector", "accuracy", "precision", "recall", "f1"
    );
    let print = |name: &str, s: &Scores| {
        println!(
            "{name:28} {:>8.3} {:>9.3} {:>7.3} {:>6.3}  {:>3} {:>3} {:>3} {:>3}",
            s.accuracy(),
            s.precision(),
            s.recall(),
            s.f1(),
            s.true_pos,
            s.false_pos,
            s.true_neg,
            s.false_neg
        );
    };
    let mut first: Option<Scores> = None;
    let mut learned_scores: Option<Vec<f32>> = None;
    let mut label = label.to_string();
    if let Some(dir) = &learned {
        let d = LearnedDetector::<Cpu>::load(dir, &Default::default())?;
        let texts: Vec<&str> = set.iter().map(|x| x.response.as_str()).collect();
        let scores = d.scores(&texts)?;
        let found: Vec<Option<String>> = scores
            .iter()
            .map(|&x| d.is_refusal(x).then(|| LEARNED_RULE.to_string()))
            .collect();
        let s = score(&found, &set);
        label = format!("learned ({})", dir.display());
        print("learned", &s);
        let labels: Vec<bool> = set.iter().map(|x| x.refusal).collect();
        match ranking_auc(&scores, &labels) {
            Some(auc) => println!(
                "{:28} ranking AUC {auc:.3} (threshold {:.3}; the AUC does not depend on it)",
                "", d.meta.threshold
            ),
            None => println!(
                "{:28} threshold {:.3} (no ranking AUC: the set holds one class only)",
                "", d.meta.threshold
            ),
        }
        learned_scores = Some(scores);
        first = Some(s);
    }
    for (name, cfg) in rows {
        let s = evaluate(&RefusalDetector::new(&cfg)?, &set);
        print(name, &s);
        first.get_or_insert(s);
    }
    let Some(s) = first else { return Ok(()) };
    let mut kinds: Vec<&str> = set.iter().map(|x| x.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    println!("\n{label} detector by kind:");
    for kind in kinds {
        let n = set.iter().filter(|x| x.kind == kind).count();
        let wrong = s.wrong.iter().filter(|&&i| set[i].kind == kind).count();
        println!(
            "  {:12} {:>3} responses, {:>3} misclassified",
            if kind.is_empty() { "(none)" } else { kind },
            n,
            wrong
        );
    }
    println!("\nrules that fired first (refusals / non-refusals flagged):");
    let mut rules: Vec<(&String, &(usize, usize))> = s.rules.iter().collect();
    rules.sort_by_key(|(r, (tp, fp))| (std::cmp::Reverse(tp + fp), (*r).clone()));
    for (rule, (tp, fp)) in rules {
        println!("  {tp:>3} / {fp:<3} {rule:?}");
    }
    if a.show_errors {
        println!("\nmisclassified:");
        for &i in &s.wrong {
            let x = &set[i];
            let said = if x.refusal {
                "missed refusal"
            } else {
                "false refusal"
            };
            match &learned_scores {
                Some(v) => println!("  [{said}, {}, score {:.2}] {:?}", x.kind, v[i], x.response),
                None => println!("  [{said}, {}] {:?}", x.kind, x.response),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ranking_auc;

    #[test]
    fn ranking_auc_counts_ordered_pairs() {
        // Refusals score low: both below both answers → 1; one answer below one refusal → 3/4.
        assert_eq!(
            ranking_auc(&[-2.0, -1.0, 1.0, 2.0], &[true, true, false, false]),
            Some(1.0)
        );
        assert_eq!(
            ranking_auc(&[-2.0, 1.5, 1.0, 2.0], &[true, true, false, false]),
            Some(0.75)
        );
        // A tie counts half; reversed scores give 0.
        assert_eq!(ranking_auc(&[0.0, 0.0], &[true, false]), Some(0.5));
        assert_eq!(ranking_auc(&[3.0, -3.0], &[true, false]), Some(0.0));
        assert_eq!(ranking_auc(&[1.0, 2.0], &[false, false]), None);
    }
}
