//! docs/config.md lists exactly the keys the run file accepts: its TOML block parses as a run config, and
//! for every table the keys serde expects (read from its "unknown field" error) all appear in the block.

use std::path::Path;

use burnish::trainers::config::RunConfig;

fn doc_block() -> String {
    let md =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md")).unwrap();
    let start = md.find("```toml\n").expect("toml block") + 8;
    let end = start + md[start..].find("```").unwrap();
    md[start..end].to_string()
}

fn table<'a>(root: &'a mut toml::Value, path: &str) -> &'a mut toml::Table {
    let mut v = root;
    for seg in path.split('.') {
        v = match seg.parse::<usize>() {
            Ok(i) => &mut v.as_array_mut().unwrap()[i],
            Err(_) => v
                .get_mut(seg)
                .unwrap_or_else(|| panic!("docs/config.md has no [{path}]")),
        };
    }
    v.as_table_mut().unwrap()
}

#[test]
fn documented_keys_are_exactly_the_accepted_ones() {
    let text = doc_block();
    let parsed: Result<RunConfig, _> = toml::from_str(&text);
    assert!(
        parsed.is_ok(),
        "docs/config.md's block does not parse: {}",
        parsed.unwrap_err()
    );
    let doc: toml::Value = toml::from_str(&text).unwrap();
    let tables = [
        "model",
        "lora",
        "data",
        "data.sources.0",
        "data.refusal",
        "data.generate",
        "train",
        "train.adamw",
        "eval",
        "eval.sets.0",
        "output",
    ];
    for path in tables {
        let mut v = doc.clone();
        let documented: Vec<String> = table(&mut v, path).keys().cloned().collect();
        table(&mut v, path).insert("zzz_not_a_key".into(), toml::Value::Integer(1));
        let err = toml::from_str::<RunConfig>(&toml::to_string(&v).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("zzz_not_a_key"),
            "[{path}] accepted an unknown key: {err}"
        );
        let expected = err.split("expected").nth(1).unwrap_or_default();
        let accepted: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        assert!(!accepted.is_empty(), "[{path}]: no key list in {err}");
        for key in accepted {
            assert!(
                documented.iter().any(|d| d == key),
                "[{path}] accepts `{key}` but docs/config.md does not list it"
            );
        }
    }
}

/// Each method page's first TOML block holds that method's `[method]` table: it parses, and it lists
/// every key the method accepts.
#[test]
fn method_pages_list_their_keys() {
    for page in ["docs/dpo.md", "docs/ablate.md", "docs/rlhf.md"] {
        let md = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(page)).unwrap();
        let start = md
            .find("```toml\n[method]")
            .unwrap_or_else(|| panic!("{page}: no [method] block"))
            + 8;
        let end = start + md[start..].find("```").unwrap();
        let method: toml::Value = toml::from_str(&md[start..end]).unwrap();
        let mut doc: toml::Value = toml::from_str(&doc_block()).unwrap();
        doc.as_table_mut()
            .unwrap()
            .insert("method".into(), method["method"].clone());
        let parsed = toml::from_str::<RunConfig>(&toml::to_string(&doc).unwrap());
        assert!(parsed.is_ok(), "{page}: {}", parsed.err().unwrap());
        let documented: Vec<String> = doc["method"].as_table().unwrap().keys().cloned().collect();
        table(&mut doc, "method").insert("zzz_not_a_key".into(), toml::Value::Integer(1));
        let err = toml::from_str::<RunConfig>(&toml::to_string(&doc).unwrap())
            .unwrap_err()
            .to_string();
        let expected = err.split("expected").nth(1).unwrap_or_default();
        let accepted: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        assert!(!accepted.is_empty(), "{page}: no key list in {err}");
        for key in accepted {
            assert!(
                documented.iter().any(|d| d == key),
                "{page}: `{key}` is accepted but not documented"
            );
        }
    }
}
