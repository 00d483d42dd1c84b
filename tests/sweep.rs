//! `burnish sweep` on the tiny model: every grid point trains and is evaluated, the table marks the
//! Pareto front, a second run skips every trial, and a bad sweep file is named with what is wrong.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn sweep(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_burnish"))
        .arg("sweep")
        .arg(file)
        .output()
        .unwrap()
}

/// The tiny run file, two prompts and the sweep file `name` over them: `grid` (its overrides and axes)
/// and an [eval] of the prompts as both harmful and harmless.
fn tiny_sweep(dir: &Path, name: &str, grid: &str) -> std::path::PathBuf {
    tiny_run(dir, "");
    let prompts = "{\"prompt\": \"say the cat\"}\n{\"prompt\": \"say a dog\"}\n";
    std::fs::write(dir.join("prompts.jsonl"), prompts).unwrap();
    let file = dir.join(name);
    let eval =
        "[eval]\nharmful = [\"prompts.jsonl\"]\nharmless = \"prompts.jsonl\"\nmax_new_tokens = 4\n";
    std::fs::write(&file, format!("config = \"run.toml\"\n{grid}{eval}")).unwrap();
    file
}

/// Each trial is marked `pareto` exactly when no other trial beats it on both of `point`'s numbers.
fn assert_front(trials: &[serde_json::Value], point: impl Fn(&serde_json::Value) -> [f64; 2]) {
    for t in trials {
        let dominated = trials.iter().any(|u| {
            let (a, b) = (point(u), point(t));
            a[0] <= b[0] && a[1] <= b[1] && (a[0] < b[0] || a[1] < b[1])
        });
        assert_eq!(t["pareto"], !dominated, "{t}");
    }
}

#[test]
fn sweep_trains_every_grid_point_and_marks_the_front() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny_sweep(
        tmp.path(),
        "grid.toml",
        "set = [\"train.max_steps=2\"]\n\
         [[grid]]\nkey = \"train.learning_rate\"\nvalues = [1e-3, 1e-2]\n\
         [[grid]]\nkey = \"lora.r\"\nvalues = [2, 4]\n",
    );
    let o = sweep(&file);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let table = String::from_utf8_lossy(&o.stdout);
    let out = tmp.path().join("sweep-grid");
    let trials: Vec<serde_json::Value> = std::fs::read_to_string(out.join("trials.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(trials.len(), 4);
    // The first axis varies slowest; the common overrides come first.
    assert_eq!(
        trials[1]["set"],
        serde_json::json!(["train.max_steps=2", "train.learning_rate=0.001", "lora.r=4"])
    );
    for (i, t) in trials.iter().enumerate() {
        let dir = out.join(format!("t{i:02}"));
        assert!(dir.join("merged").exists() && dir.join("eval/report.json").exists());
        let run: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
        assert_eq!(run["config"]["train"]["max_steps"], 2, "{t}");
        assert!(t["violation_rate"].is_number() && t["kl_first_token"].is_number());
    }
    // The front is exactly the trials no other beats on both rates.
    assert_front(&trials, |t| {
        [
            t["violation_rate"].as_f64().unwrap(),
            t["harmless_refusal_rate"].as_f64().unwrap(),
        ]
    });
    assert!(
        table.contains("★ front, best sum") && out.join("pareto.png").exists(),
        "{table}"
    );
    // A second run only reads the results back.
    let again = sweep(&file);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(err.matches("unchanged, skipped").count(), 4, "{err}");
    assert_eq!(String::from_utf8_lossy(&again.stdout), table);

    // The refusal-free front reads the same trials (the front is not part of a trial's key): refusals
    // on the harmful set against first-token KL to the run file's [model], ★ within kl_target.
    let text = std::fs::read_to_string(&file).unwrap();
    let free = tmp.path().join("free.toml");
    std::fs::write(
        &free,
        format!("front = \"refusal-free\"\nkl_target = 1e9\nout = \"sweep-grid\"\n{text}"),
    )
    .unwrap();
    let o = sweep(&free);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("unchanged, skipped").count(), 4, "{err}");
    let trials: Vec<serde_json::Value> = std::fs::read_to_string(out.join("trials.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let point = |t: &serde_json::Value| {
        [
            1.0 - t["violation_rate"].as_f64().unwrap(),
            t["kl_first_token"].as_f64().unwrap(),
        ]
    };
    assert_front(&trials, point);
    let table = String::from_utf8_lossy(&o.stdout);
    let fewest = trials
        .iter()
        .filter(|t| t["pareto"] == true)
        .map(|t| point(t)[0])
        .fold(f64::INFINITY, f64::min);
    let starred = table
        .lines()
        .find(|l| l.contains("★ front, fewest refusals within kl_target"))
        .unwrap_or_else(|| panic!("{table}"));
    let name = starred.split('|').nth(1).unwrap().trim();
    let t = trials.iter().find(|t| t["trial"] == name).unwrap();
    assert_eq!(point(t)[0], fewest, "{table}");

    // Mistakes are named: an unknown key in the file, a bad override of the run file, no trade-off.
    for (text, want) in [
        ("config = \"run.toml\"\ngird = []\n", "unknown field `gird`"),
        (
            "config = \"run.toml\"\nfront = \"both\"\n[[grid]]\nkey = \"lora.r\"\nvalues = [2]\n\
             [eval]\nharmful = [\"prompts.jsonl\"]\nharmless = \"prompts.jsonl\"\n",
            "front",
        ),
        (
            "config = \"run.toml\"\nkl_target = -1\n[[grid]]\nkey = \"lora.r\"\nvalues = [2]\n\
             [eval]\nharmful = [\"prompts.jsonl\"]\nharmless = \"prompts.jsonl\"\n",
            "kl_target",
        ),
        (
            "config = \"run.toml\"\n[[grid]]\nkey = \"train.learnin_rate\"\nvalues = [1]\n\
             [eval]\nharmful = [\"prompts.jsonl\"]\nharmless = \"prompts.jsonl\"\n",
            "learnin_rate",
        ),
        (
            "config = \"run.toml\"\n[[grid]]\nkey = \"lora.r\"\nvalues = [2]\n[eval]\nharmful = [\"prompts.jsonl\"]\n",
            "[eval] needs",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let o = sweep(&file);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want) && err.contains("grid.toml"), "{err}");
    }
}

/// The processes whose parent is `pid` (Linux's children list of its main thread).
#[cfg(target_os = "linux")]
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect()
}

/// Whether `pid` runs (exists and is not a zombie).
#[cfg(target_os = "linux")]
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in brackets: "123 (burnish) R …".
        Ok(stat) => stat.rsplit(')').next().unwrap().trim_start().as_bytes()[0] != b'Z',
        Err(_) => false,
    }
}

/// SIGTERM to a sweep stops the trial it is training too: a step runs as its own process, which used to
/// go on training into the trial's directory with nobody waiting for it.
#[cfg(target_os = "linux")]
#[test]
fn a_terminated_sweep_takes_its_running_step_with_it() {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    // Far more steps than the test waits for: the step is still training when the sweep is stopped.
    let file = tiny_sweep(
        tmp.path(),
        "long.toml",
        "set = [\"train.max_steps=1000000\"]\n[[grid]]\nkey = \"lora.r\"\nvalues = [2]\n",
    );
    let mut sweep = Command::new(env!("CARGO_BIN_EXE_burnish"))
        .arg("sweep")
        .arg(&file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the step trains (it has logged a step); a step that never starts fails here.
    let metrics = tmp.path().join("sweep-long/t00/metrics.jsonl");
    let start = Instant::now();
    let step = loop {
        let kids = children(sweep.id());
        let trains = std::fs::read_to_string(&metrics).is_ok_and(|m| !m.is_empty());
        if let (Some(&k), true) = (kids.first(), trains) {
            break k;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the step never started training"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let killed = Command::new("kill")
        .arg(sweep.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(!sweep.wait().unwrap().success());
    let stopped = Instant::now();
    while running(step) && stopped.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let orphaned = running(step);
    if orphaned {
        // Do not leave it training after the test.
        let _ = Command::new("kill")
            .args(["-9", &step.to_string()])
            .status();
    }
    assert!(
        !orphaned,
        "the step (pid {step}) went on after its sweep was terminated"
    );
}
