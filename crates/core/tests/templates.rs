//! The families' own chat templates (Qwen3 with thinking blocks and tools, Gemma 2, Gemma 3, Phi-3.5)
//! rendered as transformers renders them (reference: scripts/reference/make_template_fixtures.py),
//! including the exceptions a template raises. The templates come from scripts/fetch-templates.sh (the test command
//! runs it); without them the test skips with a message, except in CI (CI=true), where it fails.

mod common;

use std::path::PathBuf;

use burnish_core::{ChatTemplate, Message};
use common::fixture;
use serde_json::Value;

#[test]
fn family_templates_render_as_transformers() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/templates");
    let text = std::fs::read_to_string(fixture("templates/expected.json")).unwrap();
    let expected: Value = serde_json::from_str(&text).unwrap();
    for (family, t) in expected["templates"].as_object().unwrap() {
        let path = dir.join(t["file"].as_str().unwrap());
        let Ok(source) = std::fs::read_to_string(&path) else {
            let msg = format!(
                "{} is missing: run scripts/fetch-templates.sh",
                path.display()
            );
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
            eprintln!("skipping the {family} template: {msg}");
            continue;
        };
        let tmpl = ChatTemplate::new(
            &source,
            t["bos_token"].as_str().unwrap(),
            t["eos_token"].as_str().unwrap(),
        )
        .unwrap();
        for (i, case) in t["cases"].as_array().unwrap().iter().enumerate() {
            let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            let gen = case["add_generation_prompt"].as_bool().unwrap();
            let got = tmpl.render_with(&messages, gen, case["extra"].clone());
            match (&case["rendered"], got) {
                (Value::String(want), Ok(got)) => {
                    assert_eq!(&got, want, "{family} case {i}")
                }
                (Value::Null, Err(e)) => {
                    let want = case["error"].as_str().unwrap();
                    assert!(e.to_string().contains(want), "{family} case {i}: {e}");
                }
                (want, got) => panic!("{family} case {i}: want {want:?}, got {got:?}"),
            }
        }
    }
}
