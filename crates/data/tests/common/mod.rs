//! Shared test helpers: fixture paths, the shared datasets, SmolLM2.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    // Relative to the crate so that error messages (which carry the path) are stable.
    PathBuf::from("tests/fixtures").join(name)
}

/// A file under the workspace's sibling `shared/data/` folder.
pub fn shared(rel: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/"
    ))
    .join(rel)
}

/// SmolLM2-135M-Instruct (scripts/fetch-smollm2.sh; BURNISH_SMOLLM2 overrides).
pub fn smollm2() -> PathBuf {
    if let Ok(p) = std::env::var("BURNISH_SMOLLM2") {
        return p.into();
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-smollm2.sh first",
        p.display()
    );
    p
}
