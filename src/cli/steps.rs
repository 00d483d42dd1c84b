//! Steps that run as their own `burnish` processes and record a key of their inputs, so that a second
//! invocation skips what is done and resumes what is not (`burnish showcase`, `burnish sweep`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use burnish_core::backend::DeviceSpec;
use burnish_core::io::Fnv64;
use serde_json::{json, Value};

/// `p` as a TOML string (for `--set key=PATH`).
pub fn toml_str(p: &Path) -> String {
    // A JSON string is a valid TOML basic string.
    serde_json::to_string(&p.display().to_string()).expect("json")
}

/// A hash of the parts (each followed by 0xff): what a step's outputs depend on.
pub fn key(parts: &[String]) -> String {
    let mut h = Fnv64::new();
    for p in parts {
        h.write(p.as_bytes()).write(&[0xff]);
    }
    format!("{:016x}", h.finish())
}

/// A run file's text as a step key sees it: its parsed contents, so that editing a comment or the
/// layout does not make a finished step run again. A file that does not parse keys as written (the
/// step then fails with the parse error).
pub fn config_key_text(text: &str) -> String {
    match text.parse::<toml::Table>() {
        Ok(t) => toml::to_string(&t).unwrap_or_else(|_| text.to_string()),
        Err(_) => text.to_string(),
    }
}

/// The recorded key and seconds of a finished step, if its key matches.
pub fn done(dir: &Path, k: &str) -> Option<f64> {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("showcase-step.json")).ok()?)
            .ok()?;
    (v["key"] == k).then(|| v["seconds"].as_f64().unwrap_or(0.0))
}

pub fn mark(dir: &Path, k: &str, seconds: f64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let v = json!({"key": k, "seconds": seconds});
    burnish_core::io::write_atomic(&dir.join("showcase-step.json"), v.to_string().as_bytes())?;
    Ok(())
}

/// The running binary, for its steps. On Linux `/proc/self/exe`: when a rebuild replaces the file during
/// a long showcase or sweep, `current_exe` names a deleted path (a step then failed with "No such file
/// or directory"), while `/proc/self/exe` still runs the very code of this process.
fn own_exe() -> std::io::Result<PathBuf> {
    let proc = Path::new("/proc/self/exe");
    if cfg!(target_os = "linux") && proc.exists() {
        return Ok(proc.to_path_buf());
    }
    std::env::current_exe()
}

/// Runs one step as `burnish ARGS [--backend B]`, its output going to `log`.
pub fn burnish(args: &[String], log: &Path, backend: Option<DeviceSpec>) -> Result<()> {
    let exe = own_exe()?;
    let f = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let backend = backend.map(|b| ["--backend".to_string(), b.to_string()]);
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .args(backend.iter().flatten())
        .stdout(f.try_clone()?)
        .stderr(f);
    let status = dies_with_parent(&mut cmd).status()?;
    if !status.success() {
        bail!("`burnish {}` failed; see {}", args.join(" "), log.display());
    }
    Ok(())
}

/// Makes `cmd`'s process end when this one does. A step runs as its own process; without this, stopping
/// the showcase or a sweep with SIGTERM (`kill`, a job scheduler) left the running step training and
/// writing into its output directory with nobody waiting for it (Ctrl-C reaches the whole process group
/// and never had that problem). Linux asks the kernel to send SIGTERM to the child when its parent
/// thread exits — the thread that calls `status()` waits in it for the whole step, so only the
/// process's end triggers it. A `train` step takes SIGTERM as Ctrl-C (progress.rs): it ends after its
/// current optimizer step, with a checkpoint; the others end at once. Elsewhere `cmd` is unchanged.
#[cfg(target_os = "linux")]
fn dies_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure only makes async-signal-safe system calls (prctl,
    // getppid, _exit) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then no signal will come.
            if libc::getppid() != parent {
                libc::_exit(143);
            }
            Ok(())
        })
    }
}

#[cfg(not(target_os = "linux"))]
fn dies_with_parent(cmd: &mut Command) -> &mut Command {
    cmd
}

pub fn minutes(s: f64) -> String {
    format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
}

/// The prompt sets and options of a step's `burnish eval`.
#[derive(Clone, Debug)]
pub struct EvalSpec {
    pub harmful: Vec<PathBuf>,
    pub benign: Vec<PathBuf>,
    pub harmless: Option<PathBuf>,
    /// Prompts per set at most.
    pub limit: Option<usize>,
    pub max_new_tokens: usize,
}

impl EvalSpec {
    /// `burnish eval` arguments for `model` (KL to `base` and to `source` when given), into `out`.
    pub fn args(
        &self,
        model: &Path,
        base: Option<&Path>,
        source: Option<&Path>,
        out: &Path,
    ) -> Vec<String> {
        let mut args = vec!["eval".to_string()];
        let mut add = |flag: &str, p: &Path| args.extend([flag.into(), p.display().to_string()]);
        add("--model", model);
        base.into_iter().for_each(|b| add("--base", b));
        source.into_iter().for_each(|s| add("--source", s));
        self.harmful.iter().for_each(|p| add("--harmful", p));
        self.benign.iter().for_each(|p| add("--benign", p));
        self.harmless.iter().for_each(|p| add("--harmless", p));
        add("--out", out);
        if let Some(n) = self.limit {
            args.extend(["--limit".into(), n.to_string()]);
        }
        args.extend(["--max-new-tokens".into(), self.max_new_tokens.to_string()]);
        args
    }

    /// What the evaluation depends on besides the model, for a step's key.
    pub fn key_part(&self) -> String {
        format!("{self:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::config_key_text;

    #[test]
    fn comments_and_layout_do_not_change_a_config_key() {
        let a = "# one\n[train]\nlearning_rate = 5e-4  # why\nepochs = 1\n";
        let b = "[train]\n# the rate, measured\nlearning_rate   = 0.0005\n\nepochs = 1\n";
        assert_eq!(config_key_text(a), config_key_text(b));
        let c = "[train]\nlearning_rate = 5e-4\nepochs = 2\n";
        assert_ne!(config_key_text(a), config_key_text(c));
        // Not TOML: keyed as written, so two different broken files still differ.
        assert_ne!(config_key_text("[train"), config_key_text("[train]]"));
    }

    #[test]
    fn steps_run_the_binary_that_is_running() {
        let own = std::fs::canonicalize(super::own_exe().unwrap()).unwrap();
        let current = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(own, current);
    }
}
