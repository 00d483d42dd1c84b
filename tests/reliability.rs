//! Outputs are never overwritten without being asked, and never a mix of two writes.

mod common;

use std::process::Command;

use common::*;

fn export(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_burnish"))
        .arg("export")
        .args(args)
        .output()
        .unwrap()
}

/// `burnish export --out DIR` refuses an existing directory (leaving it as it was) unless
/// `--overwrite`, and then replaces it whole: a stale shard and its index from an earlier export do not
/// survive beside the new `model.safetensors` (a directory that would load the wrong weights). The same
/// for `--gguf FILE`.
#[test]
fn export_refuses_or_replaces_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_chat_model(tmp.path());
    let m = model.to_str().unwrap();
    let out = tmp.path().join("exported");
    std::fs::create_dir_all(&out).unwrap();
    let stale = [
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
    ];
    for f in stale {
        std::fs::write(out.join(f), b"old").unwrap();
    }
    std::fs::write(out.join("config.json"), b"{\"mine\": true}").unwrap();
    let o = out.to_str().unwrap();
    let refused = export(&["--model", m, "--out", o]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains("already exists") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        b"{\"mine\": true}"
    );
    let ok = export(&["--model", m, "--out", o, "--overwrite"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for f in stale {
        assert!(!out.join(f).exists(), "{f} survived the overwrite");
    }
    assert!(out.join("model.safetensors").exists());
    let entries = std::fs::read_dir(tmp.path()).unwrap().count();
    assert_eq!(
        entries, 2,
        "only tiny-chat and exported: no staging directory left"
    );
    // The new directory loads and is the model.
    let inspect = Command::new(env!("CARGO_BIN_EXE_burnish"))
        .args(["inspect", "--model", o])
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );

    let gguf = tmp.path().join("model.gguf");
    std::fs::write(&gguf, b"precious").unwrap();
    let g = gguf.to_str().unwrap();
    let refused = export(&["--model", m, "--gguf", g]);
    assert!(!refused.status.success());
    assert_eq!(std::fs::read(&gguf).unwrap(), b"precious");
    let ok = export(&["--model", m, "--gguf", g, "--overwrite"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_ne!(std::fs::read(&gguf).unwrap(), b"precious");
}

/// A run that would generate past the model's context says so once, however many batches and sets
/// it generates in (tiny-llama's context is 256 positions; 300 new tokens overflow it for every
/// prompt of both sets), and still finishes.
#[test]
fn generating_past_the_context_warns_once() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_chat_model(tmp.path());
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"say the cat\"}\n{\"prompt\": \"say a dog\"}\n",
    )
    .unwrap();
    let p = prompts.to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_burnish"))
        .args([
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--harmful",
            p,
            "--benign",
            p,
        ])
        .args([
            "--max-new-tokens",
            "300",
            "--batch-size",
            "1",
            "--no-kl",
            "--out",
        ])
        .arg(tmp.path().join("eval"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let warnings = err
        .matches("exceed the model's context of 256 tokens")
        .count();
    assert_eq!(warnings, 1, "{err}");
    // Within the context: no warning.
    let out = Command::new(env!("CARGO_BIN_EXE_burnish"))
        .args(["eval", "--model", model.to_str().unwrap(), "--harmful", p])
        .args(["--max-new-tokens", "8", "--no-kl", "--out"])
        .arg(tmp.path().join("eval2"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("context of"), "{err}");
}
