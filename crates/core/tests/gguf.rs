//! GGUF reader/writer tests.
//!
//! * `fixture_*`: `tests/fixtures/gguf/quants.gguf`, written by gguf-py
//!   (`scripts/reference/make_gguf_fixtures.py`): dequantization must equal gguf-py's numpy reference bit for
//!   bit, the quantizers must equal gguf-py's byte for byte, and every metadata type must read back.
//! * `writer_*`: files written by `GgufWriter` read back by `GgufFile`.
//! * `corrupt_*`: truncated, bit-flipped and hand-crafted bad files must give `Err`, never panic.

use std::path::{Path, PathBuf};

use burnish_core::weights::gguf::{
    dequantize, f32_to_bf16_bits, f32_to_f16_bits, quantize_q8_0, GgmlType, GgufFile, GgufValue,
    GgufWriter,
};
use burnish_core::Error;

fn fixture() -> GgufFile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/quants.gguf");
    GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh directory under the target dir for one test.
fn tmp_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gguf-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic pseudo-random floats in roughly N(0, scale) (xorshift + sum of uniforms).
fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| ((0..4).map(|_| next()).sum::<f32>() - 2.0) * 1.7 * scale)
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Fixture written by gguf-py

#[test]
fn fixture_dequant_is_bit_exact_with_gguf_py() {
    let f = fixture();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 64);
    let mut covered = std::collections::BTreeSet::new();
    let mut checked = 0;
    for info in f.tensors() {
        let Some(want) = f.tensor_info(&format!("{}.expected", info.name)) else {
            continue;
        };
        assert_eq!(want.dtype, GgmlType::F32);
        assert_eq!(info.shape(), want.shape(), "{}", info.name);
        assert_eq!(info.dims.len(), 2);
        assert_eq!(
            info.shape(),
            vec![info.dims[1] as usize, info.dims[0] as usize]
        );
        let got = f.tensor_f32(&info.name).unwrap();
        let want = f.tensor_f32(&want.name).unwrap();
        assert_eq!(got.len(), info.n_elements());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{} ({}) element {i}: got {g}, gguf-py {w}",
                info.name,
                info.dtype
            );
        }
        covered.insert(info.dtype.to_string());
        checked += 1;
    }
    for t in [
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
        "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4",
    ] {
        assert!(covered.contains(t), "fixture has no {t} tensor");
    }
    assert!(checked >= 30, "{checked}");
}

#[test]
fn fixture_quantizers_match_gguf_py() {
    let f = fixture();
    let src = f.tensor_f32("q8_0.src").unwrap();
    assert_eq!(f.tensor_info("q8_0.src").unwrap().shape(), vec![4, 64]);
    assert_eq!(quantize_q8_0(&src), f.tensor_bytes("q8_0.ref").unwrap());
    let bf16: Vec<u8> = src
        .iter()
        .flat_map(|&x| f32_to_bf16_bits(x).to_le_bytes())
        .collect();
    assert_eq!(bf16, f.tensor_bytes("bf16.ref").unwrap());
    let f16: Vec<u8> = src
        .iter()
        .flat_map(|&x| f32_to_f16_bits(x).to_le_bytes())
        .collect();
    assert_eq!(f16, f.tensor_bytes("f16.ref").unwrap());
}

#[test]
fn fixture_metadata_of_every_type() {
    let f = fixture();
    let get = |k: &str| f.get(k).unwrap_or_else(|| panic!("missing {k}"));
    assert_eq!(f.architecture(), Some("test"));
    assert_eq!(get("general.alignment"), &GgufValue::U32(64));
    assert_eq!(get("test.u8"), &GgufValue::U8(200));
    assert_eq!(get("test.i8"), &GgufValue::I8(-100));
    assert_eq!(get("test.u16"), &GgufValue::U16(60000));
    assert_eq!(get("test.i16"), &GgufValue::I16(-30000));
    assert_eq!(get("test.u32"), &GgufValue::U32(4_000_000_000));
    assert_eq!(get("test.i32"), &GgufValue::I32(-2_000_000_000));
    assert_eq!(get("test.f32"), &GgufValue::F32(0.1));
    assert_eq!(get("test.bool_true"), &GgufValue::Bool(true));
    assert_eq!(get("test.bool_false").as_bool(), Some(false));
    assert_eq!(get("test.string").as_str(), Some("héllo wörld ✓"));
    assert_eq!(f.get_str("test.empty_string"), Some(""));
    assert_eq!(get("test.u64"), &GgufValue::U64((1 << 63) + 5));
    assert_eq!(get("test.i64"), &GgufValue::I64(-(1 << 62) - 3));
    assert_eq!(get("test.f64"), &GgufValue::F64(0.1));
    assert_eq!(
        get("test.array_u8"),
        &GgufValue::Array(vec![GgufValue::U8(0), GgufValue::U8(1), GgufValue::U8(255)])
    );
    assert_eq!(get("test.array_i32").as_i64_array(), Some(vec![1, -2, 3]));
    assert_eq!(
        get("test.array_f32").as_f32_array(),
        Some(vec![0.5, -1.25, 3.0e-8])
    );
    assert_eq!(
        get("test.array_u64"),
        &GgufValue::Array(vec![GgufValue::U64(0), GgufValue::U64(u64::MAX)])
    );
    assert_eq!(
        get("test.array_f64"),
        &GgufValue::Array(vec![GgufValue::F64(0.1), GgufValue::F64(-2.5)])
    );
    assert_eq!(
        get("test.array_bool"),
        &GgufValue::Array(vec![true.into(), false.into(), true.into()])
    );
    assert_eq!(
        get("test.array_str").as_string_array(),
        Some(vec!["a", "", "日本語", "<|im_start|>"])
    );
    let nested = get("test.array_nested").as_array().unwrap();
    let nested: Vec<Vec<i64>> = nested.iter().map(|a| a.as_i64_array().unwrap()).collect();
    assert_eq!(nested, vec![vec![1, 2], vec![3], vec![-4, 5, 6]]);

    // Accessor conversions.
    assert_eq!(get("test.u8").as_u64(), Some(200));
    assert_eq!(get("test.i8").as_u64(), None);
    assert_eq!(get("test.i8").as_i64(), Some(-100));
    assert_eq!(get("test.u64").as_i64(), None);
    assert_eq!(get("test.u32").as_f64(), Some(4e9));
    assert_eq!(get("test.f32").as_f64(), Some(0.1f32 as f64));
    assert_eq!(get("test.string").as_u64(), None);
    assert_eq!(get("test.array_str").as_str(), None);
    assert_eq!(get("test.array_i32").as_string_array(), None);
    assert!(f.get("test.nope").is_none());
    // Metadata keeps file order.
    let keys: Vec<&str> = f.metadata().iter().map(|(k, _)| k.as_str()).collect();
    let pos = |k: &str| keys.iter().position(|x| *x == k).unwrap();
    assert!(pos("test.u8") < pos("test.i8") && pos("test.i8") < pos("test.array_nested"));
}

// ---------------------------------------------------------------------------------------------------------
// Writer

#[test]
fn writer_round_trip() {
    let dir = tmp_dir("roundtrip");
    let path = dir.join("model.gguf");
    let (rows, cols) = (6, 96);
    let x = randn(rows * cols, 7, 0.8);
    let mut w = GgufWriter::new();
    let strings = vec!["<s>", "hello", "wörld", ""];
    w.add_metadata("general.architecture", "llama")
        .add_metadata("t.u8", 7u8)
        .add_metadata("t.i8", -7i8)
        .add_metadata("t.u16", 65535u16)
        .add_metadata("t.i16", i16::MIN)
        .add_metadata("t.u32", u32::MAX)
        .add_metadata("t.i32", i32::MIN)
        .add_metadata("t.f32", 1.0e-3f32)
        .add_metadata("t.bool", true)
        .add_metadata("t.string", "ünïcode ✓")
        .add_metadata("t.u64", u64::MAX)
        .add_metadata("t.i64", i64::MIN)
        .add_metadata("t.f64", std::f64::consts::PI)
        .add_metadata("t.strings", strings.clone())
        .add_metadata("t.floats", vec![0.5f32, -0.25])
        .add_metadata("t.empty", GgufValue::Array(vec![]))
        .add_metadata(
            "t.nested",
            GgufValue::Array(vec![vec![1i32, 2].into(), vec![3i32].into()]),
        )
        .add_metadata("t.replaced", 1u32)
        .add_metadata("t.replaced", 2u32);
    for (name, ty) in [
        ("f32", GgmlType::F32),
        ("f16", GgmlType::F16),
        ("bf16", GgmlType::BF16),
        ("q8_0", GgmlType::Q8_0),
    ] {
        w.add_tensor(name, &[rows, cols], &x, ty).unwrap();
    }
    w.add_tensor("vec", &[cols], &x[..cols], GgmlType::F32)
        .unwrap();
    w.add_tensor("cube", &[2, 3, 32], &x[..192], GgmlType::Q8_0)
        .unwrap();
    w.write(&path).unwrap();

    // Only the final file is left behind.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("model.gguf")]);

    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset() % 32, 0);
    assert_eq!(f.path(), path);
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.get("t.u8"), Some(&GgufValue::U8(7)));
    assert_eq!(f.get("t.i8"), Some(&GgufValue::I8(-7)));
    assert_eq!(f.get("t.u16"), Some(&GgufValue::U16(65535)));
    assert_eq!(f.get("t.i16"), Some(&GgufValue::I16(i16::MIN)));
    assert_eq!(f.get("t.u32"), Some(&GgufValue::U32(u32::MAX)));
    assert_eq!(f.get("t.i32"), Some(&GgufValue::I32(i32::MIN)));
    assert_eq!(f.get("t.f32"), Some(&GgufValue::F32(1.0e-3)));
    assert_eq!(f.get("t.bool"), Some(&GgufValue::Bool(true)));
    assert_eq!(f.get_str("t.string"), Some("ünïcode ✓"));
    assert_eq!(f.get_u64("t.u64"), Some(u64::MAX));
    assert_eq!(f.get("t.i64"), Some(&GgufValue::I64(i64::MIN)));
    assert_eq!(f.get_f64("t.f64"), Some(std::f64::consts::PI));
    assert_eq!(f.get("t.strings").unwrap().as_string_array(), Some(strings));
    assert_eq!(
        f.get("t.floats").unwrap().as_f32_array(),
        Some(vec![0.5, -0.25])
    );
    assert_eq!(f.get("t.empty"), Some(&GgufValue::Array(vec![])));
    assert_eq!(
        f.get("t.nested"),
        Some(&GgufValue::Array(vec![
            GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(2)]),
            GgufValue::Array(vec![GgufValue::I32(3)]),
        ]))
    );
    assert_eq!(f.get("t.replaced"), Some(&GgufValue::U32(2)));
    assert_eq!(f.metadata().len(), 18);

    assert_eq!(f.tensors().len(), 6);
    for info in f.tensors() {
        assert_eq!(info.offset % 32, 0);
    }
    let info = f.tensor_info("q8_0").unwrap();
    assert_eq!(info.dims, vec![cols as u64, rows as u64]);
    assert_eq!(info.shape(), vec![rows, cols]);
    assert_eq!(info.dtype, GgmlType::Q8_0);
    assert_eq!(f.tensor_info("cube").unwrap().dims, vec![32, 3, 2]);
    assert_eq!(f.tensor_info("cube").unwrap().shape(), vec![2, 3, 32]);

    assert_eq!(f.tensor_f32("f32").unwrap(), x);
    assert_eq!(f.tensor_f32("vec").unwrap(), &x[..cols]);
    let f16: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    assert_eq!(f.tensor_f32("f16").unwrap(), f16);
    let bf16: Vec<f32> = x
        .iter()
        .map(|&v| f32::from_bits((f32_to_bf16_bits(v) as u32) << 16))
        .collect();
    assert_eq!(f.tensor_f32("bf16").unwrap(), bf16);
    for (a, b) in x.iter().zip(&bf16) {
        assert!((a - b).abs() <= a.abs() / 256.0);
    }

    let q = f.tensor_f32("q8_0").unwrap();
    assert_eq!(f.tensor_bytes("q8_0").unwrap(), quantize_q8_0(&x));
    assert_eq!(
        q,
        dequantize(GgmlType::Q8_0, &quantize_q8_0(&x), x.len()).unwrap()
    );
    for (block, qblock) in x.chunks(32).zip(q.chunks(32)) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in block.iter().zip(qblock) {
            // Half a step of d = amax/127, plus the f16 rounding of d (relative 2^-11) times |q| <= 127.
            assert!(
                (a - b).abs() <= amax / 254.0 + amax / 2048.0 + 1e-7,
                "{a} vs {b}"
            );
        }
    }
    assert_eq!(f.tensor_f32("cube").unwrap().len(), 192);
    let mut buf = vec![0f32; rows * cols];
    f.tensor_f32_into("q8_0", &mut buf).unwrap();
    assert_eq!(buf, q);
    assert!(matches!(
        f.tensor_f32_into("q8_0", &mut buf[1..]),
        Err(Error::Shape { .. })
    ));

    // Keep a copy for `make_gguf_fixtures.py --check` (not part of CI).
    let _ = std::fs::copy(
        &path,
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("burnish-written.gguf"),
    );

    // Overwriting an existing file works (rename over it).
    let mut w2 = GgufWriter::new();
    w2.add_metadata("general.architecture", "other");
    w2.write(&path).unwrap();
    let f2 = GgufFile::open(&path).unwrap();
    assert_eq!(f2.architecture(), Some("other"));
    assert!(f2.tensors().is_empty());
    // The old map stays valid (the old inode lives on).
    assert_eq!(f.tensor_f32("vec").unwrap(), &x[..cols]);
}

#[test]
fn writer_custom_alignment_and_raw_bytes() {
    let dir = tmp_dir("align");
    let src = fixture();
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", 256u32);
    // Copy quantized tensors byte for byte.
    for name in ["q4_k", "q6_k", "q4_0", "iq4_xs"] {
        let info = src.tensor_info(name).unwrap();
        w.add_tensor_bytes(
            name,
            &info.shape(),
            info.dtype,
            src.tensor_bytes(name).unwrap().to_vec(),
        )
        .unwrap();
    }
    w.add_tensor("small", &[3], &[1.0, 2.0, 3.0], GgmlType::F32)
        .unwrap();
    let path = dir.join("aligned.gguf");
    w.write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.alignment(), 256);
    assert_eq!(f.data_offset() % 256, 0);
    for name in ["q4_k", "q6_k", "q4_0", "iq4_xs"] {
        assert_eq!(f.tensor_info(name).unwrap().offset % 256, 0);
        assert_eq!(
            f.tensor_f32(name).unwrap(),
            src.tensor_f32(&format!("{name}.expected")).unwrap()
        );
    }
    assert_eq!(f.tensor_f32("small").unwrap(), vec![1.0, 2.0, 3.0]);
}

#[test]
fn writer_rejects_bad_input() {
    let mut w = GgufWriter::new();
    assert!(w
        .add_tensor("a", &[2, 3], &[0.0; 5], GgmlType::F32)
        .is_err());
    assert!(w
        .add_tensor("a", &[2, 30], &[0.0; 60], GgmlType::Q8_0)
        .is_err());
    let e = w
        .add_tensor("a", &[256], &[0.0; 256], GgmlType::Q4_K)
        .unwrap_err();
    assert!(matches!(e, Error::DType { .. }), "{e}");
    assert!(w
        .add_tensor("a", &[1, 1, 1, 1, 1], &[0.0], GgmlType::F32)
        .is_err());
    w.add_tensor("a", &[2, 32], &[0.0; 64], GgmlType::Q8_0)
        .unwrap();
    assert!(
        w.add_tensor("a", &[1], &[0.0], GgmlType::F32).is_err(),
        "duplicate"
    );
    assert!(w
        .add_tensor_bytes("b", &[256], GgmlType::Q4_K, vec![0; 143])
        .is_err());
    assert!(w
        .add_tensor_bytes("b", &[32], GgmlType::Q4_K, vec![0; 18])
        .is_err());

    let dir = tmp_dir("bad-writer");
    // Mixed arrays cannot be written.
    let mut w = GgufWriter::new();
    w.add_metadata(
        "mixed",
        GgufValue::Array(vec![GgufValue::U32(1), GgufValue::String("x".into())]),
    );
    let e = w.write(dir.join("mixed.gguf")).unwrap_err();
    assert!(e.to_string().contains("mixed"), "{e}");
    assert!(!dir.join("mixed.gguf").exists());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "temp file left behind"
    );
    // general.alignment must be a U32 power of two.
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", 48u32);
    assert!(w.write(dir.join("a.gguf")).is_err());
    // A directory that does not exist.
    assert!(GgufWriter::new()
        .write(dir.join("no/such/dir/x.gguf"))
        .is_err());
}

// ---------------------------------------------------------------------------------------------------------
// Corrupt files

/// A small valid file: metadata of several types and tensors of three types.
fn small_file() -> Vec<u8> {
    let x = randn(2 * 64, 3, 1.0);
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama")
        .add_metadata("llama.block_count", 2u32)
        .add_metadata("f", 0.5f32)
        .add_metadata("tokens", vec!["a", "bc", "déf"])
        .add_metadata(
            "nested",
            GgufValue::Array(vec![vec![1u8].into(), vec![2u8, 3].into()]),
        )
        .add_metadata("flag", false);
    w.add_tensor("token_embd.weight", &[2, 64], &x, GgmlType::Q8_0)
        .unwrap();
    w.add_tensor("norm.weight", &[64], &x[..64], GgmlType::F32)
        .unwrap();
    w.add_tensor("h.weight", &[2, 16], &x[..32], GgmlType::F16)
        .unwrap();
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).unwrap();
    bytes
}

/// Opens `bytes` (written to `path`), and if it opens, reads every tensor; returns whether it opened.
/// A panic anywhere fails the test with the case named.
fn open_bytes(path: &Path, bytes: &[u8], case: &str) -> Result<GgufFile, Error> {
    std::fs::write(path, bytes).unwrap();
    let r = std::panic::catch_unwind(|| {
        let r = GgufFile::open(path);
        if let Ok(f) = &r {
            for t in f.tensors() {
                let _ = f.tensor_f32(&t.name);
                let _ = f.tensor_bytes(&t.name);
            }
        }
        r
    });
    match r {
        Ok(r) => r,
        Err(_) => panic!("GgufFile::open panicked on {case}"),
    }
}

fn assert_corrupt(r: Result<GgufFile, Error>, path: &Path, needle: &str, case: &str) {
    match r {
        Ok(_) => panic!("{case}: opened"),
        Err(Error::Corrupt {
            path: p,
            format,
            msg,
        }) => {
            assert_eq!(p, path, "{case}");
            assert_eq!(format, "GGUF");
            assert!(
                msg.to_lowercase().contains(&needle.to_lowercase()),
                "{case}: message {msg:?} does not mention {needle:?}"
            );
        }
        Err(e) => panic!("{case}: not Error::Corrupt: {e}"),
    }
}

#[test]
fn corrupt_every_truncation_is_an_error() {
    let dir = tmp_dir("truncate");
    let path = dir.join("t.gguf");
    let bytes = small_file();
    let full = open_bytes(&path, &bytes, "full file").unwrap();
    // The writer pads after the last tensor; cutting only that padding leaves a valid file.
    let needed = full
        .tensors()
        .iter()
        .map(|t| full.data_offset() + t.offset + t.n_bytes().unwrap() as u64)
        .max()
        .unwrap() as usize;
    drop(full);
    assert!(needed <= bytes.len() && bytes.len() < 2000);
    for len in 0..bytes.len() {
        let r = open_bytes(&path, &bytes[..len], &format!("truncation to {len} bytes"));
        if len < needed {
            let e = r
                .err()
                .unwrap_or_else(|| panic!("truncated to {len}: opened"));
            assert!(
                matches!(&e, Error::Corrupt { path: p, .. } if p == &path),
                "truncated to {len}: {e}"
            );
        } else {
            assert!(r.is_ok(), "cutting padding only ({len})");
        }
    }
}

#[test]
fn corrupt_byte_flips_never_panic() {
    let dir = tmp_dir("flip");
    let path = dir.join("f.gguf");
    let bytes = small_file();
    let header_len = open_bytes(&path, &bytes, "valid").unwrap().data_offset() as usize;
    let mut errors = 0;
    for i in 0..header_len {
        for flip in [0xFFu8, 0x00, 0x01, 0x80, 0x7F] {
            let mut b = bytes.clone();
            b[i] = if flip == 0xFF || flip == 0x00 {
                flip
            } else {
                b[i] ^ flip
            };
            if b == bytes {
                continue;
            }
            if open_bytes(&path, &b, &format!("byte {i} set via {flip:#x}")).is_err() {
                errors += 1;
            }
        }
    }
    assert!(errors > header_len, "{errors}");
}

/// A hand-assembled GGUF file.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s);
        self
    }
    /// A `key: u32` entry.
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key.as_bytes()).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to 32 and appends `n` data bytes.
    fn data(&mut self, n: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self.0.extend((0..n).map(|i| (i % 7) as u8));
        self
    }
}

#[test]
fn corrupt_hand_crafted_files() {
    let dir = tmp_dir("crafted");
    let p = dir.join("c.gguf");
    let p = p.as_path();
    let check = |raw: &Raw, needle: &str, case: &str| {
        assert_corrupt(open_bytes(p, &raw.0, case), p, needle, case)
    };

    // A valid baseline: one F32 tensor of 8 elements.
    let mut ok = Raw::header(3, 1, 1);
    ok.kv_u32("a", 1).tensor("t", &[8], 0, 0).data(32);
    let f = open_bytes(p, &ok.0, "baseline").unwrap();
    assert_eq!(f.tensor_f32("t").unwrap().len(), 8);
    // Version 2 has the same layout.
    let mut v2 = Raw::header(2, 1, 1);
    v2.kv_u32("a", 1).tensor("t", &[8], 0, 0).data(32);
    assert_eq!(open_bytes(p, &v2.0, "v2").unwrap().version(), 2);

    let mut bad_magic = Raw(b"GGML".to_vec());
    bad_magic.u32(3).u64(0).u64(0);
    check(&bad_magic, "not a GGUF file", "bad magic");
    check(&Raw::header(1, 0, 0), "version 1", "version 1");
    check(&Raw::header(4, 0, 0), "version 4", "version 4");
    check(
        &Raw::header(3u32.swap_bytes(), 0, 0),
        "big-endian",
        "big-endian",
    );
    assert_corrupt(open_bytes(p, b"GGUF", "4 bytes"), p, "24-byte", "4 bytes");
    assert_corrupt(open_bytes(p, b"", "empty"), p, "24-byte", "empty");

    check(&Raw::header(3, 1 << 60, 0), "tensors", "2^60 tensors");
    check(&Raw::header(3, u64::MAX, 0), "tensors", "u64::MAX tensors");
    check(&Raw::header(3, 0, 1 << 60), "metadata entries", "2^60 kv");

    let mut r = Raw::header(3, 0, 1);
    r.u64(1 << 60).data(32);
    check(&r, "string length", "huge key length");
    let mut r = Raw::header(3, 0, 1);
    r.u64(u64::MAX).data(32);
    check(&r, "string length", "u64::MAX key length");

    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(13).u32(0);
    check(&r, "unknown value type id 13", "value type 13");
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(u32::MAX).u32(0);
    check(&r, "unknown value type", "value type u32::MAX");

    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(9).u32(0).u64(1 << 60).u64(0);
    check(&r, "array of", "array of 2^60 u8");
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(9).u32(8).u64(u64::MAX / 4).u64(0);
    check(&r, "array of", "array count overflow");
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(9).u32(77).u64(1).u64(0);
    check(&r, "element type id 77", "array of unknown type");
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(9).u32(8).u64(2).str(b"ok").u64(1 << 62);
    check(&r, "array element 1", "bad string inside array");
    // Deeply nested arrays (each level an array of one array).
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(9);
    for _ in 0..1000 {
        r.u32(9).u64(1);
    }
    r.u32(0).u64(0);
    check(&r, "nested deeper", "deep nesting");

    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(7).u8(2);
    check(&r, "bool", "bool value 2");

    let mut r = Raw::header(3, 0, 1);
    r.str(b"k\xff\xfe").u32(4).u32(0);
    check(&r, "UTF-8", "non-UTF-8 key");
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(8).str(b"\xc3\x28");
    check(&r, "UTF-8", "non-UTF-8 string value");
    let mut r = Raw::header(3, 0, 1);
    r.str(b"k").u32(9).u32(8).u64(2).str(b"fine").str(b"\x80");
    check(&r, "UTF-8", "non-UTF-8 in string array");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t\u{0}", &[8], 0, 0).data(32);
    r.0[24 + 8 + 1] = 0xC0; // the name's second byte
    check(&r, "UTF-8", "non-UTF-8 tensor name");

    let mut r = Raw::header(3, 0, 2);
    r.kv_u32("a", 1).kv_u32("a", 2);
    check(&r, "duplicate metadata key `a`", "duplicate key");
    let mut r = Raw::header(3, 2, 0);
    r.tensor("t", &[8], 0, 0).tensor("t", &[8], 0, 32).data(64);
    check(&r, "duplicate tensor name `t`", "duplicate tensor");

    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("general.alignment", 33);
    check(&r, "general.alignment", "alignment 33");
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("general.alignment", 0);
    check(&r, "general.alignment", "alignment 0");
    let mut r = Raw::header(3, 0, 1);
    r.str(b"general.alignment").u32(8).str(b"32");
    check(&r, "general.alignment", "alignment as a string");

    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[8, 1, 1, 1, 1], 0, 0).data(32);
    check(&r, "5 dimensions", "5 dims");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[1 << 40, 1 << 40], 0, 0).data(32);
    check(&r, "element count overflows", "dims overflow");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[u64::MAX], 0, 0).data(32);
    check(&r, "negative", "dim u64::MAX");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[1 << 60], 0, 0).data(32);
    check(&r, "past the end", "huge tensor");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[8], 0, 32).data(32);
    check(&r, "past the end", "offset past the end");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[8], 0, u64::MAX - 31).data(32);
    check(&r, "overflows", "offset overflow");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[8], 0, 4).data(64);
    check(&r, "not a multiple of the alignment", "unaligned offset");
    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[16], 0, 0).tensor("b", &[8], 0, 32).data(64);
    check(&r, "overlap", "overlapping tensors");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("q", &[48], 8, 0).data(64);
    check(&r, "block size 32", "Q8_0 row of 48");
    let mut r = Raw::header(3, 1, 0);
    r.tensor("q", &[64], 8, 0).data(67);
    check(&r, "past the end", "Q8_0 one byte short");

    // Unknown type ids open and list; reading them is a typed error naming the tensor.
    let mut r = Raw::header(3, 3, 0);
    r.tensor("mystery", &[8, 2], 99, 0)
        .tensor("retired", &[8], 4, 0)
        .tensor("iq2", &[256], 16, 0)
        .data(96);
    let f = open_bytes(p, &r.0, "unknown types").unwrap();
    assert_eq!(f.tensors().len(), 3);
    let info = f.tensor_info("mystery").unwrap();
    assert_eq!(info.dtype, GgmlType::Unknown(99));
    assert_eq!(info.shape(), vec![2, 8]);
    match f.tensor_f32("mystery") {
        Err(Error::DType { name, dtype, path }) => {
            assert_eq!(name, "mystery");
            assert!(dtype.contains("99"), "{dtype}");
            assert_eq!(path, p);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        f.tensor_bytes("retired"),
        Err(Error::DType { .. })
    ));
    // IQ2_XXS is known (its byte range is validated) but not dequantized.
    assert_eq!(f.tensor_bytes("iq2").unwrap().len(), 66);
    match f.tensor_f32("iq2") {
        Err(Error::DType { dtype, .. }) => assert_eq!(dtype, "IQ2_XXS"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        f.tensor_f32("absent"),
        Err(Error::MissingTensor { .. })
    ));
    assert!(matches!(
        f.tensor_bytes("absent"),
        Err(Error::MissingTensor { .. })
    ));

    // A file that does not exist is NotFound, not Corrupt.
    assert!(matches!(
        GgufFile::open(dir.join("missing.gguf")),
        Err(Error::NotFound { .. })
    ));
}

// ---------------------------------------------------------------------------------------------------------
// Speed (not in CI): cargo test --release -p burnish-core --test gguf -- --ignored --nocapture

#[test]
#[ignore]
fn dequant_speed() {
    let n: usize = 135 * 1024 * 1024 / 256 * 256;
    let mut seed = 1u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        let (bs, ts) = ty.block_layout().unwrap();
        let mut bytes: Vec<u8> = (0..n / bs * ts).map(|_| rnd() as u8).collect();
        if bs > 1 {
            // Finite f16 scales wherever they are.
            for b in bytes.chunks_exact_mut(ts) {
                for v in b.iter_mut().step_by(2) {
                    *v &= 0x3F;
                }
                for v in b.iter_mut().skip(1).step_by(2) {
                    *v &= 0x3B;
                }
            }
        }
        let t = std::time::Instant::now();
        let out = dequantize(ty, &bytes, n).unwrap();
        let s = t.elapsed().as_secs_f64();
        std::hint::black_box(&out);
        let mut out2 = out;
        let t2 = std::time::Instant::now();
        burnish_core::weights::gguf::dequantize_into(ty, &bytes, &mut out2).unwrap();
        let s2 = t2.elapsed().as_secs_f64();
        std::hint::black_box(&out2);
        println!("   into existing buffer: {:6.1} ms", s2 * 1e3);
        println!(
            "{ty:5}: {n} elements in {:6.1} ms: {:5.2} GB of f32 out/s, {:5.2} GB in/s",
            s * 1e3,
            (n * 4) as f64 / s / 1e9,
            bytes.len() as f64 / s / 1e9
        );
    }
}
