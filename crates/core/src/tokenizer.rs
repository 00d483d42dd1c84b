//! Tokenizer: `tokenizer.json` via the tokenizers crate, or rebuilt from GGUF metadata the way
//! transformers does (`integrations/gguf/gguf_tokenizer_mapping.py`), so a GGUF file alone is a model
//! and tokenizes exactly as transformers loading that file.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::weights::gguf::{GgufFile, GgufValue};

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    /// Prepend BOS when encoding with special tokens (GGUF `tokenizer.ggml.add_bos_token`); HF
    /// directories do this through their post-processor instead.
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("pad_token", &self.pad_token)
            .finish()
    }
}

/// `"<s>"` or `{"content": "<s>", ...}` in tokenizer_config.json.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

impl Tokenizer {
    /// `tokenizer.json` + `tokenizer_config.json` (special tokens) from a HF model directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::NotFound {
                path,
                hint: " (burnish needs the fast tokenizer file)".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = if cfg_path.exists() {
            read_json(&cfg_path)?
        } else {
            Value::Null
        };
        Ok(Self {
            inner,
            bos_token: token_str(cfg.get("bos_token")),
            eos_token: token_str(cfg.get("eos_token")),
            pad_token: token_str(cfg.get("pad_token")),
            unk_token: token_str(cfg.get("unk_token")),
            add_bos: false,
        })
    }

    /// Rebuilds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path().display().to_string();
        let err = |m: String| Error::Tokenizer(format!("{path}: {m}"));
        let get_strs = |k: &str| -> Option<Vec<String>> {
            file.get(k)?
                .as_array()?
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect()
        };
        let model = file
            .get("tokenizer.ggml.model")
            .and_then(GgufValue::as_str)
            .ok_or_else(
                || err("missing `tokenizer.ggml.model`; this GGUF has no tokenizer".into()),
            )?
            .to_string();
        let tokens = get_strs("tokenizer.ggml.tokens")
            .ok_or_else(|| err("missing `tokenizer.ggml.tokens`".into()))?;
        let types: Vec<i64> = file
            .get("tokenizer.ggml.token_type")
            .and_then(GgufValue::as_array)
            .map(|a| a.iter().map(|v| v.as_i64().unwrap_or(1)).collect())
            .unwrap_or_default();
        let merges = get_strs("tokenizer.ggml.merges");
        let pre = file
            .get("tokenizer.ggml.pre")
            .and_then(GgufValue::as_str)
            .map(String::from);
        // A special-token id past the vocabulary is a broken file, not "no such token".
        let id_tok = |k: &str| -> Result<Option<String>> {
            let key = format!("tokenizer.ggml.{k}");
            let Some(id) = file.get(&key).and_then(GgufValue::as_u64) else {
                return Ok(None);
            };
            match tokens.get(id as usize) {
                Some(t) => Ok(Some(t.clone())),
                None => Err(err(format!(
                    "`{key}` = {id} is beyond the vocabulary ({} tokens)",
                    tokens.len()
                ))),
            }
        };
        let add_bos_meta = file
            .get("tokenizer.ggml.add_bos_token")
            .and_then(GgufValue::as_bool);
        let (json, add_bos) = match model.as_str() {
            "gpt2" => (
                byte_level_json(&tokens, merges.as_deref(), &types, pre.as_deref()),
                add_bos_meta.unwrap_or(false),
            ),
            "llama" => {
                let scores: Vec<f64> = file
                    .get("tokenizer.ggml.scores")
                    .and_then(GgufValue::as_array)
                    .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect())
                    .unwrap_or_default();
                let unk = id_tok("unknown_token_id")?;
                let arch = file
                    .get("general.architecture")
                    .and_then(GgufValue::as_str)
                    .unwrap_or_default();
                let json = if arch.starts_with("gemma") {
                    gemma_json(&tokens, merges.as_deref(), &types, unk.as_deref())
                } else {
                    sentencepiece_json(&tokens, merges.as_deref(), &scores, &types, unk.as_deref())
                };
                (json, add_bos_meta.unwrap_or(true))
            }
            other => {
                return Err(err(format!(
                    "tokenizer model `{other}` is not supported (gpt2, llama)"
                )))
            }
        };
        let text = serde_json::to_string(&json).expect("json");
        let inner: tokenizers::Tokenizer = text
            .parse()
            .map_err(|e| err(format!("cannot build tokenizer: {e}")))?;
        Ok(Self {
            inner,
            bos_token: id_tok("bos_token_id")?,
            eos_token: id_tok("eos_token_id")?,
            pad_token: id_tok("padding_token_id")?,
            unk_token: id_tok("unknown_token_id")?,
            add_bos,
        })
    }

    /// The underlying tokenizers-crate object (e.g. to save `tokenizer.json`).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// Token ids of `text`. Special-token text inside `text` maps to the special token, as in transformers.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens && self.add_bos {
            if let Some(bos) = self.bos_id() {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Writes `tokenizer.json` (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = self
            .inner
            .to_string(true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        crate::io::write_atomic(path, text.as_bytes())
    }
}

const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// GPT-2's byte → printable-character table.
fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in bs.into_iter().zip(cs) {
        table[b as usize] = char::from_u32(c).expect("valid char");
    }
    table
}

fn added_tokens(tokens: &[String], types: &[i64], allowed: impl Fn(&str) -> bool) -> Vec<Value> {
    // transformers adds CONTROL tokens as special, USER_DEFINED ones as plain added tokens.
    let mut out = Vec::new();
    for (kind, special) in [(CONTROL, true), (USER_DEFINED, false)] {
        for (id, (tok, &t)) in tokens.iter().zip(types).enumerate() {
            if t == kind && allowed(tok) {
                out.push(
                    json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": special}),
                );
            }
        }
    }
    out
}

fn split_regex(pre: Option<&str>) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre? {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" | "pixtral" => {
            Some(LLAMA3)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2),
        _ => None,
    }
}

fn byte_level_json(
    tokens: &[String],
    merges: Option<&[String]>,
    types: &[i64],
    pre: Option<&str>,
) -> Value {
    let table = bytes_to_unicode();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = serde_json::Map::new();
    for (id, tok) in tokens.iter().enumerate() {
        let spelled = if in_alphabet(tok) {
            tok.clone()
        } else {
            tok.bytes().map(|b| table[b as usize]).collect()
        };
        vocab.insert(spelled, json!(id));
    }
    let merges: Vec<Value> = match merges {
        Some(m) => m.iter().map(|s| json!(s)).collect(),
        None => vec![],
    };
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let pre_tokenizer = match split_regex(pre) {
        Some(re) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
        None => byte_level(true),
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added_tokens(tokens, types, in_alphabet),
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    })
}

/// SentencePiece-style BPE (`tokenizer.ggml.model = "llama"`): merges from the file, or recovered from
/// the scores the way transformers' `generate_merges` does.
fn sentencepiece_json(
    tokens: &[String],
    merges: Option<&[String]>,
    scores: &[f64],
    types: &[i64],
    unk: Option<&str>,
) -> Value {
    let vocab = vocab_json(tokens);
    let merges = spm_merges(tokens, merges, scores);
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added_tokens(tokens, types, |_| true),
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    })
}

/// Gemma's SentencePiece BPE as transformers rebuilds it from a GGUF (`GemmaTokenizer`): no prefix space,
/// spaces normalised to `▁`. Two repairs the files need: whitespace tokens stored with real spaces
/// (`"  "`) are respelled with `▁` (the normaliser turns text into that), and, the file having no merges
/// and scores that do not follow the merge order, merges are rebuilt ranked by position in the file.
fn gemma_json(
    tokens: &[String],
    merges: Option<&[String]>,
    types: &[i64],
    unk: Option<&str>,
) -> Value {
    // Python's `str.isspace` (which `strip` uses) also counts the separators U+001C..U+001F.
    let space = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
    let respelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.chars().all(space) {
                "▁".repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    let rank: Vec<f64> = (0..tokens.len()).map(|i| -(i as f64)).collect();
    let vocab = vocab_json(&respelled);
    let merges = spm_merges(&respelled, merges, &rank);
    // The whitespace tokens are marked user-defined under their old spelling, which is no longer in the
    // vocabulary: transformers adds only those that are (it would otherwise grow the vocabulary).
    let added = added_tokens(tokens, types, |t| vocab.contains_key(t));
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
            "invert": false},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    })
}

/// `{token: id}`; a token listed twice keeps its last id, as a Python dict built from the list does.
fn vocab_json(tokens: &[String]) -> serde_json::Map<String, Value> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect()
}

/// Merges as `[left, right]` pairs (tokens may contain spaces): from the file, or recovered from the
/// vocabulary ranked by `scores` (of the merged token) the way transformers' `generate_merges` does.
fn spm_merges(tokens: &[String], merges: Option<&[String]>, scores: &[f64]) -> Vec<Value> {
    let vocab_index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    match merges {
        Some(m) => m
            .iter()
            .map(|s| match s.split_once(' ') {
                Some((l, r)) => json!([l, r]),
                None => json!(s),
            })
            .collect(),
        None => {
            // Each distinct token once, where it first appears, with its last score (a Python dict).
            let mut unique: Vec<(&str, f64)> = Vec::new();
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for (tok, &score) in tokens.iter().zip(scores) {
                match seen.get(tok.as_str()) {
                    Some(&at) => unique[at].1 = score,
                    None => {
                        seen.insert(tok, unique.len());
                        unique.push((tok, score));
                    }
                }
            }
            let mut all: Vec<(&str, &str, f64)> = Vec::new();
            for (tok, score) in unique {
                let mut local = Vec::new();
                for (i, _) in tok.char_indices().skip(1) {
                    let (l, r) = tok.split_at(i);
                    if vocab_index.contains_key(l) && vocab_index.contains_key(r) {
                        local.push((l, r, score));
                    }
                }
                local.sort_by_key(|(l, r, _)| (vocab_index[l], vocab_index[r]));
                all.extend(local);
            }
            // Stable sort, best score first; ties by piece lengths, longest first (Python's reverse=True).
            all.sort_by(|a, b| {
                (b.2, b.0.chars().count(), b.1.chars().count())
                    .partial_cmp(&(a.2, a.0.chars().count(), a.1.chars().count()))
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            all.into_iter().map(|(l, r, _)| json!([l, r])).collect()
        }
    }
}
