//! Fuzzed run-file parser (issue #23): property-based fuzzing of `RunFile::load(path, overrides)` (TOML →
//! `RunConfig`, `--set` overrides, path resolution, validation) and of `apply_overrides` alone, with mutated
//! valid run files — lines deleted, duplicated, swapped and inserted (tables, arrays of tables, dotted
//! keys), values replaced by edge-case TOML values, bit flips, truncation, splicing — random `--set`
//! strings, and fully random bytes.
//!
//! Every property: the result is `Ok` or an `Err` naming the run file; nothing panics, nothing holds more
//! than a small multiple of the input's size in memory, nothing hangs (a watchdog aborts with the input's
//! path after 30 s).
//!
//! * `BURNISH_FUZZ_CASES` — cases (default: the CI size below).
//! * `BURNISH_FUZZ_SEED` — the RNG seed (default fixed, so CI is deterministic; `random` for a fresh one).
//!
//! A failing input is copied to `<target tmp>/fuzz-failures/` and proptest's shrunk case is saved in
//! `tests/fuzz_run_file.proptest-regressions`. docs/reliability.md ("Fuzzed readers") has the campaign
//! numbers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use burnish_trainers::config::{apply_overrides, RunFile};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

#[path = "../../core/tests/fuzz_harness/mod.rs"]
mod harness;
use harness::{meter, problem, stat, work_dir, Fuzz, Watchdog};

/// This file's fuzzing: a fixed default seed, so CI runs the same cases every time.
const FUZZ: Fuzz = Fuzz {
    seed: 0x23_70_31,
    source_file: file!(),
};

fn save_failure(target: &str, text: &[u8], overrides: &[String]) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (text, overrides).hash(&mut h);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{target}-{:016x}.toml", h.finish()));
    std::fs::write(&p, text).unwrap();
    std::fs::write(
        p.with_extension("overrides.json"),
        serde_json::to_string(overrides).unwrap(),
    )
    .unwrap();
    p
}

// ---------------------------------------------------------------------------------------------------------
// Inputs

/// Every key of docs/config.md with a value (paths replaced by `{MODEL}`, `{DATA}`, `{ADAPTER}`).
const FULL: &str = r#"[model]
path = "{MODEL}"
backend = "cpu"
dtype = "f32"
merge_adapter = "{ADAPTER}"

[lora]
r = 8
lora_alpha = 8.0
lora_dropout = 0.0
target_modules = ["q_proj", "v_proj"]
use_rslora = false
init_lora_weights = "kaiming"
layers_to_transform = [0, 1]

[data]
max_length = 2048
truncation = "right"
assistant_turns = "all"
packing = false
seed = 0
shuffle = true
eval_fraction = 0.0
refusal_templates = ["I can't help with that."]

[[data.sources]]
path = "{DATA}"
format = "jsonl"
schema = "auto"
columns = { prompt = "goal" }
refusal_policy = "keep"
label_goal = "safety"
harmful = true
answer = "refusal_template"
weight = 1.0
limit = 1000
on_error = "fail"
system_prompt = "You are a helpful assistant."
category = "advbench"

[data.refusal]
lists = ["arditi", "heretic_first_person", "burnish"]
phrases = []
regexes = []
ignore = ["i can't wait"]
window = 300
skip_quoted = true
empty_is_refusal = true

[data.generate]
max_new_tokens = 256
temperature = 0.0
top_p = 1.0
top_k = 0
seed = 0
batch_size = 8

[method]
name = "sft"

[train]
learning_rate = 2e-4
schedule = "linear"
warmup_steps = 0
warmup_ratio = 0.0
epochs = 1
max_steps = 100
batch_size = 4
gradient_accumulation_steps = 1
max_grad_norm = 1.0
seed = 42
logging_steps = 1
save_steps = 0
save_total_limit = 2

[train.adamw]
beta1 = 0.9
beta2 = 0.999
eps = 1e-8
weight_decay = 0.0

[eval]
steps = 0
batch_size = 4
limit = 100
max_new_tokens = 64
generation_batch_size = 16
kl = true
judge = "{MODEL}"

[[eval.sets]]
path = "{DATA}"
kind = "harmful"
name = "harmful_val"
prompt = "instruction"
category = "category"

[eval.hazards]
"Expert advice" = "other"

[output]
dir = "out"
save = ["adapter"]
overwrite = false
"#;

/// What `tests/common/mod.rs::tiny_run` writes.
const TINY: &str = r#"[model]
path = "{MODEL}"

[lora]
r = 4
lora_alpha = 8
target_modules = "all-linear"

[data]
max_length = 64
shuffle = false

[[data.sources]]
path = "{DATA}"

[train]
learning_rate = 1e-2
batch_size = 4
max_steps = 8
seed = 3

[output]
dir = "out"
"#;

const DPO: &str = r#"[model]
path = "{MODEL}"

[data]
max_length = 64

[[data.sources]]
path = "{DATA}"
refusal_policy = "label"
label_goal = "uncensor"
answer = "refusal_pair"

[method]
name = "dpo"
beta = 0.1
loss_type = ["sigmoid", "sft"]
loss_weights = [1.0, 0.5]
label_smoothing = 0.0
precompute_ref_log_probs = false

[output]
dir = "out"
"#;

const REWARD_PPO: &str = r#"[model]
path = "{MODEL}"

[data]
max_length = 64

[[data.sources]]
path = "{DATA}"
harmful = false

[[data.sources]]
path = "{DATA}"
harmful = true
weight = 0.5

[method]
name = "ppo"
rule = "safety"
reward_model = "{ADAPTER}"
rule_weight = 1.0
reward_model_weight = 1.0
missing_eos_penalty = 1.0
kl_coef = 0.05
kl_estimator = "k1"
target_kl = 6.0
kl_horizon = 10000.0
rollout_batch_size = 16
num_ppo_epochs = 4
num_mini_batches = 1
cliprange = 0.2
cliprange_value = 0.2
vf_coef = 0.1
gamma = 1.0
lam = 0.95
temperature = 0.7
response_length = 64
sample_every = 5
eval_prompts = 32

[train]
batch_size = 4
max_steps = 8

[output]
dir = "out"
"#;

const ABLATE: &str = r#"[model]
path = "{MODEL}"

[data]
max_length = 64

[[data.sources]]
path = "{DATA}"

[method]
name = "ablate"
mode = "ablate"
positions = "last"
projected = false
norm_preserving = false
embeddings = false
refusal_tokens = ["I", "Sorry", "As"]
select = true
gate = true
kl_bound = 0.1
max_layer_fraction = 0.8
val_prompts = 32
batch_size = 16
trials = 24
startup_trials = 8
seed = 0
max_new_tokens = 24
kl_target = 0.2
max_false_refusal = 0.1
eval_before = true
directions_from = "{MODEL}"

[output]
dir = "out"
"#;

/// Edge-case TOML values.
const VALUES: [&str; 44] = [
    "0",
    "-1",
    "1",
    "2",
    "-9223372036854775808",
    "9223372036854775807",
    "18446744073709551615",
    "4294967296",
    "65536",
    "1e400",
    "inf",
    "-inf",
    "nan",
    "-0.0",
    "1e-300",
    "0.5",
    "1.0000001",
    "0x7fffffff",
    "0o777",
    "1_000",
    "true",
    "\"\"",
    "\"x\"",
    "\"\\u0000\"",
    "\"/\"",
    "\"../../..\"",
    "\"\\u00e9t\\u00e9\"",
    "'''a\nb'''",
    "[]",
    "[1, \"a\"]",
    "[[]]",
    "[\"q_proj\", \"\"]",
    "{}",
    "{ a = 1 }",
    "{ prompt = \"x\", nope = 1 }",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "\"sigmoid\"",
    "[\"sigmoid\", \"hinge\", \"ipo\"]",
    "\"all-linear\"",
    "\"label\"",
    "\"cuda\"",
    "\"steer\"",
    "\"cosine\"",
];

/// Lines worth inserting.
const LINES: [&str; 24] = [
    "[model]",
    "[lora]",
    "[data]",
    "[[data.sources]]",
    "[data.sources]",
    "[[data.sources]]\npath = \"{DATA}\"",
    "[method]",
    "[method]\nname = \"dpo\"",
    "name = \"reward\"",
    "name = \"ablate\"",
    "name = \"nope\"",
    "[train.adamw]",
    "[eval]",
    "[[eval.sets]]\npath = \"{DATA}\"\nkind = \"benign\"",
    "[[eval.sets]]",
    "[eval.hazards]\nx = \"nope\"",
    "[output]",
    "unknown_key = 1",
    "a.b.c = 1",
    "train.seed = 1",
    "\"quoted key\" = 1",
    "[x.y.z]",
    "[[model]]",
    "=",
];

#[derive(Clone, Debug)]
enum Mutation {
    DeleteLine(u16),
    DuplicateLine(u16, u16),
    SwapLines(u16, u16),
    InsertLine(u16, u8),
    /// Replace the value of a `key = value` line.
    SetValue(u16, u8),
    /// Replace a value with a deeply nested array or inline table.
    Deep(u16, u16, bool),
    FlipBit {
        at: u32,
        bit: u8,
    },
    SetByte {
        at: u32,
        byte: u8,
    },
    Truncate(u32),
    Splice {
        donor: u8,
        from: u32,
        len: u16,
        to: u32,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => any::<u16>().prop_map(Mutation::DeleteLine),
        1 => (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Mutation::DuplicateLine(a, b)),
        1 => (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        2 => (any::<u16>(), any::<u8>()).prop_map(|(a, l)| Mutation::InsertLine(a, l)),
        6 => (any::<u16>(), any::<u8>()).prop_map(|(a, v)| Mutation::SetValue(a, v)),
        1 => (any::<u16>(), 0u16..3000, any::<bool>()).prop_map(|(a, d, t)| Mutation::Deep(a, d, t)),
        1 => (any::<u32>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        1 => (any::<u32>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        1 => any::<u32>().prop_map(Mutation::Truncate),
        1 => (any::<u8>(), any::<u32>(), 0u16..200, any::<u32>())
            .prop_map(|(donor, from, len, to)| Mutation::Splice { donor, from, len, to }),
    ]
}

fn lines(b: &[u8]) -> Vec<Vec<u8>> {
    b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect()
}

fn join(l: &[Vec<u8>]) -> Vec<u8> {
    l.join(&b'\n')
}

fn apply(b: &mut Vec<u8>, m: &Mutation, donors: &[Vec<u8>]) {
    let len = b.len();
    let mut l = lines(b);
    let n = l.len();
    let line = |i: u16| i as usize % n;
    match m {
        Mutation::DeleteLine(i) => {
            l.remove(line(*i));
        }
        Mutation::DuplicateLine(i, to) => {
            let x = l[line(*i)].clone();
            l.insert(*to as usize % (n + 1), x);
        }
        Mutation::SwapLines(a, c) => l.swap(line(*a), line(*c)),
        Mutation::InsertLine(i, k) => {
            let x = LINES[*k as usize % LINES.len()].as_bytes().to_vec();
            l.insert(*i as usize % (n + 1), x);
        }
        Mutation::SetValue(i, _) | Mutation::Deep(i, _, _) if !l.is_empty() => {
            // The i-th line that has a `=` (wrapping), if any.
            let with_eq: Vec<usize> = (0..n).filter(|&k| l[k].contains(&b'=')).collect();
            if let Some(&k) = with_eq.get(*i as usize % with_eq.len().max(1)) {
                let eq = l[k].iter().position(|&c| c == b'=').unwrap();
                let value = match m {
                    Mutation::SetValue(_, v) => {
                        VALUES[*v as usize % VALUES.len()].as_bytes().to_vec()
                    }
                    Mutation::Deep(_, d, table) => deep(*d as usize, *table),
                    _ => unreachable!(),
                };
                l[k].truncate(eq + 1);
                l[k].push(b' ');
                l[k].extend(value);
            }
        }
        Mutation::FlipBit { at, bit } if len > 0 => {
            b[*at as usize % len] ^= 1 << bit;
            return;
        }
        Mutation::SetByte { at, byte } if len > 0 => {
            b[*at as usize % len] = *byte;
            return;
        }
        Mutation::Truncate(at) => {
            b.truncate(*at as usize % (len + 1));
            return;
        }
        Mutation::Splice {
            donor,
            from,
            len: k,
            to,
        } => {
            let d = &donors[*donor as usize % donors.len()];
            let s = *from as usize % (d.len() + 1);
            let chunk = &d[s..(s + *k as usize).min(d.len())];
            let t = *to as usize % (len + 1);
            b.splice(t..t, chunk.iter().copied());
            return;
        }
        _ => return,
    }
    *b = join(&l);
}

fn deep(depth: usize, table: bool) -> Vec<u8> {
    let (open, close): (&[u8], &[u8]) = if table {
        (b"{ a = ", b" }")
    } else {
        (b"[", b"]")
    };
    let mut v = open.repeat(depth);
    v.extend_from_slice(b"1");
    v.extend(close.repeat(depth));
    v
}

/// Known keys (dotted) for `--set`.
const KEYS: [&str; 24] = [
    "model.path",
    "model.backend",
    "model.dtype",
    "lora.r",
    "lora.target_modules",
    "lora.layers_to_transform",
    "data.max_length",
    "data.eval_fraction",
    "data.sources.0.path",
    "data.sources.0.weight",
    "data.sources.1.harmful",
    "data.sources.9.path",
    "data.sources.x.path",
    "data.sources",
    "data.refusal.regexes",
    "method.name",
    "method.beta",
    "method.loss_type",
    "train.learning_rate",
    "train.adamw.beta1",
    "eval.sets.0.kind",
    "eval.hazards.x",
    "output.dir",
    "output",
];

#[derive(Clone, Debug)]
enum Override {
    Known { key: u8, value: u8 },
    Raw(String),
    Deep { key: u8, depth: u16 },
}

fn override_() -> impl Strategy<Value = Override> {
    prop_oneof![
        6 => (any::<u8>(), any::<u8>()).prop_map(|(key, value)| Override::Known { key, value }),
        3 => "[a-z0-9._= \\[\\]\"{}-]{0,24}".prop_map(Override::Raw),
        1 => (any::<u8>(), 0u16..3000).prop_map(|(key, depth)| Override::Deep { key, depth }),
    ]
}

impl Override {
    fn text(&self) -> String {
        match self {
            Override::Known { key, value } => format!(
                "{}={}",
                KEYS[*key as usize % KEYS.len()],
                VALUES[*value as usize % VALUES.len()]
            ),
            Override::Raw(s) => s.clone(),
            Override::Deep { key, depth } => format!(
                "{}={}",
                KEYS[*key as usize % KEYS.len()],
                String::from_utf8(deep(*depth as usize, key % 2 == 0)).unwrap()
            ),
        }
    }
}

#[derive(Clone, Debug)]
struct Input {
    base: usize,
    edits: Vec<Mutation>,
    overrides: Vec<Override>,
    random: Option<Vec<u8>>,
}

fn input(n_bases: usize) -> impl Strategy<Value = Input> {
    (
        0..n_bases,
        proptest::collection::vec(mutation(), 0..6),
        proptest::collection::vec(override_(), 0..4),
        proptest::option::weighted(0.05, proptest::collection::vec(any::<u8>(), 0..256)),
    )
        .prop_map(|(base, edits, overrides, random)| Input {
            base,
            edits,
            overrides,
            random,
        })
}

/// Checks `RunFile::load` (and `apply_overrides` alone) on `path`.
fn check_load(path: &Path, text: &[u8], overrides: &[String]) -> Result<(), String> {
    match RunFile::load(path, overrides) {
        Ok(run) => {
            stat(
                "run-file",
                if overrides.is_empty() {
                    "RunFile::load ok"
                } else {
                    "RunFile::load ok with --set"
                },
            );
            // A loaded config serializes (run.json does this).
            let _ = serde_json::to_string(&run.config).map_err(|e| e.to_string())?;
        }
        Err(e) => {
            let m = e.to_string();
            if !m.contains(&path.display().to_string()) {
                return Err(format!("error does not name the run file: {m}"));
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(text) {
        if !overrides.is_empty() && apply_overrides(text, overrides).is_ok() {
            stat("run-file", "apply_overrides ok");
        }
    }
    Ok(())
}

#[test]
fn fuzz_run_file() {
    let dir = work_dir("run-file");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/tiny-llama");
    let adapter =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/lora/all-linear");
    assert!(model.join("config.json").exists() && adapter.exists());
    let data = dir.join("train.jsonl");
    std::fs::write(&data, "{\"prompt\": \"hi\", \"completion\": \"there\"}\n").unwrap();
    let fill = |t: &str| {
        t.replace("{MODEL}", &model.display().to_string())
            .replace("{ADAPTER}", &adapter.display().to_string())
            .replace("{DATA}", "train.jsonl")
            .into_bytes()
    };
    let bases: Vec<Vec<u8>> = [FULL, TINY, DPO, REWARD_PPO, ABLATE]
        .iter()
        .map(|t| fill(t))
        .collect();
    // Each base loads as it is.
    let path = dir.join("run.toml");
    for b in &bases {
        std::fs::write(&path, b).unwrap();
        if let Err(e) = RunFile::load(&path, &[]) {
            panic!("{e}\n{}", String::from_utf8_lossy(b));
        }
    }
    let wd = Watchdog::new(&path, Duration::from_secs(30));
    FUZZ.run("run-file", input(bases.len()), |i| {
        let mut b = i.random.clone().unwrap_or_else(|| bases[i.base].clone());
        for m in &i.edits {
            apply(&mut b, m, &bases);
        }
        let overrides: Vec<String> = i.overrides.iter().map(Override::text).collect();
        std::fs::write(&path, &b).unwrap();
        let (r, peak) = wd.run(|| {
            meter::peak(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    check_load(&path, &b, &overrides)
                }))
            })
        });
        let size = b.len() + overrides.iter().map(String::len).sum::<usize>();
        match problem(r, peak, size) {
            None => Ok(()),
            Some(msg) => {
                let saved = save_failure("run-file", &b, &overrides);
                Err(TestCaseError::fail(format!(
                    "run file: {msg} (input saved as {}, overrides {overrides:?})",
                    saved.display()
                )))
            }
        }
    });
}
