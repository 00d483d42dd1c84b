//! `burnish inspect` names each family and what it adds; an unsupported architecture is a clear error.

use std::path::PathBuf;
use std::process::Command;

fn burnish(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_burnish"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn inspect_describes_gemma3() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/gemma3/gemma-3-270m-q4_k_m.gguf");
    if !path.exists() {
        let msg = format!("{} is missing: run scripts/fetch-gemma3.sh", path.display());
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("skipping: {msg}");
        return;
    }
    let (ok, out) = burnish(&["inspect", "--model", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    for want in [
        "Gemma3ForCausalLM",
        "GeGLU",
        "(1 + w) RMSNorm",
        "q/k norms",
        "15 of 18 layers slide (window 512) with RoPE base 10000",
    ] {
        assert!(out.contains(want), "`{want}` missing from:\n{out}");
    }
}

#[test]
fn unsupported_architecture_names_itself_and_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("crates/core/tests/fixtures/tiny-qwen3/config.json"),
    )
    .unwrap()
    .replace("\"qwen3\"", "\"phi4\"");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    let (ok, out) = burnish(&["inspect", "--model", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("model_type `phi4`")
            && out.contains("gemma3_text")
            && out.contains("config.json"),
        "{out}"
    );
    assert!(!out.contains("panicked"), "{out}");
}
