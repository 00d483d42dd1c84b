//! How a run reports what it does and learns that it should stop, without a terminal or a signal
//! handler of its own: the caller supplies both. The CLI draws a progress bar and turns Ctrl-C into a
//! [`StopToken`]; a program embedding burnish may log, collect, or stay silent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Receives a run's news. Every method has a default, so an implementation picks what it wants.
pub trait Progress: Sync {
    /// A line of news: what the data stage read, how long a stage took, where outputs went.
    fn message(&self, text: &str) {
        tracing::info!(target: "burnish", "{text}");
    }

    /// Training is at optimizer step `done` of `total` (called once at the start with the resume
    /// point, then after every step); `status` summarises the last step (loss, lr, speed).
    fn step(&self, done: usize, total: usize, status: &str) {
        let _ = (done, total, status);
    }

    /// The training loop has ended (finished, interrupted or failed).
    fn finish(&self) {}
}

/// Reports through `tracing` only (the library's default).
#[derive(Clone, Copy, Debug, Default)]
pub struct Log;

impl Progress for Log {}

/// Asks a running training loop to save a checkpoint after the current step and return
/// `Outcome::Interrupted`. Cheap to clone; all clones share one flag.
#[derive(Clone, Debug, Default)]
pub struct StopToken(Arc<AtomicBool>);

impl StopToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
