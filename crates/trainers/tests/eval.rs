//! Safety evaluation pieces: KL against a transformers fixture, metric arithmetic, prompt-set detection.

use std::path::{Path, PathBuf};

use burnish_core::backend::Cpu;
use burnish_core::weights::{load_llama, SafetensorsDir};
use burnish_core::{Llama, ModelConfig};
use burnish_trainers::eval::kl::{continuation_kl, Continuation, Side};
use burnish_trainers::eval::prompts::load_set;
use burnish_trainers::eval::{set_metrics, Completion, HazardMap, SetKind, SetSpec};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn tiny(name: &str) -> Llama<Cpu> {
    let dir = fixture("../core/tests/fixtures").join(name);
    let cfg = ModelConfig::from_file(dir.join("config.json")).unwrap();
    load_llama(
        &cfg,
        &SafetensorsDir::open(&dir).unwrap(),
        &Default::default(),
    )
    .unwrap()
}

#[test]
fn kl_matches_transformers_and_is_zero_for_the_same_model() {
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tests/fixtures/kl_tiny.json")).unwrap(),
    )
    .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let rows = fx["rows"].as_array().unwrap();
    let conts: Vec<Continuation> = rows
        .iter()
        .map(|r| Continuation {
            prompt: ids(&r["prompt"]),
            tokens: ids(&r["continuation"]),
        })
        .collect();
    let (base, model) = (tiny("tiny-llama"), tiny("tiny-llama-tied"));
    let side = |m| Side {
        model: m,
        adapters: burnish_core::Adapters::On,
    };
    // Batches of two mix prompt lengths, so right padding is exercised.
    let got = continuation_kl(side(&base), side(&model), &conts, 2);
    for (g, r) in got.iter().zip(rows) {
        let want: Vec<f64> = r["kl"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(g.count, want.len());
        assert!(
            (g.first - want[0]).abs() < 1e-3 * want[0].max(1.0),
            "{g:?} vs {want:?}"
        );
        let sum: f64 = want.iter().sum();
        assert!(
            (g.sum - sum).abs() < 1e-3 * sum.max(1.0),
            "{g:?} vs {want:?}"
        );
        assert!(g.first > 0.1);
    }
    let same = continuation_kl(side(&base), side(&base), &conts, 3);
    assert!(
        same.iter().all(|k| k.first < 1e-6 && k.sum < 1e-5),
        "{same:?}"
    );
}

fn row(category: Option<&str>, refused: bool, map: &HazardMap) -> Completion {
    Completion {
        set: "s".into(),
        prompt: "p".into(),
        category: category.map(String::from),
        hazard: map.hazard(category).to_string(),
        response: String::new(),
        refused,
        matched: None,
        judge: None,
        new_tokens: 0,
    }
}

#[test]
fn metric_arithmetic() {
    let map = HazardMap::default();
    let rows = vec![
        row(Some("illegal"), true, &map),
        row(Some("illegal"), false, &map),
        row(Some("cybercrime_intrusion"), true, &map),
        row(Some("chemical_biological"), true, &map),
        row(None, false, &map),
    ];
    // Checked as report.json holds it: the keys and their presence are what readers rely on.
    let m =
        serde_json::to_value(set_metrics(SetKind::Harmful, Path::new("s.jsonl"), &rows)).unwrap();
    assert_eq!(m["n"], 5);
    assert_eq!(m["refused"], 3);
    assert!((m["refusal_rate"].as_f64().unwrap() - 0.6).abs() < 1e-12);
    assert!((m["violation_rate"].as_f64().unwrap() - 0.4).abs() < 1e-12);
    assert!(m.get("false_refusal_rate").is_none());
    assert_eq!(m["by_category"]["illegal"]["n"], 2);
    assert!(
        (m["by_category"]["illegal"]["violation_rate"]
            .as_f64()
            .unwrap()
            - 0.5)
            .abs()
            < 1e-12
    );
    assert_eq!(m["by_category"]["none"]["refused"], 0);
    // illegal + cybercrime → non-violent crimes (3 rows, 2 refused); chemical → indiscriminate weapons.
    let nv = &m["by_hazard"]["non_violent_crimes"];
    assert_eq!(
        (nv["n"].as_u64(), nv["refused"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(
        m["by_hazard"]["indiscriminate_weapons"]["refusal_rate"],
        1.0
    );
    assert_eq!(m["by_hazard"]["other"]["n"], 1);
    let b = serde_json::to_value(set_metrics(
        SetKind::Benign,
        Path::new("s.jsonl"),
        &rows[..2],
    ))
    .unwrap();
    assert!((b["false_refusal_rate"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    assert!(b.get("violation_rate").is_none());
}

fn spec(path: PathBuf, kind: SetKind) -> SetSpec {
    SetSpec {
        path,
        kind,
        name: None,
        prompt: None,
        category: None,
    }
}

#[test]
fn prompt_and_category_columns_are_detected() {
    let shared = fixture("../../../shared/data");
    let s = load_set(
        &spec(
            shared.join("refusal_direction/splits/harmful_val.json"),
            SetKind::Harmful,
        ),
        None,
    )
    .unwrap();
    assert_eq!(s.prompts.len(), 39);
    assert_eq!(s.name, "harmful_val");
    assert_eq!(
        s.prompts[0].category.as_deref(),
        Some("chemical_biological")
    );
    // JailbreakBench: the prompt is `goal`, not the short `behavior` label.
    let j = load_set(
        &spec(
            shared.join("jailbreakbench/benign-behaviors.csv"),
            SetKind::Benign,
        ),
        Some(3),
    )
    .unwrap();
    assert_eq!(j.prompts.len(), 3);
    assert!(
        j.prompts[0].prompt.starts_with("Write a fictional story"),
        "{}",
        j.prompts[0].prompt
    );
    assert_eq!(
        j.prompts[0].category.as_deref(),
        Some("Harassment/Discrimination")
    );
    let a = load_set(
        &spec(
            shared.join("advbench/harmful_behaviors.csv"),
            SetKind::Harmful,
        ),
        Some(2),
    )
    .unwrap();
    assert!(a.prompts[0].prompt.starts_with("Write a script"));
    assert_eq!(a.prompts[0].category, None);
    // HarmBench's layout, and a file without any prompt-like column.
    let dir = tempfile::tempdir().unwrap();
    let hb = dir.path().join("hb.csv");
    std::fs::write(
        &hb,
        "Behavior,FunctionalCategory,SemanticCategory\nDo a bad thing,standard,illegal\n",
    )
    .unwrap();
    let h = load_set(&spec(hb, SetKind::Harmful), None).unwrap();
    assert_eq!(h.prompts[0].prompt, "Do a bad thing");
    assert_eq!(h.prompts[0].category.as_deref(), Some("illegal"));
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"foo\": \"x\"}\n").unwrap();
    let e = load_set(&spec(bad, SetKind::Harmful), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.jsonl:1") && e.contains("no prompt column"),
        "{e}"
    );
}
