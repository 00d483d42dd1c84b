//! Fuzzed readers (issue #23): property-based fuzzing of the dataset readers (`burnish_data::read::open`:
//! JSON Lines, JSON arrays, CSV, TSV and Parquet, plain or gzipped) with mutated valid files — bit flips,
//! JSON/CSV metacharacters and invalid UTF-8 inserted, truncation, deleted/duplicated/spliced ranges, the
//! wrong extension for the content, corrupted gzip streams — and fully random bytes. Records that read are
//! converted with `schema::convert` too.
//!
//! Every property: `open` and each record give `Ok` or a typed `Err` naming the file; reading never panics,
//! never yields more records than the (decompressed) input has bytes, never holds more than a small
//! multiple of the input's size in memory, and never hangs (a watchdog aborts with the input's path after
//! 30 s).
//!
//! * `BURNISH_FUZZ_CASES` — cases (default: the CI size below).
//! * `BURNISH_FUZZ_SEED` — the RNG seed (default fixed, so CI is deterministic; `random` for a fresh one).
//!
//! A failing input is copied to `<target tmp>/fuzz-failures/` and proptest's shrunk case is saved in
//! `tests/fuzz_readers.proptest-regressions`. Each crash found is also an explicit regression test at the end
//! of this file. docs/reliability.md ("Fuzzed readers") has the campaign numbers.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use burnish_data::read::{open, Format};
use burnish_data::schema::{convert, Columns, Schema};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

#[path = "../../core/tests/fuzz_harness/mod.rs"]
mod harness;
use harness::{meter, panic_message, problem, stat, work_dir, Fuzz, Watchdog};

/// This file's fuzzing: a fixed default seed, so CI runs the same cases every time.
const FUZZ: Fuzz = Fuzz {
    seed: 0x23_DA7A,
    source_file: file!(),
};

/// The reader turns the `parquet` crate's panics into errors (`catch_unwind`), but the panic hook still
/// runs first: printing each one (and, with `RUST_BACKTRACE` set, symbolizing a backtrace, tens of MB that
/// the memory check would count) is noise, so this process's hook skips panics raised inside that crate.
fn quiet_parquet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info
                .location()
                .is_some_and(|l| l.file().contains("/parquet-"))
            {
                default(info)
            }
        }));
    });
}

fn save_failure(target: &str, name: &str, bytes: &[u8]) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{target}-{:016x}-{name}", h.finish()));
    std::fs::write(&p, bytes).unwrap();
    p
}

// ---------------------------------------------------------------------------------------------------------
// Inputs

/// Bytes that matter to the JSON, CSV and gzip parsers.
const TOKENS: [&[u8]; 26] = [
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\n",
    b"\r\n",
    b"\r",
    b"\t",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xc3",
    b"\0",
    b"\\u0000",
    b"\"\\ud800\"",
    b"null",
    b"1e999999",
    b"-0",
    b"18446744073709551616",
    b"{\"messages\": []}",
    b"[{\"role\": 7, \"content\": {}}]",
    b"\x1f\x8b",
    b"\"\"\"",
];

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
    Token {
        at: u32,
        token: u8,
    },
    /// A run of one token (deep nesting, long lines).
    Repeat {
        at: u32,
        token: u8,
        times: u16,
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
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => (any::<u32>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        1 => (any::<u32>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        5 => (any::<u32>(), any::<u8>()).prop_map(|(at, token)| Mutation::Token { at, token }),
        1 => (any::<u32>(), any::<u8>(), 0u16..600)
            .prop_map(|(at, token, times)| Mutation::Repeat { at, token, times }),
        1 => any::<u32>().prop_map(|at| Mutation::Truncate { at }),
        2 => (any::<u32>(), 0u16..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => (any::<u32>(), 0u16..128, any::<u32>())
            .prop_map(|(from, len, to)| Mutation::Duplicate { from, len, to }),
        2 => (any::<u8>(), any::<u32>(), 0u16..256, any::<u32>(), any::<bool>()).prop_map(
            |(donor, from, len, to, overwrite)| Mutation::Splice { donor, from, len, to, overwrite }
        ),
        1 => (any::<u32>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

fn at(pos: u32, len: usize) -> usize {
    pos as usize % (len + 1)
}

fn apply(b: &mut Vec<u8>, m: &Mutation, donors: &[Vec<u8>]) {
    let len = b.len();
    match m {
        Mutation::FlipBit { at: p, bit } if len > 0 => b[*p as usize % len] ^= 1 << bit,
        Mutation::SetByte { at: p, byte } if len > 0 => b[*p as usize % len] = *byte,
        Mutation::Token { at: p, token } => {
            let t = at(*p, len);
            b.splice(t..t, TOKENS[*token as usize % TOKENS.len()].iter().copied());
        }
        Mutation::Repeat {
            at: p,
            token,
            times,
        } => {
            let t = at(*p, len);
            let tok = TOKENS[*token as usize % TOKENS.len()];
            let run: Vec<u8> = tok
                .iter()
                .copied()
                .cycle()
                .take(tok.len() * *times as usize)
                .collect();
            b.splice(t..t, run);
        }
        Mutation::Truncate { at: p } => b.truncate(at(*p, len)),
        Mutation::Delete { at: p, len: n } => {
            let s = at(*p, len);
            b.drain(s..(s + *n as usize).min(len));
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
        } => {
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
        _ => {}
    }
}

/// How the bytes are stored: plain, gzipped (then possibly the compressed stream mutated), or as several
/// gzip members.
#[derive(Clone, Debug)]
enum Gz {
    Plain,
    Gzip { post: Vec<Mutation> },
    Members { split: u32 },
}

const EXTS: [&str; 6] = ["jsonl", "json", "csv", "tsv", "parquet", "ndjson"];
const FORMATS: [Format; 5] = [
    Format::Jsonl,
    Format::Json,
    Format::Csv,
    Format::Tsv,
    Format::Parquet,
];

#[derive(Clone, Debug)]
struct Input {
    base: usize,
    edits: Vec<Mutation>,
    /// Another format's extension (`None`: the base's own).
    ext: Option<u8>,
    /// `format` given explicitly (overriding the extension).
    format: Option<u8>,
    gz: Gz,
    /// Random bytes instead of a mutated base.
    random: Option<Vec<u8>>,
}

fn input(n_bases: usize) -> impl Strategy<Value = Input> {
    let gz = prop_oneof![
        6 => Just(Gz::Plain),
        3 => proptest::collection::vec(mutation(), 0..3).prop_map(|post| Gz::Gzip { post }),
        1 => any::<u32>().prop_map(|split| Gz::Members { split }),
    ];
    (
        0..n_bases,
        proptest::collection::vec(mutation(), 0..6),
        proptest::option::weighted(0.15, any::<u8>()),
        proptest::option::weighted(0.1, any::<u8>()),
        gz,
        proptest::option::weighted(0.05, proptest::collection::vec(any::<u8>(), 0..512)),
    )
        .prop_map(|(base, edits, ext, format, gz, random)| Input {
            base,
            edits,
            ext,
            format,
            gz,
            random,
        })
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn gunzip_len(b: &[u8]) -> usize {
    let mut out = Vec::new();
    let _ = flate2::read::MultiGzDecoder::new(b).read_to_end(&mut out);
    out.len()
}

struct Base {
    name: &'static str,
    bytes: Vec<u8>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn bases() -> Vec<Base> {
    let mut v: Vec<Base> = [
        "sft-mixed.jsonl",
        "sft-bad.jsonl",
        "prefs.jsonl",
        "pairs-mix.jsonl",
        "refusal-mix.jsonl",
        "array.json",
        "bad.csv",
        "pairs.tsv",
        "messages.parquet",
        "flat-bad-row.parquet",
    ]
    .into_iter()
    .map(|name| Base {
        name,
        bytes: std::fs::read(fixture(name)).unwrap(),
    })
    .collect();
    v.push(Base {
        name: "quoted.csv",
        bytes: b"prompt,completion,weight\n\"a, \"\"b\"\"\",c,1\n\"multi\nline\",\"\",2\r\nx,y,\n"
            .to_vec(),
    });
    v.push(Base {
        name: "array-of-pairs.json",
        bytes: br#"  [{"prompt": "p", "chosen": "c", "rejected": "r"}, {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "rejected": "x"}]"#.to_vec(),
    });
    v
}

/// Reads the file at `path` to the end and checks every outcome.
fn check_read(path: &Path, format: Option<Format>, max_bytes: usize) -> Result<(), String> {
    let shown = path.display().to_string();
    let names_file = |e: &burnish_data::Error| {
        let m = e.to_string();
        if m.contains(&shown) {
            Ok(())
        } else {
            Err(format!("error does not name the file: {m}"))
        }
    };
    let kind = format.map_or("by extension".to_string(), |f| format!("as {f:?}"));
    let records = match open(path, format) {
        Err(e) => {
            stat("data", format!("open error ({kind})"));
            return names_file(&e);
        }
        Ok(r) => r,
    };
    let mut n = 0usize;
    for r in records {
        n += 1;
        if n > max_bytes + 2 {
            return Err(format!("more than {n} records from {max_bytes} bytes"));
        }
        match r {
            Ok(rec) => {
                stat("data", format!("record ({kind})"));
                if *rec.loc.path != *path {
                    return Err(format!("record located in {}", rec.loc));
                }
                for schema in [Schema::Auto, Schema::Messages, Schema::Preference] {
                    if let Err(e) = convert(&rec.value, schema, &Columns::default()) {
                        let _ = e.at(&rec.loc).to_string();
                    }
                }
            }
            Err(e) => {
                stat(
                    "data",
                    format!(
                        "{} ({kind})",
                        if e.is_record() {
                            "record error"
                        } else {
                            "fatal error"
                        }
                    ),
                );
                names_file(&e)?
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_data_readers() {
    quiet_parquet_panics();
    let bases = bases();
    let donors: Vec<Vec<u8>> = bases.iter().map(|b| b.bytes.clone()).collect();
    let dir = work_dir("data");
    let wd = Watchdog::new(&dir, Duration::from_secs(30));
    FUZZ.run("data", input(bases.len()), |i| {
        let base = &bases[i.base];
        let mut b = match &i.random {
            Some(r) => r.clone(),
            None => base.bytes.clone(),
        };
        for m in &i.edits {
            apply(&mut b, m, &donors);
        }
        let plain_len = b.len();
        let b = match &i.gz {
            Gz::Plain => b,
            Gz::Gzip { post } => {
                let mut z = gzip(&b);
                for m in post {
                    apply(&mut z, m, &donors);
                }
                z
            }
            Gz::Members { split } => {
                let s = at(*split, b.len());
                let mut z = gzip(&b[..s]);
                z.extend(gzip(&b[s..]));
                z
            }
        };
        let decompressed = if matches!(i.gz, Gz::Plain) {
            plain_len
        } else {
            gunzip_len(&b).max(plain_len)
        };
        let ext = match i.ext {
            Some(e) => EXTS[e as usize % EXTS.len()],
            None => base.name.rsplit_once('.').unwrap().1,
        };
        let gz = if matches!(i.gz, Gz::Plain) { "" } else { ".gz" };
        // Several names, so the path of a failing case says what it was.
        let name = format!("case.{ext}{gz}");
        let path = dir.join(&name);
        let format = i.format.map(|f| FORMATS[f as usize % FORMATS.len()]);
        std::fs::write(&path, &b).unwrap();
        let (r, peak) = wd.run(|| {
            meter::peak(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    check_read(&path, format, decompressed)
                }))
            })
        });
        let _ = std::fs::remove_file(&path);
        match problem(r, peak, decompressed.max(b.len())) {
            None => Ok(()),
            Some(msg) => {
                let saved = save_failure("data", &name, &b);
                Err(TestCaseError::fail(format!(
                    "data ({name}, format {format:?}): {msg} (input saved as {})",
                    saved.display()
                )))
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------------------
// Regression tests: the crashes the fuzzer found, minimized.

fn fuzz_fixture(name: &str) -> PathBuf {
    fixture(&format!("fuzz/{name}"))
}

/// Every saved input under `tests/fixtures/fuzz/` passes the fuzz properties (read by extension, and
/// as every format).
#[test]
fn regression_inputs_pass() {
    quiet_parquet_panics();
    for f in std::fs::read_dir(fixture("fuzz")).unwrap() {
        let path = f.unwrap().path();
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        for format in std::iter::once(None).chain(FORMATS.map(Some)) {
            let r = std::panic::catch_unwind(|| check_read(&path, format, len));
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("{} as {format:?}: {e}", path.display()),
                Err(p) => panic!(
                    "{} as {format:?}: panicked: {}",
                    path.display(),
                    panic_message(&*p)
                ),
            }
        }
    }
}

/// Crash found by `fuzz_data_readers`: one flipped bit (byte 594 of `messages.parquet`, `0x02` → `0x06`)
/// makes the `parquet` crate's RLE decoder slice past its buffer and panic (`bit_util.rs`: "range end index
/// 4 out of range for slice of length 0"). Now the reader stops with an error naming the file and row.
#[test]
fn regression_parquet_decoder_panic_is_an_error() {
    quiet_parquet_panics();
    let path = fuzz_fixture("parquet-rle-overread.parquet");
    let records: Vec<_> = open(&path, None).unwrap().collect();
    let last = records.last().unwrap().as_ref().expect_err("an error");
    assert!(matches!(last, burnish_data::Error::File { .. }), "{last}");
    let msg = last.to_string();
    assert!(
        msg.starts_with(&path.display().to_string())
            && msg.contains(": row 2: the Parquet decoder failed on corrupt data (range end index 4 out of range"),
        "{msg}"
    );
}

/// Writes `head`, then `n` bytes of `fill`, then `tail`, gzipped, to `path` (a few hundred KB on disk).
fn gzip_bomb(path: &Path, head: &[u8], fill: u8, n: usize, tail: &[u8]) {
    let mut e = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    e.write_all(head).unwrap();
    let chunk = vec![fill; 1 << 20];
    for _ in 0..n / chunk.len() {
        e.write_all(&chunk).unwrap();
    }
    e.write_all(&chunk[..n % chunk.len()]).unwrap();
    e.write_all(tail).unwrap();
    e.finish().unwrap();
}

/// Found while sizing the memory check: a record was buffered whole however long it was, so a small gzip
/// file inflating to one endless line (a few hundred KB on disk per GB) made the reader allocate without
/// bound. A record is now at most `MAX_RECORD_BYTES` (64 MiB): a longer JSON line or array element is a
/// bad record (skipped, the next one reads), a longer CSV row ends the read with an error.
#[test]
fn regression_one_endless_record_is_bounded() {
    use burnish_data::read::MAX_RECORD_BYTES;
    let dir = work_dir("endless-record");
    let cases: [(&str, &[u8], &[u8]); 3] = [
        (
            "a.jsonl.gz",
            b"{\"prompt\": \"",
            b"\"}\n{\"prompt\": \"p\", \"completion\": \"c\"}\n",
        ),
        (
            "a.json.gz",
            b"[{\"prompt\": \"",
            b"\"}, {\"prompt\": \"p\", \"completion\": \"c\"}]",
        ),
        ("a.csv.gz", b"prompt,completion\nx,", b"\np,c\n"),
    ];
    for (name, head, tail) in cases {
        let csv = name == "a.csv.gz";
        // The csv crate doubles its row buffer, so a CSV row may take up to twice the limit: a longer row
        // shows the difference (before the fix, the buffer doubled past the row's length).
        let n = if csv {
            2 * MAX_RECORD_BYTES + (16 << 20)
        } else {
            MAX_RECORD_BYTES + (1 << 20)
        };
        let path = dir.join(name);
        gzip_bomb(&path, head, b'a', n, tail);
        let (records, peak) = meter::peak(|| open(&path, None).unwrap().collect::<Vec<_>>());
        let msgs: Vec<String> = records
            .iter()
            .map(|r| match r {
                Ok(r) => format!("ok {}", r.loc),
                Err(e) => e.to_string(),
            })
            .collect();
        let shown = path.display().to_string();
        if csv {
            assert_eq!(
                msgs,
                [format!(
                    "{shown}: after the record at line 1: a row longer than the 64 MiB a record may be"
                )]
            );
        } else {
            // JSON Lines counts the line's closing `"}\n`, the array scanner the element's `"}` (without
            // its `[` and `,`).
            let (what, len, next) = match name {
                "a.jsonl.gz" => ("line", head.len() + n + 3, 2),
                _ => ("array element", head.len() - 1 + n + 2, 1),
            };
            assert_eq!(
                msgs,
                [
                    format!(
                        "{shown}:1: {what} of {len} bytes is longer than the 64 MiB a record may be; skipped"
                    ),
                    format!("ok {shown}:{next}"),
                ]
            );
        }
        // The record buffer stops growing at the limit (before: the whole record, doubling as it grew).
        let bound = if csv { 2 } else { 1 } * MAX_RECORD_BYTES + (8 << 20);
        assert!(peak < bound, "{name}: held {peak} bytes");
    }
}
