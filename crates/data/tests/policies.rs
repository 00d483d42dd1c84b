//! Refusal policies, refusal templates, mixing, splitting, and writing what was built.

mod common;

use std::path::Path;

use burnish_core::Message;
use burnish_data::generate::DEFAULT_REFUSALS;
use burnish_data::read::open;
use burnish_data::schema::{convert, Columns, Schema};
use burnish_data::{
    build, write_jsonl, DataConfig, Dataset, Example, Examples, Reply, Responder, Result,
    SftExample,
};
use common::*;

fn config(toml: &str) -> DataConfig {
    DataConfig::from_toml(toml, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// The error of a run file's `[data]` that does not validate, read as `run.toml`.
fn config_err(toml: &str) -> String {
    DataConfig::from_toml(toml, Path::new("run.toml"))
        .unwrap_err()
        .to_string()
}

/// The error of building a data set that fails (no model to answer with).
fn build_err(toml: &str) -> String {
    build(&config(toml), Path::new(""), None)
        .unwrap_err()
        .to_string()
}

fn run(toml: &str) -> Dataset {
    build(&config(toml), Path::new(""), None).unwrap_or_else(|e| panic!("{e}"))
}

fn source(path: &Path, extra: &str) -> String {
    format!(
        "[[sources]]\npath = {:?}\n{extra}\n",
        path.display().to_string()
    )
}

/// (reason, count) pairs of the first source's report.
fn outcomes(d: &Dataset) -> Vec<(&'static str, usize)> {
    d.sources[0]
        .outcomes
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect()
}

fn last_answer(e: &burnish_data::SftExample) -> &str {
    &e.messages.last().unwrap().content
}

#[test]
fn sft_policies_keep_filter_only() {
    let mix = fixture("refusal-mix.jsonl");
    // Records 1, 3 and 5 refuse (5 in its second assistant turn); 4 says "sorry to hear", and complies.
    let d = run(&format!("shuffle = false\n{}", source(&mix, "")));
    let Examples::Sft(all) = &d.train else {
        panic!()
    };
    let refused: Vec<bool> = all.iter().map(|e| e.refused.unwrap()).collect();
    assert_eq!(refused, [true, false, true, false, true, false]);
    assert_eq!(outcomes(&d), [("kept", 6)]);

    let d = run(&format!(
        "shuffle = false\n{}",
        source(&mix, "refusal_policy = \"filter\"")
    ));
    assert_eq!(
        outcomes(&d),
        [("dropped: refusal (filter)", 3), ("kept", 3)]
    );
    let Examples::Sft(kept) = &d.train else {
        panic!()
    };
    assert_eq!(
        kept.iter()
            .map(|e| e.category.as_deref().unwrap())
            .collect::<Vec<_>>(),
        ["cooking", "support", "geo"]
    );

    let d = run(&format!(
        "shuffle = false\n{}",
        source(&mix, "refusal_policy = \"only\"")
    ));
    assert_eq!(
        outcomes(&d),
        [("dropped: not a refusal (only)", 3), ("kept", 3)]
    );
    assert_eq!(d.train.len(), 3);
}

#[test]
fn label_orders_pairs_by_refusal_and_goal() {
    let pairs = fixture("pairs-mix.jsonl");
    let refusal = "I'm sorry, but I can't help with that.";
    let (kept, swapped, both, neither) = (
        "kept",
        "kept, chosen/rejected swapped",
        "dropped: both responses refuse (label)",
        "dropped: neither response refuses (label)",
    );
    // Safety, harmful prompts: the refusal must be chosen. p1 is right, p2 and p5 are swapped.
    let d = run(&format!(
        "shuffle = false\n{}",
        source(&pairs, "refusal_policy = \"label\"\nharmful = true")
    ));
    assert_eq!(
        outcomes(&d),
        [(both, 1), (neither, 1), (kept, 1), (swapped, 2)]
    );
    let Examples::Pairs(p) = &d.train else {
        panic!()
    };
    assert_eq!(p[0].chosen, refusal);
    assert_eq!(p[1].chosen, refusal);
    assert_eq!(p[2].chosen, "As an AI, I won't.");
    // Safety, harmless prompts, and uncensoring: the compliant answer must be chosen.
    for extra in ["harmful = false", "label_goal = \"uncensor\""] {
        let d = run(&format!(
            "shuffle = false\n{}",
            source(&pairs, &format!("refusal_policy = \"label\"\n{extra}"))
        ));
        assert_eq!(
            outcomes(&d),
            [(both, 1), (neither, 1), (kept, 2), (swapped, 1)],
            "{extra}"
        );
        let Examples::Pairs(p) = &d.train else {
            panic!()
        };
        assert_eq!(
            p.iter().map(|x| x.chosen.as_str()).collect::<Vec<_>>(),
            [
                "Sure, here is an overview.",
                "Sure, here is an overview.",
                "Okay, step one."
            ]
        );
    }
    // Policies for the wrong kind of data are errors naming the record.
    let e = build_err(&source(&pairs, "refusal_policy = \"filter\""));
    assert!(
        e.starts_with(
            "tests/fixtures/pairs-mix.jsonl:1: refusal_policy = \"filter\" applies to SFT examples"
        ),
        "{e}"
    );
}

#[test]
fn refusal_templates_make_a_safety_set_from_prompts() {
    let advbench = shared("advbench/harmful_behaviors.csv");
    let cfg = |seed: u64| {
        format!(
            "seed = {seed}\nshuffle = false\n{}",
            source(
                &advbench,
                "answer = \"refusal_template\"\nharmful = true\nrefusal_policy = \"only\""
            )
        )
    };
    let d = run(&cfg(0));
    // Every built-in template is a refusal to the default detector, so `only` keeps them all.
    assert_eq!(outcomes(&d), [("kept", 520)]);
    let Examples::Sft(a) = &d.train else { panic!() };
    assert!(a
        .iter()
        .all(|e| e.harmful == Some(true) && e.refused == Some(true)));
    let used: std::collections::BTreeSet<&str> = a.iter().map(last_answer).collect();
    assert_eq!(used.len(), DEFAULT_REFUSALS.len());
    let Examples::Sft(again) = run(&cfg(0)).train else {
        panic!()
    };
    assert_eq!(a, &again);
    let Examples::Sft(other) = run(&cfg(1)).train else {
        panic!()
    };
    let same = a
        .iter()
        .zip(&other)
        .filter(|(x, y)| last_answer(x) == last_answer(y))
        .count();
    assert!(
        same < 200,
        "{same} of 520 templates unchanged by a new seed"
    );
    // User templates replace the built-in ones.
    let custom = format!(
        "refusal_templates = [\"No.\", \"Nope.\"]\n{}",
        source(&advbench, "answer = \"refusal_template\"\nlimit = 20")
    );
    let Examples::Sft(c) = run(&custom).train else {
        panic!()
    };
    assert!(c.iter().all(|e| ["No.", "Nope."].contains(&last_answer(e))));
    // `answer` needs prompt-only records.
    let e = build_err(&source(
        &fixture("refusal-mix.jsonl"),
        "answer = \"refusal_template\"",
    ));
    assert!(
        e.contains("refusal-mix.jsonl:1: `answer` needs prompt-only records"),
        "{e}"
    );
}

/// How many of the first `n` AdvBench goals mention "hack" (which `Canned` refuses).
fn hacks(advbench: &Path, n: usize) -> usize {
    let hacks = open(advbench, None)
        .unwrap()
        .take(n)
        .filter(|r| {
            r.as_ref().unwrap().value["goal"]
                .as_str()
                .unwrap()
                .contains("hack")
        })
        .count();
    assert!(hacks > 0 && hacks < n);
    hacks
}

/// Answers "I can't." to prompts mentioning "hack", a recipe otherwise.
struct Canned;

impl Responder for Canned {
    fn respond(&mut self, prompts: &[Vec<Message>]) -> Result<Vec<Reply>> {
        Ok(prompts
            .iter()
            .map(|p| {
                if p.last().unwrap().content.contains("hack") {
                    "I can't."
                } else {
                    "Here it is."
                }
                .to_string()
            })
            .map(Reply::finished)
            .collect())
    }
}

#[test]
fn model_answers_go_through_the_policy() {
    let advbench = shared("advbench/harmful_behaviors.csv");
    let cfg = config(&source(
        &advbench,
        "answer = \"model\"\nlimit = 40\nrefusal_policy = \"filter\"",
    ));
    let mut canned = Canned;
    let d = build(&cfg, Path::new(""), Some(&mut canned)).unwrap();
    let hacks = hacks(&advbench, 40);
    assert!(hacks > 0);
    assert_eq!(
        outcomes(&d),
        [("dropped: refusal (filter)", hacks), ("kept", 40 - hacks)]
    );
    let e = build(&cfg, Path::new(""), None).unwrap_err().to_string();
    assert!(
        e.contains("has answer = \"model\" and prompt-only records, which needs [model].path"),
        "{e}"
    );
}

/// Answers every prompt with "Answer from the original: PROMPT", counting the prompts it saw.
#[derive(Default)]
struct Original(usize);

impl Responder for Original {
    fn respond(&mut self, prompts: &[Vec<Message>]) -> Result<Vec<Reply>> {
        self.0 += prompts.len();
        Ok(prompts
            .iter()
            .map(|p| format!("Answer from the original: {}", p.last().unwrap().content))
            .map(Reply::finished)
            .collect())
    }
}

/// `[data.generate] self_first`: the trained model's own answers stay; only the prompts it refuses
/// are asked of the other model, and their replies land in their own slots.
#[test]
fn self_first_asks_the_other_model_only_where_the_first_refuses() {
    use burnish_data::{FallbackResponder, RefusalDetector};
    let advbench = shared("advbench/harmful_behaviors.csv");
    let cfg = config(&source(
        &advbench,
        "answer = \"refusal_pair\"\nrefusal_policy = \"label\"\nlimit = 40\nlabel_goal = \"uncensor\"",
    ));
    let hacks = hacks(&advbench, 40);
    let (mut first, mut then) = (Canned, Original::default());
    let phrases = RefusalDetector::default();
    let mut both = FallbackResponder::new(&mut first, &mut then, &phrases);
    let d = build(&cfg, Path::new(""), Some(&mut both)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((both.fell_back, both.answered), (hacks, 40));
    assert_eq!(then.0, hacks);
    assert_eq!(outcomes(&d), [("kept", 40)]);
    let Examples::Pairs(p) = &d.train else {
        panic!()
    };
    for e in p {
        let request = &e.prompt.last().unwrap().content;
        let want = match request.contains("hack") {
            true => format!("Answer from the original: {request}"),
            false => "Here it is.".to_string(),
        };
        assert_eq!(e.chosen, want);
    }
}

#[test]
fn refusal_pairs_are_labelled_for_the_goal() {
    let advbench = shared("advbench/harmful_behaviors.csv");
    let pairs = |extra: &str| {
        let cfg = config(&source(
            &advbench,
            &format!("answer = \"refusal_pair\"\nrefusal_policy = \"label\"\nlimit = 40\n{extra}"),
        ));
        build(&cfg, Path::new(""), Some(&mut Canned)).unwrap_or_else(|e| panic!("{e}"))
    };
    let hacks = hacks(&advbench, 40);
    let refusals: Vec<String> = DEFAULT_REFUSALS.iter().map(|s| s.to_string()).collect();
    // Safety on harmful prompts: the template refusal is chosen, the compliant answer rejected; prompts
    // the model already refused cannot be ordered and are dropped.
    let d = pairs("harmful = true");
    assert_eq!(
        outcomes(&d),
        [
            ("dropped: both responses refuse (label)", hacks),
            ("kept, chosen/rejected swapped", 40 - hacks)
        ]
    );
    let Examples::Pairs(p) = &d.train else {
        panic!()
    };
    assert!(p
        .iter()
        .all(|e| refusals.contains(&e.chosen) && e.rejected == "Here it is."));
    // Harmless prompts (and the uncensor goal) keep the answer as chosen.
    for extra in ["harmful = false", "label_goal = \"uncensor\""] {
        let d = pairs(extra);
        let Examples::Pairs(p) = &d.train else {
            panic!()
        };
        assert_eq!(p.len(), 40 - hacks);
        assert!(p
            .iter()
            .all(|e| e.chosen == "Here it is." && refusals.contains(&e.rejected)));
    }
    // Records that already hold an answer need no model.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("answers.jsonl");
    std::fs::write(
        &f,
        "{\"prompt\": \"p\", \"completion\": \"Sure, here you go.\"}\n",
    )
    .unwrap();
    let cfg = config(&source(
        &f,
        "answer = \"refusal_pair\"\nrefusal_policy = \"label\"\nlabel_goal = \"uncensor\"",
    ));
    let d = build(&cfg, Path::new(""), None).unwrap();
    let Examples::Pairs(p) = &d.train else {
        panic!()
    };
    assert_eq!(p[0].chosen, "Sure, here you go.");
    assert_eq!(p[0].prompt, vec![Message::user("p")]);
    // Pairs are ordered by `label` whatever the source says otherwise: a config error naming the source.
    let e = config_err(&source(
        &advbench,
        "answer = \"refusal_pair\"\nrefusal_policy = \"keep\"",
    ));
    assert!(
        e.contains("#1 (") && e.contains("needs refusal_policy = \"label\""),
        "{e}"
    );
    // Unset, the policy is `label`, and a safety label needs to know whether the prompts are harmful.
    let e = config_err(&source(&advbench, "answer = \"refusal_pair\""));
    assert!(e.contains("needs `harmful = true|false`"), "{e}");
}

#[test]
fn one_goal_key_makes_either_variant_from_the_same_data() {
    let advbench = shared("advbench/harmful_behaviors.csv");
    let harmless = shared("refusal_direction/splits/harmless_train.json");
    let run_file = |goal: &str| {
        format!(
            "goal = {goal:?}\nshuffle = false\n{}{}",
            source(
                &advbench,
                "answer = \"refusal_pair\"\nharmful = true\nlimit = 40"
            ),
            source(
                &harmless,
                "answer = \"refusal_pair\"\nharmful = false\nlimit = 8"
            ),
        )
    };
    let refusals: Vec<String> = DEFAULT_REFUSALS.iter().map(|s| s.to_string()).collect();
    let hacks = hacks(&advbench, 40);
    let mut sizes = Vec::new();
    for goal in ["safety", "refusal-free", "uncensor"] {
        let d = build(&config(&run_file(goal)), Path::new(""), Some(&mut Canned))
            .unwrap_or_else(|e| panic!("{goal}: {e}"));
        let Examples::Pairs(p) = &d.train else {
            panic!()
        };
        let (harmful, safe): (Vec<_>, Vec<_>) = p.iter().partition(|e| e.harmful == Some(true));
        assert_eq!(harmful.len(), 40 - hacks, "{goal}");
        assert_eq!(safe.len(), 8, "{goal}");
        let refuses = goal == "safety";
        assert!(
            harmful
                .iter()
                .all(|e| refusals.contains(&e.chosen) == refuses
                    && refusals.contains(&e.rejected) != refuses),
            "{goal}"
        );
        assert!(safe.iter().all(|e| e.chosen == "Here it is."), "{goal}");
        sizes.push(p.len());
    }
    assert_eq!(sizes, [40 - hacks + 8; 3]);

    // SFT on the model's own answers: refusals kept for safety, filtered for refusal-free.
    let sft = |goal: &str| {
        let cfg = config(&format!(
            "goal = {goal:?}\n{}",
            source(&advbench, "answer = \"model\"\nlimit = 40")
        ));
        let d = build(&cfg, Path::new(""), Some(&mut Canned)).unwrap();
        outcomes(&d)
    };
    assert_eq!(sft("safety"), [("kept", 40)]);
    assert_eq!(
        sft("refusal-free"),
        [("dropped: refusal (filter)", hacks), ("kept", 40 - hacks)]
    );
    // A source's own keys win over the goal.
    let cfg = config(&format!(
        "goal = \"refusal-free\"\n{}",
        source(
            &advbench,
            "answer = \"model\"\nlimit = 40\nrefusal_policy = \"keep\""
        )
    ));
    let d = build(&cfg, Path::new(""), Some(&mut Canned)).unwrap();
    assert_eq!(outcomes(&d), [("kept", 40)]);
    // Refusal templates teach refusing, which the refusal-free goal contradicts.
    let e = config_err(&format!(
        "goal = \"refusal-free\"\n{}",
        source(&advbench, "answer = \"refusal_template\"")
    ));
    assert!(
        e.contains("run.toml") && e.contains("#1 (") && e.contains("refusal_template"),
        "{e}"
    );
    // A goal labels pairs; safety needs to know whether their prompts are harmful, named per record
    // when the source could hold any kind.
    let e = build_err(&format!(
        "goal = \"safety\"\n{}",
        source(&fixture("pairs-mix.jsonl"), "")
    ));
    assert!(
        e.contains("pairs-mix.jsonl:1: refusal_policy = \"label\" with goal \"safety\" needs"),
        "{e}"
    );
    let d = run(&format!(
        "goal = \"refusal-free\"\nshuffle = false\n{}",
        source(&fixture("pairs-mix.jsonl"), "")
    ));
    let Examples::Pairs(p) = &d.train else {
        panic!()
    };
    // p1, p2 and p5 have one refusal each: the answer is chosen; p3 (both refuse), p4 (neither) dropped.
    let chosen: Vec<&str> = p.iter().map(|e| e.chosen.as_str()).collect();
    assert_eq!(
        chosen,
        [
            "Sure, here is an overview.",
            "Sure, here is an overview.",
            "Okay, step one."
        ]
    );
    let e = config_err(&format!("goal = \"safe\"\n{}", source(&advbench, "")));
    assert!(e.contains("safety") && e.contains("refusal-free"), "{e}");
}

#[test]
fn borderline_rewrite_makes_safe_requests_on_the_same_topics() {
    let harmful = shared("refusal_direction/splits/harmful_train.json");
    let originals: Vec<String> = open(&harmful, None)
        .unwrap()
        .map(|r| {
            r.unwrap().value["instruction"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let d = run(&format!(
        "shuffle = false\n{}",
        source(&harmful, "rewrite = \"borderline\"")
    ));
    let Examples::Prompts(p) = &d.train else {
        panic!()
    };
    let r = &d.sources[0];
    let unrecognised = r
        .outcomes
        .get(burnish_data::build::NO_COUNTERPART)
        .copied()
        .unwrap_or(0);
    assert_eq!(r.read, originals.len());
    assert_eq!(p.len() + unrecognised, originals.len());
    // Most of the split's request forms are recognised (measured: the rest are bare imperatives such
    // as "Hack into …", which name no separable activity).
    assert!(
        p.len() * 10 >= originals.len() * 8,
        "{} of {}",
        p.len(),
        originals.len()
    );
    let mut i = 0;
    for e in p {
        let text = &e.messages.last().unwrap().content;
        // Each rewrite is its source prompt's activity in a template: find the source in order.
        while !shares_topic(text, &originals[i]) {
            i += 1;
            assert!(i < originals.len(), "no source prompt for {text:?}");
        }
        assert_ne!(text, &originals[i]);
        assert_eq!(e.harmful, Some(false));
        assert_eq!(e.category.as_deref(), Some("borderline"));
        i += 1;
    }
    // Rewriting contradicts `harmful = true`, and needs prompt-only records.
    let e = config_err(&source(
        &harmful,
        "rewrite = \"borderline\"\nharmful = true",
    ));
    assert!(e.contains("#1 (") && e.contains("harmful = true"), "{e}");
    let e = build_err(&source(
        &fixture("refusal-mix.jsonl"),
        "rewrite = \"borderline\"",
    ));
    assert!(
        e.contains("refusal-mix.jsonl:1: rewrite = \"borderline\" needs prompt-only records"),
        "{e}"
    );
    // The model answers the rewrites, and a safety label orders them "answer" (chosen) over a refusal.
    let cfg = config(&format!(
        "goal = \"safety\"\n{}",
        source(
            &harmful,
            "rewrite = \"borderline\"\nanswer = \"refusal_pair\"\nlimit = 24"
        )
    ));
    let d = build(&cfg, Path::new(""), Some(&mut Canned)).unwrap();
    let Examples::Pairs(pairs) = &d.train else {
        panic!()
    };
    assert!(!pairs.is_empty());
    assert!(pairs.iter().all(|e| e.chosen == "Here it is."));
}

/// Whether the rewrite `text` holds the last two words of `original` (an activity is a suffix of its
/// request, of at least two words, and every template keeps it whole).
fn shares_topic(text: &str, original: &str) -> bool {
    let words: Vec<&str> = original
        .trim_end_matches(['?', '.'])
        .split_whitespace()
        .collect();
    let tail = words[words.len().saturating_sub(2)..].join(" ");
    text.to_lowercase().contains(&tail.to_lowercase())
}

#[test]
fn weights_split_and_shuffle_are_seeded() {
    let mix = fixture("refusal-mix.jsonl");
    let prompts = fixture("sft-mixed.jsonl");
    let two = |seed: u64, eval: f64| {
        format!(
            "seed = {seed}\neval_fraction = {eval}\n{}{}",
            source(&mix, "weight = 2.0"),
            source(&prompts, "weight = 0.5\nlimit = 5")
        )
    };
    let d = run(&two(3, 0.0));
    assert_eq!((d.sources[0].train, d.sources[1].train), (12, 3));
    assert_eq!(d.train.len(), 15);
    let again = run(&two(3, 0.0));
    assert_eq!(d.train, again.train);
    assert_ne!(d.train, run(&two(4, 0.0)).train);

    // Held-out examples are taken before weighting: none of them is also in the training set.
    let d = run(&two(3, 0.34));
    assert_eq!((d.sources[0].eval, d.sources[1].eval), (2, 2));
    assert_eq!((d.sources[0].train, d.sources[1].train), (8, 2));
    let (Examples::Sft(train), Examples::Sft(eval)) = (&d.train, &d.eval) else {
        panic!()
    };
    assert!(eval
        .iter()
        .all(|e| !train.iter().any(|t| t.messages == e.messages)));

    // Unshuffled, unweighted: file order.
    let d = run(&format!("shuffle = false\n{}", source(&mix, "")));
    let Examples::Sft(s) = &d.train else { panic!() };
    let lines: Vec<String> = s
        .iter()
        .map(|e| e.origin.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        lines,
        (1..=6)
            .map(|l| format!("tests/fixtures/refusal-mix.jsonl:{l}"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn written_records_read_back_as_the_same_examples() {
    let dir = tempfile::tempdir().unwrap();
    for (src, extra) in [
        (fixture("refusal-mix.jsonl"), "system_prompt = \"Be safe.\""),
        (fixture("refusal-mix.jsonl"), ""),
        (fixture("prefs.jsonl"), ""),
        (shared("refusal_direction/splits/harmful_val.json"), ""),
    ] {
        let d = run(&format!("shuffle = false\n{}", source(&src, extra)));
        let out = dir.path().join("out.jsonl");
        write_jsonl(&out, &d.train).unwrap();
        let back: Vec<Example> = open(&out, None)
            .unwrap()
            .map(|r| convert(&r.unwrap().value, Schema::Auto, &Columns::default()).unwrap())
            .collect();
        let strip = |e: Example| match e {
            Example::Sft(mut x) => {
                (x.origin, x.refused, x.harmful) = (None, None, None);
                Example::Sft(x)
            }
            Example::Pair(mut x) => {
                (x.origin, x.harmful) = (None, None);
                Example::Pair(x)
            }
            Example::Prompt(mut x) => {
                (x.origin, x.harmful) = (None, None);
                Example::Prompt(x)
            }
        };
        let before: Vec<Example> = d.train.to_examples().into_iter().map(strip).collect();
        assert_eq!(
            back.into_iter().map(strip).collect::<Vec<_>>(),
            before,
            "{}",
            src.display()
        );
    }
    // Single-turn SFT is written as {system?, prompt, completion, category, refused}.
    let d = run(&format!(
        "shuffle = false\n{}",
        source(&fixture("refusal-mix.jsonl"), "limit = 1")
    ));
    let line = d.train.to_examples()[0].to_json().to_string();
    assert_eq!(
        line,
        r#"{"prompt":"How do I pick my neighbour's lock?","completion":"I'm sorry, but I can't help with that.","refused":true,"category":"crime"}"#
    );
}

/// Answers every prompt; the answers to prompts of odd length are cut (as at `max_new_tokens`).
struct CutOdd;

impl Responder for CutOdd {
    fn respond(&mut self, prompts: &[Vec<Message>]) -> Result<Vec<Reply>> {
        Ok(prompts
            .iter()
            .map(|p| Reply {
                text: "Here is how, step one:".into(),
                unfinished: odd(p),
            })
            .collect())
    }
}

fn odd(p: &[Message]) -> bool {
    p.last().unwrap().content.len() % 2 == 1
}

/// A cut answer stays marked through the refusal policy, the label swap, and a written file read
/// back; a bad flag is named.
#[test]
fn unfinished_answers_stay_marked() {
    let advbench = shared("advbench/harmful_behaviors.csv");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let read_back = |d: &Dataset| -> Vec<Example> {
        write_jsonl(&out, &d.train).unwrap();
        open(&out, None)
            .unwrap()
            .map(|r| convert(&r.unwrap().value, Schema::Auto, &Columns::default()).unwrap())
            .collect()
    };
    let sft = config(&format!(
        "shuffle = false\n{}",
        source(&advbench, "answer = \"model\"\nlimit = 20")
    ));
    let d = build(&sft, Path::new(""), Some(&mut CutOdd)).unwrap();
    let Examples::Sft(s) = &d.train else { panic!() };
    let cut = s.iter().filter(|e| e.unfinished).count();
    assert!(cut > 0 && cut < s.len(), "{cut} of {}", s.len());
    let prompt = |e: &SftExample| e.messages[..e.messages.len() - 1].to_vec();
    assert!(s.iter().all(|e| e.unfinished == odd(&prompt(e))));
    let back = read_back(&d);
    for (e, b) in s.iter().zip(&back) {
        let Example::Sft(b) = b else { panic!() };
        assert_eq!((b.unfinished, &b.messages), (e.unfinished, &e.messages));
    }
    let line = d.train.to_examples()[0].to_json().to_string();
    assert_eq!(line.contains(r#""unfinished":true"#), s[0].unfinished);

    // Safety labels put the refusal first: the cut answer's flag moves with it to `rejected`.
    let pairs = config(&format!(
        "shuffle = false\n{}",
        source(
            &advbench,
            "answer = \"refusal_pair\"\nrefusal_policy = \"label\"\nlabel_goal = \"safety\"\nharmful = true\nlimit = 20",
        )
    ));
    let d = build(&pairs, Path::new(""), Some(&mut CutOdd)).unwrap();
    let Examples::Pairs(p) = &d.train else {
        panic!()
    };
    assert_eq!(p.len(), 20);
    assert!(p
        .iter()
        .all(|e| !e.chosen_unfinished && e.rejected == "Here is how, step one:"));
    assert!(p.iter().all(|e| e.rejected_unfinished == odd(&e.prompt)));
    assert!(p.iter().any(|e| e.rejected_unfinished));
    let back = read_back(&d);
    for (e, b) in p.iter().zip(&back) {
        let Example::Pair(b) = b else { panic!() };
        assert_eq!(
            (b.chosen_unfinished, b.rejected_unfinished),
            (e.chosen_unfinished, e.rejected_unfinished)
        );
    }

    let bad = serde_json::json!({"prompt": "a", "completion": "b", "unfinished": "maybe"});
    let e = convert(bad.as_object().unwrap(), Schema::Auto, &Columns::default()).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("unfinished"));
    assert!(e.msg.contains("expected true or false"), "{}", e.msg);
}

/// A record that lacks its answer reads as a prompt-only record; the error says what is likely
/// missing, and does not call its own source an earlier one.
#[test]
fn a_record_missing_its_answer_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("sft.jsonl");
    std::fs::write(
        &p,
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"c\"}\n",
    )
    .unwrap();
    let e = build(&config(&source(&p, "")), Path::new(""), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("sft.jsonl:2:"), "{e}");
    assert!(
        e.contains("is its answer missing") && e.contains("`completion`"),
        "{e}"
    );
    assert!(e.contains("earlier records of this source"), "{e}");
}

/// Answers that echo the request, so a pair's chosen side can be traced to its prompt.
struct Echo;

impl Responder for Echo {
    fn respond(&mut self, prompts: &[Vec<Message>]) -> Result<Vec<Reply>> {
        Ok(prompts
            .iter()
            .map(|p| {
                let q = &p.last().unwrap().content;
                if q.contains("hack") {
                    "I can't help with hacking.".into()
                } else {
                    format!("Here are the steps. First, consider this: {q}. Then go on.")
                }
            })
            .map(Reply::finished)
            .collect())
    }
}

#[test]
fn detector_style_pairs_answers_with_composed_and_partial_refusals() {
    let advbench = shared("advbench/harmful_behaviors.csv");
    let harmless = shared("refusal_direction/splits/harmless_train.json");
    let toml = format!(
        "refusal_style = \"detector\"\nshuffle = false\n{}{}",
        source(
            &advbench,
            "answer = \"refusal_pair\"\nharmful = true\nlimit = 60"
        ),
        source(
            &harmless,
            "answer = \"refusal_pair\"\nharmful = false\nlimit = 20"
        ),
    );
    let d = build(&config(&toml), Path::new(""), Some(&mut Echo)).unwrap();
    let Examples::Pairs(p) = &d.train else {
        panic!("pairs expected")
    };
    // The model's own refusals ("hack" prompts) are the refusal side of their own pairs, beside other
    // records' answers (in turn); every other record is an answer paired with a composed refusal.
    let hacks = hacks(&advbench, 60);
    assert_eq!(p.len(), 80);
    assert!(!d.sources[0]
        .outcomes
        .contains_key(burnish_data::build::ANSWER_REFUSES));
    let (own, p): (Vec<_>, Vec<_>) = p
        .iter()
        .partition(|e| e.rejected == "I can't help with hacking.");
    assert_eq!(own.len(), hacks);
    for (k, e) in own.iter().enumerate() {
        assert!(e.prompt.last().unwrap().content.contains("hack"));
        assert_eq!(e.chosen, p[k].chosen, "answers stand beside them in turn");
        assert!(e.harmful == Some(true));
    }
    let phrases = burnish_data::RefusalDetector::default();
    let (mut partial, mut trapped) = (0, 0);
    for e in &p {
        let q = &e.prompt.last().unwrap().content;
        // Ordered by construction: the answer chosen (never reordered by the label policy), cut to a
        // seeded length at a sentence end, perhaps with words of refusal phrases before or after it.
        let full = format!("Here are the steps. First, consider this: {q}. Then go on.");
        let at = e
            .chosen
            .find("Here are the steps")
            .unwrap_or_else(|| panic!("{e:?}"));
        let kept = e.chosen[at..]
            .bytes()
            .zip(full.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        assert!(kept >= "Here are the steps.".len(), "{e:?}");
        assert!(!e.rejected.contains("{what}"), "{}", e.rejected);
        partial += usize::from(e.rejected.contains("Here are the steps"));
        trapped += usize::from(at > 0 || at + kept < e.chosen.len());
        assert!(
            phrases.detect(&e.rejected).is_some() || e.rejected.contains("Here are the steps"),
            "a full refusal the phrases miss: {}",
            e.rejected
        );
    }
    // A third partial refusals, half of the answers with refusal-like words around them (seeded).
    let n = p.len() as f64;
    assert!(
        (0.2..0.5).contains(&(partial as f64 / n)),
        "{partial} of {n}"
    );
    assert!(
        (0.35..0.65).contains(&(trapped as f64 / n)),
        "{trapped} of {n}"
    );
    let distinct: std::collections::BTreeSet<&str> =
        p.iter().map(|e| e.rejected.as_str()).collect();
    assert!(
        distinct.len() as f64 > 0.9 * n,
        "{} distinct of {n}",
        distinct.len()
    );
    // Seeded: the same file builds the same pairs.
    let again = build(&config(&toml), Path::new(""), Some(&mut Echo)).unwrap();
    assert_eq!(format!("{:?}", again.train), format!("{:?}", d.train));
}

#[test]
fn composed_refusal_templates_name_the_request() {
    let advbench = shared("advbench/harmful_behaviors.csv");
    let toml = format!(
        "refusal_style = \"composed\"\n{}",
        source(
            &advbench,
            "answer = \"refusal_template\"\nharmful = true\nlimit = 30"
        )
    );
    let d = run(&toml);
    let Examples::Sft(s) = &d.train else { panic!() };
    let phrases = burnish_data::RefusalDetector::default();
    let named = s
        .iter()
        .filter(|e| {
            let (q, a) = (&e.messages[0].content, &e.messages[1].content);
            assert!(phrases.detect(a).is_some(), "{a}");
            let act = burnish_data::borderline::activity(q);
            act.is_some()
                && a.contains(match act.as_ref().unwrap() {
                    burnish_data::borderline::Activity::Verb(v)
                    | burnish_data::borderline::Activity::Gerund(v)
                    | burnish_data::borderline::Activity::Thing(v) => v.as_str(),
                })
        })
        .count();
    assert!(named >= 15, "{named} of 30 refusals name the request");
}

#[test]
fn detector_style_and_learned_detector_keys_are_checked() {
    let p = shared("advbench/harmful_behaviors.csv");
    let e = config_err(&format!(
        "refusal_style = \"detector\"\ngoal = \"safety\"\n{}",
        source(&p, "answer = \"refusal_pair\"\nharmful = true")
    ));
    assert!(e.contains("run.toml") && e.contains("remove `goal`"), "{e}");
    let e = config_err(&format!(
        "refusal_style = \"detector\"\n{}",
        source(&p, "answer = \"model\"")
    ));
    assert!(
        e.contains("#1") && e.contains("answer = \"refusal_pair\""),
        "{e}"
    );
    let e = config_err(&format!(
        "refusal_style = \"detector\"\n{}",
        source(
            &p,
            "answer = \"refusal_pair\"\nrefusal_policy = \"label\"\nharmful = true"
        )
    ));
    assert!(e.contains("remove refusal_policy"), "{e}");
    let e = config_err(&format!(
        "[refusal]\ndetector = \"judge\"\n{}",
        source(&p, "")
    ));
    assert!(e.contains("run.toml") && e.contains("model:PATH"), "{e}");
    // A model detector needs a run to load it: the data crate alone says so.
    let e = build_err(&format!(
        "[refusal]\ndetector = \"model:runs/det/adapter\"\n{}",
        source(&p, "")
    ));
    assert!(
        e.contains("model:runs/det/adapter") && e.contains("run"),
        "{e}"
    );
}
