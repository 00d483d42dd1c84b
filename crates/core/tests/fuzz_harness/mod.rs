//! The harness of the fuzz tests of burnish-core, burnish-data and burnish-trainers (one copy, included
//! by each with `#[path]`): case count and seed from the environment, a per-thread heap meter (the
//! crate's global allocator), a hang watchdog, per-process scratch folders and outcome counts.
//!
//! * `BURNISH_FUZZ_CASES` — cases per target (default [`CI_CASES`]).
//! * `BURNISH_FUZZ_SEED` — the RNG seed (default the test file's fixed one, so CI is deterministic;
//!   `random` for a fresh one).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestCaseError, TestRunner};

/// Cases per target when `BURNISH_FUZZ_CASES` is unset: sized so that the three fuzz test binaries together
/// stay well under 3 minutes on 2 cores in release mode (docs/reliability.md).
pub const CI_CASES: u32 = 10_000;

/// One test file's fuzzing: its default seed, and the file its proptest regressions are kept beside.
pub struct Fuzz {
    pub seed: u64,
    pub source_file: &'static str,
}

impl Fuzz {
    fn config(&self) -> Config {
        let cases = std::env::var("BURNISH_FUZZ_CASES")
            .ok()
            .map(|v| v.parse().expect("BURNISH_FUZZ_CASES must be a number"))
            .unwrap_or(CI_CASES);
        let rng_seed = match std::env::var("BURNISH_FUZZ_SEED").as_deref() {
            Ok("random") => RngSeed::Random,
            Ok(s) => RngSeed::Fixed(s.parse().expect("BURNISH_FUZZ_SEED: a number or `random`")),
            Err(_) => RngSeed::Fixed(self.seed),
        };
        Config {
            cases,
            rng_seed,
            failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
                "proptest-regressions",
            ))),
            source_file: Some(self.source_file),
            max_shrink_iters: 2000,
            ..Config::default()
        }
    }

    /// Runs `case` on the strategy's values; prints the case count, time and the target's outcome counts,
    /// and panics with proptest's (shrunk) failure.
    pub fn run<S: Strategy>(
        &self,
        target: &str,
        strategy: S,
        case: impl Fn(S::Value) -> Result<(), TestCaseError>,
    ) where
        S::Value: std::fmt::Debug,
    {
        let cfg = self.config();
        let (cases, seed) = (cfg.cases, cfg.rng_seed);
        let mut runner = TestRunner::new(cfg);
        let t = Instant::now();
        let result = runner.run(&strategy, case);
        eprintln!(
            "fuzz {target}: {cases} cases (seed {seed}) in {:.1} s: {}",
            t.elapsed().as_secs_f64(),
            if result.is_ok() {
                "no failure"
            } else {
                "FAILED"
            }
        );
        for ((t, what), v) in STATS.lock().unwrap().iter() {
            if t == target {
                eprintln!("  {target}: {what}: {v}");
            }
        }
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}

/// Counts this thread's live heap bytes, so a case can be checked for allocations out of proportion to its
/// input (a length field trusted to size a buffer).
pub mod meter {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Meter;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(n: isize) {
        let _ = LIVE.try_with(|live| {
            let v = live.get() + n;
            live.set(v);
            let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
        });
    }

    unsafe impl GlobalAlloc for Meter {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            add(l.size() as isize);
            unsafe { System.alloc(l) }
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            add(l.size() as isize);
            unsafe { System.alloc_zeroed(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            add(-(l.size() as isize));
            unsafe { System.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            add(new as isize - l.size() as isize);
            unsafe { System.realloc(p, l, new) }
        }
    }

    /// Runs `f`; returns its result and the most bytes this thread held above the starting level meanwhile
    /// (requests count before they are served, so a failing huge request is seen too).
    pub fn peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let base = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(base));
        let r = f();
        (r, (PEAK.with(Cell::get) - base).max(0) as usize)
    }
}

#[global_allocator]
static METER: meter::Meter = meter::Meter;

/// Aborts the process (naming the input file) if one case runs longer than `limit`: a hang would otherwise
/// only show as a CI timeout.
pub struct Watchdog {
    started_ms: Arc<AtomicU64>,
    epoch: Instant,
}

impl Watchdog {
    pub fn new(input: &Path, limit: Duration) -> Self {
        let started_ms = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let (s, input) = (started_ms.clone(), input.to_path_buf());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let t = s.load(Ordering::Relaxed);
            if t != 0 && epoch.elapsed().as_millis() as u64 > t + limit.as_millis() as u64 {
                eprintln!(
                    "fuzz: one case ran over {limit:?} (hang?); its input is {}",
                    input.display()
                );
                std::process::abort();
            }
        });
        Self { started_ms, epoch }
    }

    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        self.started_ms.store(
            self.epoch.elapsed().as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
        let r = f();
        self.started_ms.store(0, Ordering::Relaxed);
        r
    }
}

/// Outcome counts per (target, outcome) (printed after a run: how deep the generated inputs get).
static STATS: std::sync::Mutex<std::collections::BTreeMap<(String, String), u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

pub fn stat(target: &str, what: impl Into<String>) {
    *STATS
        .lock()
        .unwrap()
        .entry((target.to_string(), what.into()))
        .or_default() += 1;
}

/// A scratch folder of this process (a second run of the test at the same time, e.g. the workspace suite
/// beside a long campaign, gets its own), removed when dropped.
pub struct WorkDir(PathBuf);

impl std::ops::Deref for WorkDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for WorkDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn work_dir(target: &str) -> WorkDir {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fuzz-{target}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    WorkDir(d)
}

pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// What went wrong in one case, if anything: a panic, a violated property (the check's message), or more
/// than `64 × size + 4 MiB` held at once for a `size`-byte input (a length field trusted to size a buffer).
pub fn problem(
    outcome: std::thread::Result<Result<(), String>>,
    peak: usize,
    size: usize,
) -> Option<String> {
    let limit = 64 * size + (4 << 20);
    match outcome {
        Err(p) => Some(format!("panicked: {}", panic_message(&*p))),
        Ok(Err(msg)) => Some(msg),
        Ok(Ok(())) if peak > limit => Some(format!(
            "held {peak} bytes for {size} input bytes (limit {limit})"
        )),
        Ok(Ok(())) => None,
    }
}
