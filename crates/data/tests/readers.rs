//! Readers: every format (plain and gzipped), record locations, and precise errors for bad records.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use burnish_data::error::Pos;
use burnish_data::read::{open, Format, RawRecord};
use burnish_data::schema::{convert, Columns, Schema};
use burnish_data::{Error, Example, Result};
use common::*;

fn read_all(path: &Path) -> Vec<Result<RawRecord>> {
    open(path, None).unwrap().collect()
}

fn lines(records: &[Result<RawRecord>]) -> Vec<Pos> {
    records
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.loc.pos)
        .collect()
}

fn err(r: &Result<RawRecord>) -> String {
    r.as_ref().map(|_| ()).unwrap_err().to_string()
}

/// Record errors plus schema errors, as the pipeline reports them.
fn converted(
    path: &Path,
    schema: Schema,
    cols: &Columns,
) -> Vec<std::result::Result<Example, String>> {
    read_all(path)
        .into_iter()
        .map(|r| {
            let raw = r.map_err(|e| e.to_string())?;
            convert(&raw.value, schema, cols).map_err(|e| e.at(&raw.loc).to_string())
        })
        .collect()
}

fn gzip(src: &Path, dst: &Path) {
    let bytes = std::fs::read(src).unwrap();
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(dst).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(&bytes).unwrap();
    enc.finish().unwrap();
}

#[test]
fn json_lines_with_locations() {
    let recs = read_all(&fixture("sft-mixed.jsonl"));
    assert_eq!(recs.len(), 7);
    assert_eq!(lines(&recs), (1..=7).map(Pos::Line).collect::<Vec<_>>());
    assert_eq!(recs[0].as_ref().unwrap().value["completion"], "4");
}

#[test]
fn bad_json_lines_name_line_and_field() {
    let out = converted(&fixture("sft-bad.jsonl"), Schema::Auto, &Columns::default());
    let errors: Vec<&String> = out.iter().filter_map(|r| r.as_ref().err()).collect();
    let name = "tests/fixtures/sft-bad.jsonl";
    assert_eq!(errors.len(), 5);
    assert!(
        errors[0].ends_with(&format!(
            "{name}:2: invalid JSON at column 34: EOF while parsing a value"
        )),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].ends_with(&format!(
            "{name}:3: field `messages[1].role`: unknown role `robot` (expected system, user or assistant)"
        )),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].ends_with(&format!(
            "{name}:5: field `completion`: expected a string, got a number"
        )),
        "{}",
        errors[2]
    );
    assert!(
        errors[3].ends_with(&format!("{name}:6: expected a JSON object, got an array")),
        "{}",
        errors[3]
    );
    assert!(
        errors[4].contains(&format!(
            "{name}:8: cannot tell the schema from the fields [unrelated]"
        )),
        "{}",
        errors[4]
    );
    assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 3);
}

#[test]
fn json_array_is_streamed_element_by_element() {
    let recs = read_all(&fixture("array.json"));
    assert_eq!(recs.len(), 4);
    assert_eq!(lines(&recs), [Pos::Line(2), Pos::Line(7)]);
    // A raw newline inside a string (serde sees it once the next line starts), then a missing comma on the
    // element's second line.
    assert!(
        err(&recs[1]).contains("array.json:4: invalid JSON at column 0: control character"),
        "{}",
        err(&recs[1])
    );
    assert!(
        err(&recs[2]).contains("array.json:6: invalid JSON at column 22: expected `,` or `}`"),
        "{}",
        err(&recs[2])
    );
    // Brackets and escaped quotes inside strings do not end the element.
    assert_eq!(
        recs[3].as_ref().unwrap().value["goal"],
        "Name a river, \"please\" ]"
    );
}

#[test]
fn json_file_holding_json_lines_and_an_unterminated_array() {
    let dir = tempfile::tempdir().unwrap();
    let lines_json = dir.path().join("lines.json");
    std::fs::write(
        &lines_json,
        "\n\n{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n",
    )
    .unwrap();
    assert_eq!(lines(&read_all(&lines_json)), [Pos::Line(3), Pos::Line(4)]);
    let cut = dir.path().join("cut.json");
    std::fs::write(&cut, "[{\"prompt\": \"a\"},\n {\"prompt\": \"b").unwrap();
    let recs = read_all(&cut);
    assert_eq!(recs.len(), 2);
    assert!(matches!(&recs[1], Err(Error::File { .. })));
    assert!(
        err(&recs[1]).contains("unexpected end of file in the JSON array (element at line 2)"),
        "{}",
        err(&recs[1])
    );
    let scalar = dir.path().join("scalar.json");
    std::fs::write(&scalar, "  42").unwrap();
    let e = open(&scalar, None).err().unwrap().to_string();
    assert!(
        e.contains("line 1: expected a JSON array (`[`) or JSON Lines (`{`)"),
        "{e}"
    );
}

#[test]
fn csv_rows_with_quotes_and_bad_cell_counts() {
    let recs = read_all(&fixture("bad.csv"));
    assert_eq!(recs.len(), 3);
    assert_eq!(lines(&recs), [Pos::Line(2), Pos::Line(4)]);
    assert!(
        err(&recs[1]).ends_with("bad.csv:3: 3 cells, but the header has 2"),
        "{}",
        err(&recs[1])
    );
    assert_eq!(
        recs[2].as_ref().unwrap().value["goal"],
        "A \"quoted\" goal\nover two lines"
    );
    let tsv = read_all(&fixture("pairs.tsv"));
    assert_eq!(tsv.len(), 2);
    assert_eq!(tsv[1].as_ref().unwrap().value["completion"], "B");
}

#[test]
fn gzip_is_detected_by_content_and_looked_through_for_the_format() {
    let dir = tempfile::tempdir().unwrap();
    for (src, name) in [
        ("sft-mixed.jsonl", "a.jsonl.gz"),
        ("sft-mixed.jsonl", "b.jsonl"),
        ("array.json", "c.json.gz"),
        ("bad.csv", "d.csv.gz"),
        ("messages.parquet", "e.parquet.gz"),
    ] {
        let dst = dir.path().join(name);
        gzip(&fixture(src), &dst);
        let plain = read_all(&fixture(src));
        let zipped = read_all(&dst);
        assert_eq!(lines(&plain), lines(&zipped), "{name}");
        assert_eq!(
            zipped.iter().filter(|r| r.is_err()).count(),
            plain.iter().filter(|r| r.is_err()).count()
        );
    }
    // A truncated gzip stream is a file error, not a panic or a silent stop.
    let whole = std::fs::read(dir.path().join("a.jsonl.gz")).unwrap();
    let cut = dir.path().join("cut.jsonl.gz");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let recs = read_all(&cut);
    assert!(
        matches!(recs.last(), Some(Err(Error::Io { .. }))),
        "{:?}",
        recs.last()
    );
}

#[test]
fn parquet_nested_lists_and_bad_rows() {
    let recs = read_all(&fixture("messages.parquet"));
    assert_eq!(lines(&recs), [Pos::Row(0), Pos::Row(1), Pos::Row(2)]);
    let ex: Vec<Example> = recs
        .iter()
        .map(|r| {
            convert(
                &r.as_ref().unwrap().value,
                Schema::Auto,
                &Columns::default(),
            )
            .unwrap()
        })
        .collect();
    let Example::Sft(second) = &ex[1] else {
        panic!("{:?}", ex[1])
    };
    assert_eq!(second.messages.len(), 5);
    assert_eq!(second.messages[4].content, "Madrid.");
    assert_eq!(second.category, None);
    let Example::Sft(first) = &ex[0] else {
        panic!()
    };
    assert_eq!(first.category.as_deref(), Some("math"));

    let cols = Columns {
        prompt: Some("question".into()),
        completion: Some("answer".into()),
        ..Default::default()
    };
    let out = converted(
        &fixture("flat-bad-row.parquet"),
        Schema::PromptCompletion,
        &cols,
    );
    assert!(out[0].is_ok() && out[2].is_ok());
    assert!(
        out[1]
            .as_ref()
            .unwrap_err()
            .ends_with("flat-bad-row.parquet: row 1: field `answer`: missing"),
        "{:?}",
        out[1]
    );

    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake.parquet");
    std::fs::write(&fake, "not parquet at all").unwrap();
    let e = open(&fake, None).err().unwrap().to_string();
    assert!(
        e.contains("fake.parquet: not a readable Parquet file"),
        "{e}"
    );
}

#[test]
fn formats_from_extensions() {
    let f = |p: &str| Format::from_path(&PathBuf::from(p));
    assert_eq!(f("a/b.JSONL.gz"), Some(Format::Jsonl));
    assert_eq!(f("x.ndjson"), Some(Format::Jsonl));
    assert_eq!(f("x.json"), Some(Format::Json));
    assert_eq!(f("x.tsv"), Some(Format::Tsv));
    assert_eq!(f("x.parquet"), Some(Format::Parquet));
    assert_eq!(f("x.txt"), None);
    let e = open(Path::new("data.txt"), None).err().unwrap().to_string();
    assert!(
        e.contains("cannot tell the format from the extension"),
        "{e}"
    );
    let e = open(Path::new("missing.jsonl"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("missing.jsonl: "), "{e}");
}
