//! Fuzzed readers (issue #23): property-based fuzzing of the GGUF reader (`GgufFile`, `GgufWeights`) and the
//! safetensors reader (`SafetensorsDir`) with mutated valid files — bit flips, interesting values written over
//! the length/count/offset fields, truncation, deleted/duplicated/spliced ranges, header-JSON edits — and
//! fully random bytes.
//!
//! Every property: the reader returns `Ok` or a typed `Err` that names the file (and the tensor, for a
//! tensor's error); it never panics, never holds more than a small multiple of the file's size in memory,
//! and never hangs (a watchdog aborts with the input's path after 30 s).
//!
//! * `BURNISH_FUZZ_CASES` — cases per target (default: the CI size below).
//! * `BURNISH_FUZZ_SEED` — the RNG seed (default fixed, so CI is deterministic; `random` for a fresh one).
//!
//! A failing input is copied to `<target tmp>/fuzz-failures/` and proptest's shrunk case is saved in
//! `tests/fuzz_readers.proptest-regressions`. Each crash found is also an explicit regression test at the end
//! of this file. docs/reliability.md ("Fuzzed readers") has the campaign numbers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use burnish_core::backend::{Cpu, CpuDevice};
use burnish_core::weights::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
use burnish_core::weights::{load_llama, GgufWeights, HfNames, SafetensorsDir, WeightSource};
use burnish_core::Error;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

#[path = "fuzz_harness/mod.rs"]
mod harness;
use harness::{meter, problem, stat, work_dir, Fuzz, Watchdog};

/// This file's fuzzing: a fixed default seed, so CI runs the same cases every time.
const FUZZ: Fuzz = Fuzz {
    seed: 0x23_F0CC,
    source_file: file!(),
};

/// Keeps a failing input where it survives the shrinking that follows.
fn save_failure(target: &str, bytes: &[u8]) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{target}-{:016x}.bin", h.finish()));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Writes `bytes` to `path`, runs `check` on it under the meter and turns a panic, a violated property or
/// an allocation over `64 × len + 4 MiB` into a test failure naming a saved copy of the input.
fn run_case(
    target: &str,
    wd: &Watchdog,
    path: &Path,
    bytes: &[u8],
    check: impl FnOnce() -> Result<(), String>,
) -> Result<(), TestCaseError> {
    std::fs::write(path, bytes).unwrap();
    let (r, peak) =
        wd.run(|| meter::peak(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(check))));
    match problem(r, peak, bytes.len()) {
        None => Ok(()),
        Some(msg) => {
            let saved = save_failure(target, bytes);
            Err(TestCaseError::fail(format!(
                "{target}: {msg} (input saved as {})",
                saved.display()
            )))
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Mutations of a valid file

/// Values that make length, count, offset and type fields interesting.
const INTERESTING: [u64; 40] = [
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    9,
    12,
    13,
    16,
    24,
    31,
    32,
    33,
    64,
    127,
    128,
    255,
    256,
    4096,
    65535,
    65536,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 48,
    100_000_000,
    100_000_001,
    (1 << 62) + 1,
    i64::MAX as u64 - 1,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 31,
    u64::MAX - 1,
    u64::MAX,
    0x1_0000_0001,
];

/// A value for a numeric field: from [`INTERESTING`], relative to the file's length, or random.
#[derive(Clone, Debug)]
enum Val {
    Interesting(usize),
    /// The file length plus this.
    FromLen(i16),
    Random(u64),
}

impl Val {
    fn get(&self, len: usize) -> u64 {
        match *self {
            Val::Interesting(i) => INTERESTING[i % INTERESTING.len()],
            Val::FromLen(d) => (len as i64 + d as i64).max(0) as u64,
            Val::Random(v) => v,
        }
    }
}

fn val() -> impl Strategy<Value = Val> {
    prop_oneof![
        6 => (0..INTERESTING.len()).prop_map(Val::Interesting),
        2 => any::<i16>().prop_map(Val::FromLen),
        2 => any::<u64>().prop_map(Val::Random),
    ]
}

/// One edit of a file. Positions are taken modulo the current length.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit {
        at: u32,
        bit: u8,
    },
    SetByte {
        at: u32,
        byte: u8,
    },
    /// Overwrite one of the base file's numeric fields (its table of `(offset, width)`).
    SetField {
        field: u32,
        val: Val,
    },
    /// Overwrite 1, 2, 4 or 8 bytes anywhere.
    SetWord {
        at: u32,
        width: u8,
        val: Val,
    },
    Truncate {
        at: u32,
    },
    Delete {
        at: u32,
        len: u16,
    },
    Duplicate {
        from: u32,
        len: u16,
        to: u32,
    },
    /// Copy a range of another base file over or into this one.
    Splice {
        donor: u8,
        from: u32,
        len: u16,
        to: u32,
        overwrite: bool,
    },
    Insert {
        at: u32,
        bytes: Vec<u8>,
    },
    /// A format-aware edit (the safetensors header JSON); ignored elsewhere.
    Json(JsonEdit),
}

fn mutation(json: bool) -> BoxedStrategy<Mutation> {
    let byte_level = prop_oneof![
        3 => (any::<u32>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        2 => (any::<u32>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        6 => (any::<u32>(), val()).prop_map(|(field, val)| Mutation::SetField { field, val }),
        2 => (any::<u32>(), prop_oneof![Just(1u8), Just(2), Just(4), Just(8)], val())
            .prop_map(|(at, width, val)| Mutation::SetWord { at, width, val }),
        1 => any::<u32>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<u32>(), 0u16..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => (any::<u32>(), 0u16..64, any::<u32>())
            .prop_map(|(from, len, to)| Mutation::Duplicate { from, len, to }),
        1 => (any::<u8>(), any::<u32>(), 0u16..256, any::<u32>(), any::<bool>()).prop_map(
            |(donor, from, len, to, overwrite)| Mutation::Splice { donor, from, len, to, overwrite }
        ),
        1 => (any::<u32>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ];
    if json {
        prop_oneof![3 => byte_level, 4 => json_edit().prop_map(Mutation::Json)].boxed()
    } else {
        byte_level.boxed()
    }
}

fn at(pos: u32, len: usize) -> usize {
    pos as usize % (len + 1)
}

/// Applies `m` to `b`; `fields` are the base file's numeric fields, `donors` the other base files.
fn apply(b: &mut Vec<u8>, m: &Mutation, fields: &[(usize, usize)], donors: &[Vec<u8>]) {
    let len = b.len();
    match m {
        Mutation::FlipBit { at: p, bit } if len > 0 => b[*p as usize % len] ^= 1 << bit,
        Mutation::SetByte { at: p, byte } if len > 0 => b[*p as usize % len] = *byte,
        Mutation::SetField { field, val } if !fields.is_empty() => {
            let (off, width) = fields[*field as usize % fields.len()];
            write_le(b, off, width, val.get(len));
        }
        Mutation::SetField { field, val } => write_le(b, at(*field, len), 8, val.get(len)),
        Mutation::SetWord { at: p, width, val } => {
            write_le(b, at(*p, len), *width as usize, val.get(len))
        }
        Mutation::Truncate { at: p } => b.truncate(at(*p, len)),
        Mutation::Delete { at: p, len: n } => {
            let s = at(*p, len);
            let e = (s + *n as usize).min(len);
            b.drain(s..e);
        }
        Mutation::Duplicate { from, len: n, to } => {
            let s = at(*from, len);
            let chunk = b[s..(s + *n as usize).min(len)].to_vec();
            let t = at(*to, len);
            b.splice(t..t, chunk);
        }
        Mutation::Splice {
            donor,
            from,
            len: n,
            to,
            overwrite,
        } if !donors.is_empty() => {
            let d = &donors[*donor as usize % donors.len()];
            let s = at(*from, d.len());
            let chunk = &d[s..(s + *n as usize).min(d.len())];
            let t = at(*to, len);
            let end = if *overwrite {
                (t + chunk.len()).min(len)
            } else {
                t
            };
            b.splice(t..end, chunk.iter().copied());
        }
        Mutation::Insert { at: p, bytes } => {
            let t = at(*p, len);
            b.splice(t..t, bytes.iter().copied());
        }
        Mutation::Json(edit) => edit.apply(b),
        _ => {}
    }
}

/// Writes the low `width` bytes of `v` little-endian at `off`, clipped to the buffer.
fn write_le(b: &mut [u8], off: usize, width: usize, v: u64) {
    for (i, byte) in v.to_le_bytes().iter().take(width).enumerate() {
        if let Some(slot) = b.get_mut(off + i) {
            *slot = *byte;
        }
    }
}

/// What a fuzz case reads: a mutated base file, or random bytes (optionally after a valid prefix).
#[derive(Clone, Debug)]
enum Input {
    Mutated { base: usize, edits: Vec<Mutation> },
    Random { prefix: usize, bytes: Vec<u8> },
}

fn input(n_bases: usize, json: bool) -> impl Strategy<Value = Input> {
    prop_oneof![
        9 => (0..n_bases, proptest::collection::vec(mutation(json), 1..6))
            .prop_map(|(base, edits)| Input::Mutated { base, edits }),
        1 => (0usize..64, proptest::collection::vec(any::<u8>(), 0..512))
            .prop_map(|(prefix, bytes)| Input::Random { prefix, bytes }),
    ]
}

/// A base file and the `(offset, width)` of its numeric fields.
struct Base {
    bytes: Vec<u8>,
    fields: Vec<(usize, usize)>,
}

fn materialize(i: &Input, bases: &[Base], donors: &[Vec<u8>]) -> Vec<u8> {
    match i {
        Input::Mutated { base, edits } => {
            let base = &bases[*base];
            let mut b = base.bytes.clone();
            for m in edits {
                apply(&mut b, m, &base.fields, donors);
            }
            b
        }
        Input::Random { prefix, bytes } => {
            let p = &bases[0].bytes;
            let mut b = p[..(*prefix).min(p.len())].to_vec();
            b.extend_from_slice(bytes);
            b
        }
    }
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

// ---------------------------------------------------------------------------------------------------------
// GGUF

/// Deterministic bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 32) as u8
        })
        .collect()
}

/// Small finite floats.
fn floats(n: usize, seed: u64) -> Vec<f32> {
    noise(n, seed)
        .iter()
        .map(|&b| (b as f32 - 127.5) / 64.0)
        .collect()
}

/// Metadata of every value type and one tensor of each ggml type (random blocks, so the dequantizers see
/// arbitrary scales, NaNs and infinities).
fn gguf_all_types() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama")
        .add_metadata("u8", 7u8)
        .add_metadata("i8", -7i8)
        .add_metadata("u16", 700u16)
        .add_metadata("i16", -700i16)
        .add_metadata("u32", 70_000u32)
        .add_metadata("i32", -70_000i32)
        .add_metadata("f32", 0.5f32)
        .add_metadata("bool", true)
        .add_metadata("string", "déjà vu")
        .add_metadata("u64", 1u64 << 40)
        .add_metadata("i64", -(1i64 << 40))
        .add_metadata("f64", -2.5f64)
        .add_metadata("tokens", vec!["a", "bc", ""])
        .add_metadata("scores", vec![0.5f32, -1.0])
        .add_metadata(
            "nested",
            GgufValue::Array(vec![vec![1u8].into(), vec![2u8, 3].into()]),
        )
        .add_metadata("general.alignment", 32u32);
    let types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::F64,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::Q1_0,
    ];
    for (i, t) in types.iter().enumerate() {
        let (bs, ts) = t.block_layout().unwrap();
        // One block per row, two rows (one row for the 256-element types, to keep the file small).
        let rows = if bs >= 64 { 1 } else { 2 };
        w.add_tensor_bytes(
            format!("t{i}.{t}"),
            &[rows, bs],
            *t,
            noise(rows * ts, i as u64 + 1),
        )
        .unwrap();
    }
    w.add_tensor_bytes("empty", &[0, 32], GgmlType::Q8_0, Vec::new())
        .unwrap();
    w.add_tensor_bytes("exotic", &[4], GgmlType::Unknown(77), vec![1, 2, 3])
        .unwrap();
    let mut b = Vec::new();
    w.write_to(&mut b).unwrap();
    b
}

/// A one-layer llama that `GgufWeights` opens: hidden 8, 2 heads of 4, 1 KV head, FFN 16, vocab 12.
fn gguf_tiny_model() -> Vec<u8> {
    let (h, hd, heads, kv, ffn, vocab) = (8usize, 4, 2, 1, 16, 12);
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama")
        .add_metadata("llama.embedding_length", h as u32)
        .add_metadata("llama.attention.head_count", heads as u32)
        .add_metadata("llama.attention.head_count_kv", kv as u32)
        .add_metadata("llama.feed_forward_length", ffn as u32)
        .add_metadata("llama.block_count", 1u32)
        .add_metadata("llama.context_length", 64u32)
        .add_metadata("llama.rope.dimension_count", hd as u32)
        .add_metadata("llama.rope.freq_base", 10000f32)
        .add_metadata("llama.attention.layer_norm_rms_epsilon", 1e-5f32)
        .add_metadata("tokenizer.ggml.bos_token_id", 1u32)
        .add_metadata("tokenizer.ggml.eos_token_id", 2u32);
    let mut seed = 0;
    let mut add = |w: &mut GgufWriter, name: &str, shape: &[usize], t: GgmlType| {
        seed += 1;
        let n = shape.iter().product();
        w.add_tensor(name, shape, &floats(n, seed), t).unwrap();
    };
    add(&mut w, "token_embd.weight", &[vocab, h], GgmlType::F16);
    add(&mut w, "output_norm.weight", &[h], GgmlType::F32);
    add(&mut w, "output.weight", &[vocab, h], GgmlType::BF16);
    add(&mut w, "blk.0.attn_norm.weight", &[h], GgmlType::F32);
    add(&mut w, "blk.0.ffn_norm.weight", &[h], GgmlType::F32);
    add(
        &mut w,
        "blk.0.attn_q.weight",
        &[heads * hd, h],
        GgmlType::F32,
    );
    add(&mut w, "blk.0.attn_k.weight", &[kv * hd, h], GgmlType::F16);
    add(&mut w, "blk.0.attn_v.weight", &[kv * hd, h], GgmlType::F32);
    add(
        &mut w,
        "blk.0.attn_output.weight",
        &[h, heads * hd],
        GgmlType::F32,
    );
    add(&mut w, "blk.0.ffn_gate.weight", &[ffn, h], GgmlType::F16);
    add(&mut w, "blk.0.ffn_up.weight", &[ffn, h], GgmlType::F32);
    add(&mut w, "blk.0.ffn_down.weight", &[h, ffn], GgmlType::F32);
    let mut b = Vec::new();
    w.write_to(&mut b).unwrap();
    b
}

/// The `(offset, width)` of every numeric field of a valid GGUF file: header counts, string lengths, value
/// types, array types and counts, tensor dims, types and offsets.
fn gguf_fields(b: &[u8]) -> Vec<(usize, usize)> {
    struct W<'a> {
        b: &'a [u8],
        pos: usize,
        fields: Vec<(usize, usize)>,
    }
    impl W<'_> {
        fn num(&mut self, width: usize) -> u64 {
            self.fields.push((self.pos, width));
            let mut v = [0u8; 8];
            v[..width].copy_from_slice(&self.b[self.pos..self.pos + width]);
            self.pos += width;
            u64::from_le_bytes(v)
        }
        fn string(&mut self) {
            let n = self.num(8) as usize;
            self.pos += n;
        }
        fn value(&mut self, ty: u64) {
            match ty {
                0 | 1 | 7 => self.pos += 1,
                2 | 3 => self.pos += 2,
                4..=6 => self.pos += 4,
                10..=12 => self.pos += 8,
                8 => self.string(),
                9 => {
                    let elem = self.num(4);
                    for _ in 0..self.num(8) {
                        self.value(elem);
                    }
                }
                _ => panic!("bad fixture"),
            }
        }
    }
    let mut w = W {
        b,
        pos: 4,
        fields: Vec::new(),
    };
    w.num(4);
    let n_tensors = w.num(8);
    let n_kv = w.num(8);
    for _ in 0..n_kv {
        w.string();
        let ty = w.num(4);
        w.value(ty);
    }
    for _ in 0..n_tensors {
        w.string();
        let n_dims = w.num(4);
        for _ in 0..n_dims {
            w.num(8);
        }
        w.num(4);
        w.num(8);
    }
    w.fields
}

fn gguf_bases() -> Vec<Base> {
    let files = [
        gguf_all_types(),
        gguf_tiny_model(),
        std::fs::read(fixture("spm/spm.gguf")).unwrap(),
    ];
    files
        .into_iter()
        .map(|bytes| Base {
            fields: gguf_fields(&bytes),
            bytes,
        })
        .collect()
}

/// HF names `GgufWeights` maps, for up to `layers` layers.
fn hf_names(layers: usize) -> Vec<String> {
    let mut v = vec![
        HfNames::EMBED.to_string(),
        HfNames::NORM.to_string(),
        HfNames::LM_HEAD.to_string(),
    ];
    for i in 0..layers {
        for l in HfNames::LINEARS {
            v.push(HfNames::layer(i, &format!("{l}.weight")));
            v.push(HfNames::layer(i, &format!("{l}.bias")));
        }
        v.push(HfNames::layer(i, "input_layernorm.weight"));
        v.push(HfNames::layer(i, "post_attention_layernorm.weight"));
    }
    v
}

fn names_file(e: &Error, path: &Path) -> Result<(), String> {
    let msg = e.to_string();
    if msg.contains(&path.display().to_string()) {
        Ok(())
    } else {
        Err(format!("error does not name the file: {msg}"))
    }
}

fn names_tensor(e: &Error, path: &Path, name: &str) -> Result<(), String> {
    names_file(e, path)?;
    let msg = e.to_string();
    if msg.contains(name) {
        Ok(())
    } else {
        Err(format!("error does not name tensor `{name}`: {msg}"))
    }
}

/// Opens `path` as a GGUF file and reads everything through the public API.
fn check_gguf(path: &Path) -> Result<(), String> {
    match GgufFile::open(path) {
        Err(e) => names_file(&e, path)?,
        Ok(f) => {
            stat("gguf", "GgufFile::open ok");
            for (k, v) in f.metadata() {
                let _ = format!("{k} = {v} ({})", v.type_name());
                let _ = (v.as_u64(), v.as_i64(), v.as_f64(), v.as_f32(), v.as_bool());
                let _ = (v.as_string_array(), v.as_f32_array(), v.as_i64_array());
                if !f.get(k).is_some_and(|g| std::ptr::eq(g, v)) {
                    return Err(format!("get({k:?}) does not find the entry"));
                }
            }
            let _ = (
                f.architecture(),
                f.version(),
                f.alignment(),
                f.data_offset(),
            );
            for t in f.tensors() {
                let (n, shape, n_bytes) = (t.n_elements(), t.shape(), t.n_bytes());
                if f.tensor_info(&t.name) != Some(t) {
                    return Err(format!("tensor_info({:?}) does not find it", t.name));
                }
                match f.tensor_bytes(&t.name) {
                    Ok(b) if Some(b.len()) != n_bytes => {
                        return Err(format!(
                            "tensor `{}`: {} bytes, n_bytes {n_bytes:?}",
                            t.name,
                            b.len()
                        ))
                    }
                    Ok(_) => {}
                    Err(e) => names_tensor(&e, path, &t.name)?,
                }
                let r = f.tensor_f32(&t.name);
                stat(
                    "gguf",
                    if r.is_ok() {
                        "tensor_f32 ok"
                    } else {
                        "tensor_f32 err"
                    },
                );
                match r {
                    Ok(v) if v.len() != n => {
                        return Err(format!("tensor `{}` {shape:?}: {} values", t.name, v.len()))
                    }
                    Ok(_) => {}
                    Err(e) => names_tensor(&e, path, &t.name)?,
                }
                // Only a dequantizable type's element count is bounded by the file (an unknown type's is
                // whatever the header claims), so only then is a buffer of that size allocated.
                if t.dtype.can_dequantize() {
                    let mut out = vec![0f32; n];
                    if let Err(e) = f.tensor_f32_into(&t.name, &mut out) {
                        names_tensor(&e, path, &t.name)?;
                    }
                    let mut wrong = vec![0f32; n + 1];
                    if f.tensor_f32_into(&t.name, &mut wrong).is_ok() {
                        return Err(format!(
                            "tensor `{}`: a buffer of the wrong size was accepted",
                            t.name
                        ));
                    }
                } else if f.tensor_f32_into(&t.name, &mut []).is_ok() {
                    return Err(format!("tensor `{}` of {} dequantized", t.name, t.dtype));
                }
            }
            if let Ok(b) = f.tensor_bytes("no such tensor") {
                return Err(format!("a missing tensor gave {} bytes", b.len()));
            }
        }
    }
    match GgufWeights::open(path) {
        Err(e) => names_file(&e, path)?,
        Ok(w) => {
            let cfg = w.config().clone();
            // The whole model, as `Pretrained::load` builds it (shapes checked against the config).
            stat("gguf", "GgufWeights::open ok");
            match load_llama::<Cpu, _>(&cfg, &w, &CpuDevice::default()) {
                Ok(_) => stat("gguf", "load_llama ok"),
                Err(e) => names_file(&e, path)?,
            }
            for name in hf_names(cfg.num_hidden_layers.min(3)) {
                let has = w.contains(&name);
                match w.tensor(&name) {
                    Ok(Some(t)) => {
                        let n: usize = t.shape.iter().product();
                        if n != t.data.len() || !has {
                            return Err(format!(
                                "`{name}`: shape {:?} with {} values (contains: {has})",
                                t.shape,
                                t.data.len()
                            ));
                        }
                    }
                    Ok(None) if has => return Err(format!("`{name}`: contained but not returned")),
                    Ok(None) => {}
                    Err(e) => {
                        let gguf = burnish_core::weights::gguf_name(&name, cfg.family).unwrap();
                        names_tensor(&e, path, &gguf)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// A GGUF file taken apart, to be edited structurally (so that an edit keeps the rest of the file parseable
/// and reaches the checks behind the parser: tensor shapes, types and offsets, the model config, the Q/K
/// row permutation) and written back with [`GgufModel::emit`], which writes whatever it is given.
#[derive(Clone)]
struct GgufModel {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    /// `(name, dims, type id, offset)`.
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    data: Vec<u8>,
}

impl GgufModel {
    fn parse(bytes: &[u8], dir: &Path) -> GgufModel {
        let p = dir.join("base.gguf");
        std::fs::write(&p, bytes).unwrap();
        let f = GgufFile::open(&p).unwrap();
        GgufModel {
            version: f.version(),
            metadata: f.metadata().to_vec(),
            tensors: f
                .tensors()
                .iter()
                .map(|t| (t.name.clone(), t.dims.clone(), t.dtype.id(), t.offset))
                .collect(),
            data: bytes[f.data_offset() as usize..].to_vec(),
        }
    }

    fn emit(&self) -> Vec<u8> {
        fn string(b: &mut Vec<u8>, s: &str) {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        }
        fn value(b: &mut Vec<u8>, v: &GgufValue) {
            match v {
                GgufValue::U8(x) => b.push(*x),
                GgufValue::I8(x) => b.push(*x as u8),
                GgufValue::U16(x) => b.extend(x.to_le_bytes()),
                GgufValue::I16(x) => b.extend(x.to_le_bytes()),
                GgufValue::U32(x) => b.extend(x.to_le_bytes()),
                GgufValue::I32(x) => b.extend(x.to_le_bytes()),
                GgufValue::F32(x) => b.extend(x.to_le_bytes()),
                GgufValue::Bool(x) => b.push(*x as u8),
                GgufValue::String(x) => string(b, x),
                GgufValue::U64(x) => b.extend(x.to_le_bytes()),
                GgufValue::I64(x) => b.extend(x.to_le_bytes()),
                GgufValue::F64(x) => b.extend(x.to_le_bytes()),
                GgufValue::Array(a) => {
                    b.extend(a.first().map_or(0, GgufValue::type_id).to_le_bytes());
                    b.extend((a.len() as u64).to_le_bytes());
                    for x in a {
                        value(b, x);
                    }
                }
            }
        }
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            string(&mut b, k);
            b.extend(v.type_id().to_le_bytes());
            value(&mut b, v);
        }
        for (name, dims, ty, offset) in &self.tensors {
            string(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
        }
        let align = self
            .metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .filter(|a| a.is_power_of_two() && *a <= 1 << 12)
            .unwrap_or(32) as usize;
        b.resize(b.len().div_ceil(align) * align, 0);
        b.extend(&self.data);
        b
    }
}

/// Keys the model config and tokenizer read.
const META_KEYS: [&str; 22] = [
    "general.architecture",
    "general.alignment",
    "llama.embedding_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.feed_forward_length",
    "llama.block_count",
    "llama.attention.key_length",
    "llama.rope.dimension_count",
    "llama.context_length",
    "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.scaling.type",
    "llama.rope.scaling.factor",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "qwen2.embedding_length",
    "qwen2.attention.head_count",
];
const META_STRINGS: [&str; 8] = [
    "llama", "qwen2", "gemma", "", "linear", "none", "yarn", "gpt2",
];
const TENSOR_NAMES: [&str; 12] = [
    "token_embd.weight",
    "output.weight",
    "output_norm.weight",
    "rope_freqs.weight",
    "blk.0.attn_q.weight",
    "blk.0.attn_k.weight",
    "blk.0.attn_q.bias",
    "blk.0.attn_output.bias",
    "blk.0.ffn_up.bias",
    "blk.1.attn_norm.weight",
    "blk.0.attn_norm.weight",
    "blk.2.ffn_down.weight",
];

#[derive(Clone, Debug)]
enum MetaVal {
    U32(Val),
    U64(Val),
    I32(i32),
    F32(u8),
    Str(u8),
    Bool(bool),
    Strings(u8),
    Floats(u8),
    /// Arrays nested this deep (the reader accepts 16).
    Nested(u8),
}

impl MetaVal {
    fn get(&self, len: usize) -> GgufValue {
        const F: [f32; 8] = [0.0, -1.0, 1e-30, 1e30, f32::NAN, f32::INFINITY, -0.0, 0.5];
        match self {
            MetaVal::U32(v) => GgufValue::U32(v.get(len) as u32),
            MetaVal::U64(v) => GgufValue::U64(v.get(len)),
            MetaVal::I32(v) => GgufValue::I32(*v),
            MetaVal::F32(i) => GgufValue::F32(F[*i as usize % F.len()]),
            MetaVal::Str(i) => META_STRINGS[*i as usize % META_STRINGS.len()].into(),
            MetaVal::Bool(b) => GgufValue::Bool(*b),
            MetaVal::Strings(n) => {
                GgufValue::Array((0..*n).map(|i| format!("t{i}").into()).collect())
            }
            MetaVal::Floats(n) => GgufValue::Array((0..*n).map(|i| (i as f32).into()).collect()),
            MetaVal::Nested(depth) => {
                (0..*depth).fold(GgufValue::U8(1), |v, _| GgufValue::Array(vec![v]))
            }
        }
    }
}

/// A structural edit of a GGUF file.
#[derive(Clone, Debug)]
enum GgufEdit {
    Dims { tensor: u8, dims: Vec<Val> },
    Type { tensor: u8, id: u8 },
    Offset { tensor: u8, val: Val },
    Meta { key: u8, value: MetaVal },
    DropMeta(u8),
    DropTensor(u8),
    Rename { tensor: u8, to: u8 },
    Version(u8),
}

fn meta_val() -> impl Strategy<Value = MetaVal> {
    prop_oneof![
        4 => val().prop_map(MetaVal::U32),
        2 => val().prop_map(MetaVal::U64),
        1 => any::<i32>().prop_map(MetaVal::I32),
        2 => any::<u8>().prop_map(MetaVal::F32),
        2 => any::<u8>().prop_map(MetaVal::Str),
        1 => any::<bool>().prop_map(MetaVal::Bool),
        1 => (0u8..20).prop_map(MetaVal::Strings),
        1 => (0u8..20).prop_map(MetaVal::Floats),
        1 => (0u8..24).prop_map(MetaVal::Nested),
    ]
}

/// Small dims mostly (shapes that fit the data), sometimes interesting ones.
fn dim() -> impl Strategy<Value = Val> {
    prop_oneof![
        3 => (0usize..10).prop_map(Val::Interesting),
        1 => val(),
    ]
}

fn gguf_edit() -> impl Strategy<Value = GgufEdit> {
    prop_oneof![
        3 => (any::<u8>(), proptest::collection::vec(dim(), 0..6))
            .prop_map(|(tensor, dims)| GgufEdit::Dims { tensor, dims }),
        2 => (any::<u8>(), 0u8..45).prop_map(|(tensor, id)| GgufEdit::Type { tensor, id }),
        2 => (any::<u8>(), val()).prop_map(|(tensor, val)| GgufEdit::Offset { tensor, val }),
        5 => (any::<u8>(), meta_val()).prop_map(|(key, value)| GgufEdit::Meta { key, value }),
        1 => any::<u8>().prop_map(GgufEdit::DropMeta),
        1 => any::<u8>().prop_map(GgufEdit::DropTensor),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(tensor, to)| GgufEdit::Rename { tensor, to }),
        1 => any::<u8>().prop_map(GgufEdit::Version),
    ]
}

impl GgufEdit {
    fn apply(&self, m: &mut GgufModel) {
        let len = m.data.len();
        let n = m.tensors.len();
        let pick = |i: u8| i as usize % n.max(1);
        match self {
            GgufEdit::Dims { tensor, dims } if n > 0 => {
                m.tensors[pick(*tensor)].1 = dims.iter().map(|d| d.get(len)).collect()
            }
            GgufEdit::Type { tensor, id } if n > 0 => m.tensors[pick(*tensor)].2 = *id as u32,
            GgufEdit::Offset { tensor, val } if n > 0 => m.tensors[pick(*tensor)].3 = val.get(len),
            GgufEdit::Meta { key, value } => {
                let key = META_KEYS[*key as usize % META_KEYS.len()];
                let v = value.get(len);
                match m.metadata.iter_mut().find(|(k, _)| k == key) {
                    Some(slot) => slot.1 = v,
                    None => m.metadata.push((key.into(), v)),
                }
            }
            GgufEdit::DropMeta(i) if !m.metadata.is_empty() => {
                let i = *i as usize % m.metadata.len();
                m.metadata.remove(i);
            }
            GgufEdit::DropTensor(i) if n > 0 => {
                m.tensors.remove(pick(*i));
            }
            GgufEdit::Rename { tensor, to } if n > 0 => {
                m.tensors[pick(*tensor)].0 = TENSOR_NAMES[*to as usize % TENSOR_NAMES.len()].into()
            }
            GgufEdit::Version(v) => m.version = [2, 3, 1, 4, 0x0300_0000][*v as usize % 5],
            _ => {}
        }
    }
}

#[test]
fn fuzz_gguf() {
    let bases = gguf_bases();
    let dir = work_dir("gguf");
    let models: Vec<GgufModel> = bases
        .iter()
        .map(|b| GgufModel::parse(&b.bytes, &dir))
        .collect();
    let donors: Vec<Vec<u8>> = bases.iter().map(|b| b.bytes.clone()).collect();
    let path = dir.join("case.gguf");
    let wd = Watchdog::new(&path, Duration::from_secs(30));
    let n = bases.len();
    let structured = (
        0..n,
        proptest::collection::vec(gguf_edit(), 1..5),
        proptest::collection::vec(mutation(false), 0..3),
    );
    let strategy = prop_oneof![
        1 => structured.prop_map(|(base, edits, bytes)| (Some((base, edits)), Input::Mutated { base, edits: bytes })),
        1 => input(n, false).prop_map(|i| (None, i)),
    ];
    FUZZ.run("gguf", strategy, |(structural, i)| {
        let bytes = match (structural, &i) {
            (Some((base, edits)), Input::Mutated { edits: muts, .. }) => {
                let mut m = models[base].clone();
                for e in &edits {
                    e.apply(&mut m);
                }
                let mut b = m.emit();
                let fields = gguf_fields(&b);
                for mu in muts {
                    apply(&mut b, mu, &fields, &donors);
                }
                b
            }
            _ => materialize(&i, &bases, &donors),
        };
        run_case("gguf", &wd, &path, &bytes, || check_gguf(&path))
    });
}

// ---------------------------------------------------------------------------------------------------------
// safetensors

/// A safetensors file from `(name, dtype, shape, bytes)`, header padded to 8 bytes as the reference writer
/// does.
fn st_file(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)], meta: bool) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if meta {
        header.insert(
            "__metadata__".into(),
            serde_json::json!({"format": "pt", "note": "fuzz"}),
        );
    }
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(bytes);
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn st_small() -> Vec<u8> {
    st_file(
        &[
            ("model.norm.weight", "F32", vec![4], noise(16, 1)),
            ("model.embed_tokens.weight", "F16", vec![3, 4], noise(24, 2)),
            ("lm_head.weight", "BF16", vec![3, 4], noise(24, 3)),
            ("ids", "I64", vec![2], noise(16, 4)),
            ("scalar", "F32", vec![], noise(4, 5)),
            ("zero", "F32", vec![0, 3], Vec::new()),
            ("mask", "BOOL", vec![2, 2], vec![0, 1, 1, 0]),
        ],
        true,
    )
}

/// The tiny-llama fixture: a real header (names, shapes, offsets as transformers writes them).
fn st_fixture() -> Vec<u8> {
    std::fs::read(fixture("tiny-llama/model.safetensors")).unwrap()
}

/// A header JSON edit: parse the header, change one thing, write it back (with a correct length prefix
/// unless `keep_len`).
#[derive(Clone, Debug)]
struct JsonEdit {
    tensor: u8,
    what: JsonWhat,
    keep_len: bool,
}

#[derive(Clone, Debug)]
enum JsonWhat {
    Offset {
        end: bool,
        val: Val,
    },
    Dim {
        idx: u8,
        val: Val,
    },
    Rank(u8),
    Dtype(u8),
    Weird {
        field: u8,
        raw: u8,
    },
    Remove,
    /// Onto another tensor's name (a collision), the empty name, `__metadata__` or an odd one.
    Rename(u8),
    Metadata(u8),
}

const DTYPES: [&str; 20] = [
    "F32", "F16", "BF16", "F64", "I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "BOOL",
    "F8_E4M3", "F8_E5M2", "F4", "F6_E2M3", "C64", "f32", "Q4_K",
];
const WEIRD_JSON: [&str; 14] = [
    "null",
    "-1",
    "1.5",
    "1e300",
    "\"8\"",
    "[]",
    "[1]",
    "[1, 2, 3]",
    "{}",
    "true",
    "18446744073709551616",
    "[-1, 4]",
    "[4, 2]",
    "[[0], [4]]",
];

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    let what = prop_oneof![
        4 => (any::<bool>(), val()).prop_map(|(end, val)| JsonWhat::Offset { end, val }),
        3 => (any::<u8>(), val()).prop_map(|(idx, val)| JsonWhat::Dim { idx, val }),
        1 => (0u8..6).prop_map(JsonWhat::Rank),
        2 => any::<u8>().prop_map(JsonWhat::Dtype),
        2 => (0u8..3, any::<u8>()).prop_map(|(field, raw)| JsonWhat::Weird { field, raw }),
        1 => Just(JsonWhat::Remove),
        1 => any::<u8>().prop_map(JsonWhat::Rename),
        1 => any::<u8>().prop_map(JsonWhat::Metadata),
    ];
    (any::<u8>(), what, proptest::bool::weighted(0.1)).prop_map(|(tensor, what, keep_len)| {
        JsonEdit {
            tensor,
            what,
            keep_len,
        }
    })
}

impl JsonEdit {
    fn apply(&self, b: &mut Vec<u8>) {
        let Some(n) = b
            .get(..8)
            .map(|h| u64::from_le_bytes(h.try_into().unwrap()) as usize)
        else {
            return;
        };
        let Some(Ok(serde_json::Value::Object(mut header))) = b
            .get(8..8usize.saturating_add(n))
            .map(serde_json::from_slice)
        else {
            return;
        };
        let len = b.len();
        let names: Vec<String> = header.keys().cloned().collect();
        if names.is_empty() {
            return;
        }
        let name = names[self.tensor as usize % names.len()].clone();
        let entry = header.get_mut(&name).unwrap();
        match &self.what {
            JsonWhat::Offset { end, val } => {
                if let Some(o) = entry
                    .get_mut("data_offsets")
                    .and_then(|o| o.get_mut(*end as usize))
                {
                    *o = val.get(len).into();
                }
            }
            JsonWhat::Dim { idx, val } => {
                if let Some(s) = entry.get_mut("shape").and_then(|s| s.as_array_mut()) {
                    if !s.is_empty() {
                        let i = *idx as usize % s.len();
                        s[i] = val.get(len).into();
                    }
                }
            }
            JsonWhat::Rank(r) => {
                if let Some(s) = entry.get_mut("shape").and_then(|s| s.as_array_mut()) {
                    s.resize(*r as usize, 1.into());
                }
            }
            JsonWhat::Dtype(d) => {
                if let Some(o) = entry.as_object_mut() {
                    o.insert("dtype".into(), DTYPES[*d as usize % DTYPES.len()].into());
                }
            }
            JsonWhat::Weird { field, raw } => {
                if let Some(o) = entry.as_object_mut() {
                    let key = ["dtype", "shape", "data_offsets"][*field as usize % 3];
                    let v =
                        serde_json::from_str(WEIRD_JSON[*raw as usize % WEIRD_JSON.len()]).unwrap();
                    o.insert(key.into(), v);
                }
            }
            JsonWhat::Remove => {
                header.remove(&name);
            }
            JsonWhat::Rename(to) => {
                let v = header.remove(&name).unwrap();
                let new = match to % 4 {
                    0 => names[*to as usize % names.len()].clone(),
                    1 => String::new(),
                    2 => "__metadata__".into(),
                    _ => format!("{name}\u{0}\u{202e}`"),
                };
                header.insert(new, v);
            }
            JsonWhat::Metadata(k) => {
                let v = serde_json::from_str(WEIRD_JSON[*k as usize % WEIRD_JSON.len()]).unwrap();
                header.insert("__metadata__".into(), v);
            }
        }
        let h = serde_json::to_vec(&header).unwrap();
        let mut out = if self.keep_len {
            (n as u64).to_le_bytes().to_vec()
        } else {
            (h.len() as u64).to_le_bytes().to_vec()
        };
        out.extend(h);
        out.extend_from_slice(&b[(8 + n).min(len)..]);
        *b = out;
    }
}

fn st_bases() -> Vec<Base> {
    [st_small(), st_fixture()]
        .into_iter()
        .map(|bytes| Base {
            // The header length, and the first bytes of the JSON (where a length would sit in a GGUF file).
            fields: vec![(0, 8), (0, 4), (4, 4)],
            bytes,
        })
        .collect()
}

/// Opens `path` with `SafetensorsDir::open_file` and reads every tensor.
fn check_safetensors(path: &Path) -> Result<(), String> {
    match SafetensorsDir::open_file(path) {
        Err(e) => names_file(&e, path),
        Ok(d) => {
            stat("safetensors", "open_file ok");
            check_safetensors_dir(&d, path)
        }
    }
}

fn check_safetensors_dir(d: &SafetensorsDir, path: &Path) -> Result<(), String> {
    let names: Vec<String> = d.names().map(String::from).collect();
    for name in &names {
        if !d.contains(name) {
            return Err(format!("`{name}` listed but not contained"));
        }
        let _ = d.dtype(name);
        match d.tensor(name) {
            Ok(Some(t)) => {
                stat("safetensors", "tensor ok");
                let n = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                if n != Some(t.data.len()) {
                    return Err(format!(
                        "`{name}`: shape {:?} with {} values",
                        t.shape,
                        t.data.len()
                    ));
                }
            }
            Ok(None) => return Err(format!("`{name}` listed but not returned")),
            Err(Error::DType { name: n, .. }) if &n == name => {}
            Err(e) => names_tensor(&e, path, name)?,
        }
    }
    match d.tensor("no such tensor") {
        Ok(None) => Ok(()),
        other => Err(format!(
            "a missing tensor gave {:?}",
            other.map(|t| t.map(|t| t.shape))
        )),
    }
}

#[test]
fn fuzz_safetensors() {
    let bases = st_bases();
    let donors: Vec<Vec<u8>> = bases.iter().map(|b| b.bytes.clone()).collect();
    let dir = work_dir("safetensors");
    let path = dir.join("case.safetensors");
    let wd = Watchdog::new(&path, Duration::from_secs(30));
    FUZZ.run("safetensors", input(bases.len(), true), |i| {
        let bytes = materialize(&i, &bases, &donors);
        run_case("safetensors", &wd, &path, &bytes, || {
            check_safetensors(&path)
        })
    });
}

/// A sharded directory whose `model.safetensors.index.json` is fuzzed (the shards stay valid).
#[test]
fn fuzz_safetensors_index() {
    let src = fixture("tiny-llama-sharded");
    let dir = work_dir("safetensors-index");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "safetensors") {
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
    }
    let index = std::fs::read(src.join("model.safetensors.index.json")).unwrap();
    let bases = vec![Base {
        bytes: index,
        fields: Vec::new(),
    }];
    let donors = vec![
        br#"{"weight_map": {"a": "", "b": "/", "c": "..", "d": "model.safetensors.index.json", "e": "../../etc/passwd", "f": 1}}"#.to_vec(),
        br#"{"metadata": {"total_size": 1e400}, "weight_map": []}"#.to_vec(),
    ];
    let path = dir.join("model.safetensors.index.json");
    let wd = Watchdog::new(&path, Duration::from_secs(30));
    FUZZ.run("safetensors-index", input(1, false), |i| {
        let bytes = materialize(&i, &bases, &donors);
        run_case("safetensors-index", &wd, &path, &bytes, || {
            match SafetensorsDir::open(&dir) {
                Err(e) => {
                    // Errors name the index or the shard they are about.
                    let m = e.to_string();
                    if m.contains(&dir.display().to_string()) {
                        Ok(())
                    } else {
                        Err(format!("error names no file: {m}"))
                    }
                }
                Ok(d) => {
                    stat("safetensors-index", "open ok");
                    check_safetensors_dir(&d, &dir)
                }
            }
        })
    });
}

// ---------------------------------------------------------------------------------------------------------
// Regression tests: the crashes the fuzzer found, minimized, and the error-naming requirements.

fn fuzz_fixture(name: &str) -> PathBuf {
    fixture(&format!("fuzz/{name}"))
}

/// Every saved input under `tests/fixtures/fuzz/` passes the fuzz properties.
#[test]
fn regression_inputs_pass() {
    for f in std::fs::read_dir(fixture("fuzz")).unwrap() {
        let path = f.unwrap().path();
        let r = match path.extension().and_then(|e| e.to_str()) {
            Some("gguf") => check_gguf(&path),
            Some("safetensors") => check_safetensors(&path),
            _ => continue,
        };
        if let Err(e) = r {
            panic!("{}: {e}", path.display());
        }
    }
}

/// Crash found by `fuzz_gguf`: `token_embd.weight` stored with no dims (a 0-d tensor of one element), so
/// `GgufWeights::open` indexed an empty shape (`shape()[0]`) and panicked. Now a config error naming the
/// tensor.
#[test]
fn regression_gguf_embedding_without_dims() {
    let path = fuzz_fixture("gguf-embedding-no-dims.gguf");
    let f = GgufFile::open(&path).unwrap();
    assert!(f.tensor_info("token_embd.weight").unwrap().dims.is_empty());
    let e = GgufWeights::open(&path).err().expect("opened");
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string())
            && msg.contains("`token_embd.weight` has shape []"),
        "{msg}"
    );
}

/// The same hole one step later (seen reading the code while fixing the first, and fixed with it; the
/// structural edits generate such files): a Q or K projection whose shape is not
/// `[heads × head_dim, hidden]` reached the Q/K row permutation, which indexed an empty shape (panic) or
/// silently scrambled a 3-d one. Now `Error::Shape` naming the GGUF tensor.
#[test]
fn regression_gguf_q_proj_shape_is_checked_before_permuting() {
    let dir = work_dir("regression-q-proj");
    let base = GgufModel::parse(&gguf_tiny_model(), &dir);
    let q = base
        .tensors
        .iter()
        .position(|t| t.0 == "blk.0.attn_q.weight")
        .unwrap();
    // No dims (one element); and [2, 4, 8]: the same 64 elements as [8, 8], in three dims.
    for (i, dims) in [vec![], vec![8u64, 4, 2]].into_iter().enumerate() {
        let mut m = base.clone();
        m.tensors[q].1 = dims;
        let path = dir.join(format!("q{i}.gguf"));
        std::fs::write(&path, m.emit()).unwrap();
        let w = GgufWeights::open(&path).unwrap();
        let e = w
            .tensor("model.layers.0.self_attn.q_proj.weight")
            .expect_err("read");
        assert!(
            matches!(&e, Error::Shape { name, expected, .. } if name == "blk.0.attn_q.weight" && expected == &[8, 8]),
            "{e}"
        );
        check_gguf(&path).unwrap();
    }
}

/// Satisfies the issue's requirement: a tensor whose data offsets point past the end of the file is named
/// in the error (the safetensors crate only says "incomplete metadata, file not fully covered").
#[test]
fn safetensors_offsets_past_the_end_name_the_tensor() {
    let dir = work_dir("st-past-end");
    let path = dir.join("model.safetensors");
    let valid = st_file(
        &[
            ("a.weight", "F32", vec![2], noise(8, 1)),
            ("b.weight", "F16", vec![2, 2], noise(8, 2)),
            ("c.weight", "BF16", vec![3], noise(6, 3)),
        ],
        false,
    );
    let expect = |bytes: &[u8], name: &str, needle: &str| {
        std::fs::write(&path, bytes).unwrap();
        let e = SafetensorsDir::open_file(&path).err().expect("opened");
        let msg = e.to_string();
        assert!(
            matches!(&e, Error::Corrupt { path: p, format: "safetensors", .. } if p == &path),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("tensor `{name}`")) && msg.contains(needle),
            "{msg}"
        );
        // The directory form gives the same error.
        let e = SafetensorsDir::open(&dir).err().expect("opened");
        assert!(e.to_string().contains(&format!("tensor `{name}`")), "{e}");
    };
    // A truncated file (e.g. an interrupted download): the last tensor runs past the end.
    expect(
        &valid[..valid.len() - 2],
        "c.weight",
        "data offsets [16, 22] point past the end of the file (its data section after the header is 20 bytes",
    );
    // The header claims more data than there is, shape and size consistent.
    let edit = |name: &str, shape: &[usize], offsets: [usize; 2]| {
        let n = u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
        let mut h: serde_json::Value = serde_json::from_slice(&valid[8..8 + n]).unwrap();
        h[name]["shape"] = serde_json::json!(shape);
        h[name]["data_offsets"] = serde_json::json!(offsets);
        let h = serde_json::to_vec(&h).unwrap();
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend(h);
        b.extend(&valid[8 + n..]);
        b
    };
    expect(
        &edit("c.weight", &[500], [16, 1016]),
        "c.weight",
        "data offsets [16, 1016] point past the end",
    );
    // A tensor in the middle pointing past the end.
    expect(
        &edit("a.weight", &[2], [1 << 40, (1 << 40) + 8]),
        "a.weight",
        "point past the end",
    );
    // The other per-tensor problems are named too: a size that does not match the shape...
    expect(
        &edit("b.weight", &[3, 2], [8, 16]),
        "b.weight",
        "shape [3, 2] of F16 needs 12 bytes but data offsets [8, 16] hold 8",
    );
    // ... and a gap or overlap.
    expect(
        &edit("b.weight", &[2, 2], [6, 14]),
        "b.weight",
        "data starts at byte 6 of the data section, but the tensor before it ends at 8",
    );
    // Bytes after the last tensor name it.
    let mut long = valid.clone();
    long.extend([0u8; 4]);
    expect(
        &long,
        "c.weight",
        "(the last) ends at byte 22 of the data section, but the file has 26 bytes",
    );
    // Reading a tensor still works on the valid file.
    std::fs::write(&path, &valid).unwrap();
    let d = SafetensorsDir::open_file(&path).unwrap();
    assert_eq!(d.tensor("c.weight").unwrap().unwrap().shape, [3]);
}

/// Found while writing the memory check (small fuzz inputs cannot show it): an array's count was checked
/// against the bytes left, then reserved in full, 32 bytes of `GgufValue` per claimed 1-byte element, before
/// any element parsed. A corrupt 1 MiB file reserved 32 MiB (a corrupt multi-GB file: more than the machine
/// has, and the process aborted). Now at most 4096 entries are reserved up front.
#[test]
fn regression_gguf_array_count_is_not_trusted_for_allocation() {
    let dir = work_dir("regression-array-count");
    let path = dir.join("a.gguf");
    let n = 1usize << 20;
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata entries
    b.extend(1u64.to_le_bytes());
    b.extend(b"k");
    b.extend(9u32.to_le_bytes()); // array
    b.extend(7u32.to_le_bytes()); // of bool
    b.extend((n as u64).to_le_bytes());
    let mut elems = vec![0u8; n];
    elems[1] = 2; // not a bool: parsing stops at element 1
    b.extend(elems);
    std::fs::write(&path, &b).unwrap();
    let (r, peak) = meter::peak(|| GgufFile::open(&path));
    let msg = r.expect_err("opened").to_string();
    assert!(
        msg.contains("metadata entry 0 (`k`): array element 1: bool value 2"),
        "{msg}"
    );
    assert!(
        peak < 256 << 10,
        "held {peak} bytes for a {}-byte file",
        b.len()
    );
}

/// Found by `fuzz_safetensors_index` (a 1M-case campaign): a `weight_map` naming the shard `"/"` was joined
/// onto the model directory (giving `/`), opened and mapped, and the error was `/: No such device`, naming
/// neither the index nor the tensor. Shards that are not file names inside the directory (absolute,
/// `..`, empty, not a string) are now `Error::Config` naming the index file and the tensor.
#[test]
fn regression_safetensors_index_shard_outside_the_directory() {
    let src = fixture("tiny-llama-sharded");
    let dir = work_dir("regression-index-shard");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let index_path = dir.join("model.safetensors.index.json");
    let index = std::fs::read_to_string(&index_path).unwrap();
    SafetensorsDir::open(&dir).unwrap();
    for bad in [
        "/",
        "",
        "..",
        "../tiny-llama/model.safetensors",
        "/etc/passwd",
        "a/../../b",
    ] {
        let text = index.replace(
            "\"lm_head.weight\": \"model-00003-of-00003.safetensors\"",
            &format!("\"lm_head.weight\": {}", serde_json::json!(bad)),
        );
        assert_ne!(text, index);
        std::fs::write(&index_path, text).unwrap();
        let e = SafetensorsDir::open(&dir).err().expect("opened");
        let msg = e.to_string();
        assert!(
            matches!(&e, Error::Config { path, .. } if path == &index_path)
                && msg.contains(&format!(
                    "`weight_map`: tensor `lm_head.weight` is in shard {}, which is not a file name \
                     inside the model directory",
                    serde_json::json!(bad)
                )),
            "{bad:?}: {msg}"
        );
    }
    let text = index.replace(
        "\"lm_head.weight\": \"model-00003-of-00003.safetensors\"",
        "\"lm_head.weight\": 3",
    );
    std::fs::write(&index_path, text).unwrap();
    let msg = SafetensorsDir::open(&dir)
        .err()
        .expect("opened")
        .to_string();
    assert!(
        msg.contains("tensor `lm_head.weight` is in shard 3"),
        "{msg}"
    );
}

/// Found by review next to the crashes above: `load_llama` reserved `num_hidden_layers` layers up front and
/// multiplied head counts by `head_dim` unchecked, both straight from GGUF metadata. A `block_count` of
/// 2^40 asked for petabytes (the allocation failure aborts the process); heads × head_dim wrapped in
/// release builds. Now the reservation is capped and the product checked.
#[test]
fn regression_gguf_model_sizes_from_metadata_are_not_trusted() {
    let dir = work_dir("regression-model-sizes");
    let base = GgufModel::parse(&gguf_tiny_model(), &dir);
    let set = |m: &mut GgufModel, key: &str, v: GgufValue| {
        m.metadata.iter_mut().find(|(k, _)| k == key).unwrap().1 = v;
    };
    // 2^40 layers: layer 0 loads, layer 1 is missing.
    let mut m = base.clone();
    set(&mut m, "llama.block_count", GgufValue::U64(1 << 40));
    let path = dir.join("layers.gguf");
    std::fs::write(&path, m.emit()).unwrap();
    let w = GgufWeights::open(&path).unwrap();
    let e = load_llama::<Cpu, _>(w.config(), &w, &CpuDevice::default()).expect_err("loaded");
    assert!(
        matches!(&e, Error::MissingTensor { name, .. } if name == "model.layers.1.self_attn.q_proj.weight"),
        "{e}"
    );
    // 2^33 heads of 2^31: the product overflows.
    let mut m = base;
    set(
        &mut m,
        "llama.attention.head_count",
        GgufValue::U64(1 << 33),
    );
    set(
        &mut m,
        "llama.attention.head_count_kv",
        GgufValue::U64(1 << 33),
    );
    m.metadata
        .push(("llama.attention.key_length".into(), GgufValue::U64(1 << 31)));
    let path = dir.join("heads.gguf");
    std::fs::write(&path, m.emit()).unwrap();
    let w = GgufWeights::open(&path).unwrap();
    let e = load_llama::<Cpu, _>(w.config(), &w, &CpuDevice::default()).expect_err("loaded");
    assert!(
        e.to_string()
            .contains("num_attention_heads (8589934592) × head_dim (2147483648) overflows"),
        "{e}"
    );
}
