//! The terminal side of a run: messages on stderr, a progress bar over optimizer steps, and Ctrl-C as
//! the library's stop token (a second Ctrl-C quits at once). SIGTERM and SIGHUP count as Ctrl-C: a job
//! scheduler that preempts a run sends SIGTERM first and SIGKILL after a grace period, and a closed
//! terminal sends SIGHUP; either way the run keeps its last step in a checkpoint.

use std::sync::Mutex;

use burnish_trainers::progress::{Progress, StopToken};
use indicatif::{ProgressBar, ProgressStyle};

/// Messages to stderr and a progress bar drawn while training runs.
#[derive(Default)]
pub struct Terminal {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Terminal {
    fn message(&self, text: &str) {
        // `suspend`, not `println`: indicatif drops println lines when stderr is not a terminal.
        match &*self.bar.lock().expect("progress lock") {
            Some(bar) => bar.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    fn step(&self, done: usize, total: usize, status: &str) {
        let mut bar = self.bar.lock().expect("progress lock");
        let bar = bar.get_or_insert_with(|| {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .expect("valid template"),
            );
            b
        });
        bar.set_position(done as u64);
        bar.set_message(status.to_string());
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.abandon();
        }
    }
}

/// A stop token that Ctrl-C (or SIGTERM, SIGHUP) sets: the run saves a checkpoint after the current step
/// and returns.
pub fn ctrl_c_token() -> StopToken {
    let token = StopToken::new();
    let t = token.clone();
    // Only one handler per process; a second install (tests calling twice) keeps the first.
    let _ = ctrlc::set_handler(move || {
        if t.is_stopped() {
            std::process::exit(130);
        }
        t.stop();
        eprintln!("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit now)");
    });
    token
}
