//! The data pipeline of a `[data]` section: per source, read → convert → answer prompts → refusal policy;
//! then a seeded train/eval split per source (before weighting, so a repeated example never lands on both
//! sides), weighting of the training part, and a seeded shuffle of the mix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burnish_core::Message;

use crate::config::{Answer, DataConfig, OnError, RefusalStyle, Rewrite, SourceConfig};
use crate::error::{Error, Result};
use crate::example::{Example, Kind, PairExample, PromptExample, SftExample};
use crate::generate::{answer_with, answered, pick_refusal, Reply, Responder, DEFAULT_REFUSALS};
use crate::policy::{apply, Outcome};
use crate::read;
use crate::refusal::{compose, Check, DetectorSpec, RefusalClassifier, RefusalDetector};
use crate::rng::Rng;
use crate::schema::convert;

/// How many bad-record messages a report keeps per source.
const KEEP_ERRORS: usize = 5;

/// What happened to one source's records.
#[derive(Clone, Debug, Default)]
pub struct SourceReport {
    pub path: PathBuf,
    /// Valid records read (at most `limit`).
    pub read: usize,
    /// Bad records skipped under `on_error = "skip"`, and the first few messages.
    pub skipped: usize,
    pub errors: Vec<String>,
    /// Policy outcomes by reason (`Decision::reason`).
    pub outcomes: BTreeMap<&'static str, usize>,
    pub kept: usize,
    /// Examples in the final sets (training after weighting).
    pub train: usize,
    pub eval: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Examples {
    Sft(Vec<SftExample>),
    Pairs(Vec<PairExample>),
    Prompts(Vec<PromptExample>),
}

impl Examples {
    pub fn len(&self) -> usize {
        match self {
            Examples::Sft(v) => v.len(),
            Examples::Pairs(v) => v.len(),
            Examples::Prompts(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn kind(&self) -> Kind {
        match self {
            Examples::Sft(_) => Kind::Sft,
            Examples::Pairs(_) => Kind::Pair,
            Examples::Prompts(_) => Kind::Prompt,
        }
    }

    /// The examples as `Example`s, e.g. to write them.
    pub fn to_examples(&self) -> Vec<Example> {
        match self {
            Examples::Sft(v) => v.iter().cloned().map(Example::Sft).collect(),
            Examples::Pairs(v) => v.iter().cloned().map(Example::Pair).collect(),
            Examples::Prompts(v) => v.iter().cloned().map(Example::Prompt).collect(),
        }
    }

    /// `items` are all of `kind` (checked by `build`).
    fn from_examples(kind: Kind, items: Vec<Example>) -> Self {
        let (mut sft, mut pairs, mut prompts) = (Vec::new(), Vec::new(), Vec::new());
        for e in items {
            match e {
                Example::Sft(x) => sft.push(x),
                Example::Pair(x) => pairs.push(x),
                Example::Prompt(x) => prompts.push(x),
            }
        }
        match kind {
            Kind::Sft => Examples::Sft(sft),
            Kind::Pair => Examples::Pairs(pairs),
            Kind::Prompt => Examples::Prompts(prompts),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub train: Examples,
    pub eval: Examples,
    pub sources: Vec<SourceReport>,
}

/// What a record that changed the data set's kind most likely lacks (a record missing its answer reads
/// as a prompt-only record).
fn missing_field_hint(expected: Kind, got: Kind) -> &'static str {
    match (expected, got) {
        (Kind::Sft, Kind::Prompt) => {
            " (is its answer missing? an SFT record needs `completion`, `response` or `output`, or an assistant message)"
        }
        (Kind::Pair, _) => " (is a side missing? a preference record needs `chosen` and `rejected`)",
        _ => "",
    }
}

/// Builds the data set of `cfg`. Paths are relative to `base_dir`; `responder` answers sources with
/// `answer = "model"`. A `[data.refusal] detector = "model:…"` needs [`build_with`].
pub fn build(
    cfg: &DataConfig,
    base_dir: &Path,
    responder: Option<&mut dyn Responder>,
) -> Result<Dataset> {
    build_with(cfg, base_dir, responder, None)
}

/// [`build`] with the learned refusal detector `learned` deciding the refusal policies (the trainers
/// crate loads the one `[data.refusal] detector` names).
pub fn build_with(
    cfg: &DataConfig,
    base_dir: &Path,
    mut responder: Option<&mut dyn Responder>,
    learned: Option<&mut dyn RefusalClassifier>,
) -> Result<Dataset> {
    let phrases = RefusalDetector::new(&cfg.refusal)?;
    if let (DetectorSpec::Model(p), None) = (&cfg.refusal.detector, &learned) {
        return Err(Error::Invalid(format!(
            "[data.refusal] detector = \"model:{}\" is a model, which only a run loads (burnish train / data build with a run file)",
            p.display()
        )));
    }
    let mut detector = Check {
        phrases: &phrases,
        learned: learned.map(|l| &mut *l as &mut dyn RefusalClassifier),
    };
    let mut kind: Option<(Kind, usize)> = None;
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    let mut reports = Vec::new();
    for (i, src) in cfg.sources.iter().enumerate() {
        let r = responder.as_mut().map(|r| &mut **r as &mut dyn Responder);
        let (outcomes, mut report) =
            process_source(cfg, i, base_dir, &mut detector, r, None, false)?;
        let kept: Vec<Example> = outcomes.into_iter().map(|o| o.example).collect();
        for ex in &kept {
            match kind {
                None => kind = Some((ex.kind(), i)),
                Some((k, j)) if k != ex.kind() => {
                    let at = ex.origin().map(|l| format!("{l}: ")).unwrap_or_default();
                    let before = if j == i {
                        "earlier records of this source gave".to_string()
                    } else {
                        format!("source #{} ({}) gave", j + 1, cfg.sources[j].path.display())
                    };
                    return Err(Error::Invalid(format!(
                        "{at}this record gives {} but {before} {}; one data set holds one kind{}",
                        ex.kind().name(),
                        k.name(),
                        missing_field_hint(k, ex.kind())
                    )));
                }
                Some(_) => {}
            }
        }
        // Split first, then weight only the training part. Both keep file order, so that an unshuffled
        // data set reads like its sources.
        let mut idx: Vec<usize> = (0..kept.len()).collect();
        Rng::derive(cfg.seed, 2 * i as u64 + 10).shuffle(&mut idx);
        let n_eval = (kept.len() as f64 * cfg.eval_fraction).round() as usize;
        let mut in_eval = vec![false; kept.len()];
        for &j in &idx[..n_eval] {
            in_eval[j] = true;
        }
        let (held, rest): (Vec<_>, Vec<_>) = kept.into_iter().zip(in_eval).partition(|(_, e)| *e);
        report.eval = held.len();
        eval.extend(held.into_iter().map(|(x, _)| x));
        let rest: Vec<Example> = rest.into_iter().map(|(x, _)| x).collect();
        let weighted = weight(
            rest,
            src.weight,
            &mut Rng::derive(cfg.seed, 2 * i as u64 + 11),
        );
        report.train = weighted.len();
        train.extend(weighted);
        reports.push(report);
    }
    if cfg.shuffle {
        Rng::derive(cfg.seed, 1).shuffle(&mut train);
        Rng::derive(cfg.seed, 2).shuffle(&mut eval);
    }
    let kind = kind.map_or(Kind::Sft, |(k, _)| k);
    Ok(Dataset {
        train: Examples::from_examples(kind, train),
        eval: Examples::from_examples(kind, eval),
        sources: reports,
    })
}

/// `round(weight × n)` examples: whole copies, plus a seeded sample without replacement for the fraction.
fn weight(items: Vec<Example>, w: f64, rng: &mut Rng) -> Vec<Example> {
    let n = items.len();
    if n == 0 {
        return items;
    }
    let want = (w * n as f64).round() as usize;
    let mut out = Vec::with_capacity(want);
    for _ in 0..want / n {
        out.extend(items.iter().cloned());
    }
    let mut idx: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut idx);
    let mut extra: Vec<usize> = idx[..want % n].to_vec();
    extra.sort_unstable();
    out.extend(extra.into_iter().map(|i| items[i].clone()));
    out
}

/// Reads and processes source `index`. Returns the kept outcomes, or every outcome with `keep_dropped`
/// (for previews). `limit` caps the records read below the source's own `limit`.
pub fn process_source(
    cfg: &DataConfig,
    index: usize,
    base_dir: &Path,
    detector: &mut Check<'_>,
    responder: Option<&mut dyn Responder>,
    limit: Option<usize>,
    keep_dropped: bool,
) -> Result<(Vec<Outcome>, SourceReport)> {
    let src = &cfg.sources[index];
    let path = base_dir.join(&src.path);
    let mut report = SourceReport {
        path: path.clone(),
        ..Default::default()
    };
    let limit = match (src.limit, limit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // Without `answer`, each example meets its policy as soon as it is read, so dropped ones are never
    // held; prompts to answer are gathered first (the model answers them in batches).
    let mut pending = Vec::new();
    let mut out = Vec::new();
    let phrases = detector.phrases;
    let mut decide = |ex: Example, report: &mut SourceReport| -> Result<()> {
        let policy = cfg.policy(src, ex.kind());
        let o = apply(ex, policy, cfg.label_goal(src), detector)?;
        *report.outcomes.entry(o.decision.reason()).or_default() += 1;
        report.kept += usize::from(o.decision.kept());
        if o.decision.kept() || keep_dropped {
            out.push(o);
        }
        Ok(())
    };
    for rec in read::open(&path, src.format)? {
        if limit.is_some_and(|l| report.read >= l) {
            break;
        }
        let converted = rec.and_then(|raw| {
            convert(&raw.value, src.schema, &src.columns)
                .map(|ex| localize(ex, src, &raw.loc))
                .map_err(|e| e.at(&raw.loc).into())
        });
        let converted = match (converted, src.rewrite) {
            (Ok(ex), Some(Rewrite::Borderline)) => borderline(ex, cfg.seed, index, report.read),
            (c, _) => c.map(Some),
        };
        match converted {
            Ok(None) => {
                report.read += 1;
                *report.outcomes.entry(NO_COUNTERPART).or_default() += 1;
            }
            Ok(Some(ex)) => {
                report.read += 1;
                if src.answer.is_some() {
                    pending.push(ex);
                } else {
                    decide(ex, &mut report)?;
                }
            }
            Err(e) if e.is_record() && src.on_error == OnError::Skip => {
                report.skipped += 1;
                if report.errors.len() < KEEP_ERRORS {
                    report.errors.push(e.to_string());
                }
            }
            Err(e) => return Err(e),
        }
    }
    let (answered, refused) = answer(pending, src, index, cfg, phrases, responder)?;
    if refused > 0 {
        *report.outcomes.entry(ANSWER_REFUSES).or_default() += refused;
    }
    for ex in answered {
        decide(ex, &mut report)?;
    }
    Ok((out, report))
}

/// The outcome line of a record `rewrite = "borderline"` found no activity in.
pub const NO_COUNTERPART: &str = "dropped: request form not recognised (rewrite)";

/// `rewrite = "borderline"`: the prompt-only record `ex`, the `i`-th of source `index`, with its last user
/// message replaced by a safe counterpart; None when its request form is not recognised.
fn borderline(ex: Example, seed: u64, index: usize, i: usize) -> Result<Option<Example>> {
    let Example::Prompt(mut p) = ex else {
        let at = ex.origin().map(|l| format!("{l}: ")).unwrap_or_default();
        return Err(Error::Invalid(format!(
            "{at}rewrite = \"borderline\" needs prompt-only records (harmful requests), but this record \
             is one of the {}",
            ex.kind().name()
        )));
    };
    let Some(last) = p.messages.iter_mut().rev().find(|m| m.role == "user") else {
        return Ok(None);
    };
    let Some(text) = crate::borderline::seeded_counterpart(&last.content, seed, index, i) else {
        return Ok(None);
    };
    last.content = text;
    p.category.get_or_insert_with(|| "borderline".into());
    Ok(Some(Example::Prompt(p)))
}

/// Source-level defaults: system prompt, category, harmfulness, and the record's location.
fn localize(mut ex: Example, src: &SourceConfig, loc: &crate::error::Location) -> Example {
    let add_system = |m: &mut Vec<burnish_core::Message>| {
        if let Some(s) = &src.system_prompt {
            if m.first().is_none_or(|f| f.role != "system") {
                m.insert(0, burnish_core::Message::system(s.clone()));
            }
        }
    };
    let (category, harmful, origin) = match &mut ex {
        Example::Sft(e) => {
            add_system(&mut e.messages);
            (&mut e.category, &mut e.harmful, &mut e.origin)
        }
        Example::Pair(e) => {
            add_system(&mut e.prompt);
            (&mut e.category, &mut e.harmful, &mut e.origin)
        }
        Example::Prompt(e) => {
            add_system(&mut e.messages);
            (&mut e.category, &mut e.harmful, &mut e.origin)
        }
    };
    if category.is_none() {
        category.clone_from(&src.category);
    }
    // A rewritten source's prompts are safe counterparts of harmful ones.
    *harmful = src.harmful.or(src.rewrite.map(|_| false));
    *origin = Some(loc.clone());
    ex
}

/// `answer = ...`: prompts become SFT examples, or (`refusal_pair`) records become answer-vs-refusal pairs.
/// Also returns how many answers were dropped for refusing (`refusal_style = "detector"`).
fn answer(
    examples: Vec<Example>,
    src: &SourceConfig,
    index: usize,
    cfg: &DataConfig,
    phrases: &RefusalDetector,
    responder: Option<&mut dyn Responder>,
) -> Result<(Vec<Example>, usize)> {
    let Some(how) = src.answer else {
        return Ok((examples, 0));
    };
    let refuser = Refuser::new(cfg, index);
    let needs_model =
        || {
            Error::Invalid(format!(
            "source #{} ({}) has answer = \"{}\" and prompt-only records, which needs [model].path",
            index + 1,
            src.path.display(),
            if how == Answer::Model { "model" } else { "refusal_pair" }
        ))
        };
    if how == Answer::RefusalPair {
        return refusal_pairs(examples, &refuser, phrases, responder, needs_model);
    }
    let mut prompts = Vec::with_capacity(examples.len());
    for ex in examples {
        match ex {
            Example::Prompt(p) => prompts.push(p),
            other => return Err(wrong_kind(&other, "prompt-only records")),
        }
    }
    let sft = match how {
        Answer::Model => answer_with(prompts, responder.ok_or_else(needs_model)?)?,
        _ => prompts
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let r = refuser.refusal(i, &p.messages, "");
                answered(p, Reply::finished(r))
            })
            .collect(),
    };
    Ok((sft.into_iter().map(Example::Sft).collect(), 0))
}

/// The refusals of one source under `[data] refusal_style`.
struct Refuser {
    style: RefusalStyle,
    templates: Vec<String>,
    seed: u64,
    index: usize,
}

impl Refuser {
    fn new(cfg: &DataConfig, index: usize) -> Self {
        let templates = match &cfg.refusal_templates {
            Some(t) => t.clone(),
            None => DEFAULT_REFUSALS.iter().map(|s| s.to_string()).collect(),
        };
        Self {
            style: cfg.refusal_style,
            templates,
            seed: cfg.seed,
            index,
        }
    }

    /// Seeded per source and record, so adding a source changes no other source's refusals.
    fn rng(&self, i: usize, stream: u64) -> Rng {
        Rng::derive(
            self.seed ^ (self.index as u64).rotate_left(32) ^ stream,
            i as u64,
        )
    }

    /// The refusal of record `i`, whose prompt is `prompt` and whose answer (for a partial refusal)
    /// is `answer`.
    fn refusal(&self, i: usize, prompt: &[Message], answer: &str) -> String {
        let request = prompt
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str());
        let mut rng = self.rng(i, 0x7e5_0000_0000);
        match self.style {
            RefusalStyle::Templates => {
                pick_refusal(&self.templates, self.seed, self.index, i).to_string()
            }
            // A third of a detector's refusals are partial: they answer in part.
            RefusalStyle::Detector if !answer.trim().is_empty() && rng.below(3) == 0 => {
                compose::partial_refusal(request, answer, &mut rng)
            }
            _ => compose::composed_refusal(request, &mut rng),
        }
    }

    /// A detector's answer: cut to a seeded length at a sentence end (refusals are short, so a
    /// detector that saw only whole answers would learn length), and for half of them carrying
    /// words that refusal phrases contain, used in another sense ([`compose::trap_answer`]): with
    /// refusal words on one side of a pair only, a detector learns the words, not the refusing.
    fn answer(&self, i: usize, answer: String) -> String {
        if self.style != RefusalStyle::Detector {
            return answer;
        }
        let mut rng = self.rng(i, 0xa45_0000_0000);
        let answer = compose::excerpt(&answer, [60, 100, 160, 240, 400, 10_000][rng.below(6)]);
        if rng.below(2) == 0 {
            compose::trap_answer(&answer, &mut rng)
        } else {
            answer
        }
    }
}

fn wrong_kind(ex: &Example, wants: &str) -> Error {
    let at = ex.origin().map(|l| format!("{l}: ")).unwrap_or_default();
    Error::Invalid(format!(
        "{at}`answer` needs {wants}, but this record is one of the {}",
        ex.kind().name()
    ))
}

/// The outcome line of an answer `refusal_style = "detector"` dropped because the phrases find it
/// refusing (the answer side of a detector's pair must answer) but not in its first sentence. Replies
/// that refuse from the start are kept as the refusal side of a pair instead (`own_pairs`).
pub const ANSWER_REFUSES: &str = "dropped: the answer refuses (refusal_style = detector)";

/// `answer = "refusal_pair"`: each record's answer (its last assistant turn, or the model's reply to a
/// prompt-only record) as `chosen` against a seeded refusal as `rejected`; the `label` policy then
/// orders each pair for its goal (a detector's pairs stay as made).
fn refusal_pairs(
    examples: Vec<Example>,
    refuser: &Refuser,
    phrases: &RefusalDetector,
    responder: Option<&mut dyn Responder>,
    needs_model: impl Fn() -> Error,
) -> Result<(Vec<Example>, usize)> {
    let mut answered = Vec::with_capacity(examples.len());
    let mut prompts = Vec::new();
    let mut slots = Vec::new();
    for ex in examples {
        match ex {
            Example::Sft(e) if e.messages.last().is_some_and(|m| m.role == "assistant") => {
                answered.push(Some(e))
            }
            Example::Prompt(p) => {
                slots.push(answered.len());
                answered.push(None);
                prompts.push(p);
            }
            other => {
                return Err(wrong_kind(
                    &other,
                    "prompt-only records or SFT records ending with an assistant turn",
                ))
            }
        }
    }
    if !prompts.is_empty() {
        let replies = answer_with(prompts, responder.ok_or_else(needs_model)?)?;
        for (slot, e) in slots.into_iter().zip(replies) {
            answered[slot] = Some(e);
        }
    }
    let (mut out, mut refused) = (Vec::with_capacity(answered.len()), 0);
    let mut own_refusals = Vec::new();
    for (i, mut e) in answered.into_iter().flatten().enumerate() {
        let reply = e.messages.pop().map(|m| m.content).unwrap_or_default();
        if refuser.style == RefusalStyle::Detector && phrases.detect(&reply).is_some() {
            if opens_with_refusal(phrases, &reply) {
                own_refusals.push((e, reply));
            } else {
                refused += 1;
            }
            continue;
        }
        let rejected = refuser.refusal(i, &e.messages, &reply);
        out.push(Example::Pair(PairExample {
            prompt: e.messages,
            chosen: refuser.answer(i, reply),
            rejected,
            // A detector's answers are excerpts presented as whole replies: were only the answers
            // open-ended, the detector would learn the missing end of turn, not the refusing.
            chosen_unfinished: e.unfinished && refuser.style != RefusalStyle::Detector,
            rejected_unfinished: false,
            category: e.category,
            harmful: e.harmful,
            origin: e.origin,
        }));
    }
    refused += own_pairs(&mut out, own_refusals);
    Ok((out, refused))
}

/// A reply the phrases flag whose first sentence already refuses: a refusal in the model's own words,
/// checked twice (a reply that only mentions a phrase later is more often an answer that quotes one).
fn opens_with_refusal(phrases: &RefusalDetector, reply: &str) -> bool {
    phrases.detect(&compose::excerpt(reply, 120)).is_some()
}

/// `refusal_style = "detector"`: the model's own refusals become the refusal side of more pairs, each
/// beside another record's answer (in turn), so the detector also sees refusals worded as the model
/// words them and not only composed ones. Returns how many had no answer to stand beside (dropped).
fn own_pairs(out: &mut Vec<Example>, own: Vec<(SftExample, String)>) -> usize {
    let answers: Vec<String> = out
        .iter()
        .filter_map(|x| match x {
            Example::Pair(p) => Some(p.chosen.clone()),
            _ => None,
        })
        .collect();
    if answers.is_empty() {
        return own.len();
    }
    for (k, (e, reply)) in own.into_iter().enumerate() {
        out.push(Example::Pair(PairExample {
            prompt: e.messages,
            chosen: answers[k % answers.len()].clone(),
            rejected: reply,
            chosen_unfinished: false,
            rejected_unfinished: false,
            category: e.category,
            harmful: e.harmful,
            origin: e.origin,
        }));
    }
    0
}

/// Writes examples as JSON Lines, atomically.
pub fn write_jsonl(path: &Path, examples: &Examples) -> Result<()> {
    let mut f = burnish_core::io::AtomicFile::create(path)?;
    for ex in examples.to_examples() {
        let mut line =
            serde_json::to_string(&ex.to_json()).map_err(|e| Error::Invalid(e.to_string()))?;
        line.push('\n');
        f.write_all(line.as_bytes())?;
    }
    Ok(f.commit()?)
}
