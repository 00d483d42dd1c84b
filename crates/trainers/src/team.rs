//! The workers of a data-parallel run as a team: which share of a micro-batch each takes, an
//! all-gather of host values between their threads that fails instead of waiting when a worker has
//! gone, and the gradient all-reduce through Burn's collective. A one-device run is a team of one, for
//! which every operation is the identity. [`crate::parallel`] starts the workers; the engine's loop
//! uses the team at each step.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use burn::collective::{self, PeerId, ReduceOperation};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burnish_core::burn;

use crate::method::Metrics;
use crate::{Error, Result};

/// What a worker tells the others after a step's forward and backward, or after the leader's
/// bookkeeping (`stop`).
#[derive(Clone, Debug, Default)]
pub struct Post {
    pub loss_sum: f64,
    pub sums: Metrics,
    /// Per trainable parameter (in [`crate::engine`]'s key order): did this worker's share give it a
    /// gradient. A parameter no worker touched is not updated, as on one device.
    pub present: Vec<bool>,
    pub stop: bool,
}

/// A worker's place in the run: its rank (0 leads: logs, evaluates, checkpoints) and the shared
/// exchange. A one-device run is a team of one, for which every operation is the identity.
pub struct Team {
    rank: usize,
    shared: Option<Arc<Shared>>,
}

struct Shared {
    /// Each worker's device, as written in errors.
    devices: Vec<String>,
    round: Mutex<Round>,
    cv: Condvar,
}

/// One all-gather at a time: posts of the current round, and the result of the last finished one.
struct Round {
    generation: u64,
    posted: Vec<Option<std::result::Result<Post, String>>>,
    count: usize,
    result: Arc<Vec<std::result::Result<Post, String>>>,
    /// The first worker whose thread ended while others may still wait for it.
    gone: Option<usize>,
}

impl Team {
    pub fn solo() -> Self {
        Self {
            rank: 0,
            shared: None,
        }
    }

    /// One member per device label, rank 0 first, sharing one exchange.
    pub fn members(labels: &[String]) -> Vec<Team> {
        let n = labels.len();
        let shared = Arc::new(Shared {
            devices: labels.to_vec(),
            round: Mutex::new(Round {
                generation: 0,
                posted: vec![None; n],
                count: 0,
                result: Arc::new(vec![]),
                gone: None,
            }),
            cv: Condvar::new(),
        });
        (0..n)
            .map(|rank| Team {
                rank,
                shared: Some(shared.clone()),
            })
            .collect()
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    pub fn size(&self) -> usize {
        self.shared.as_ref().map_or(1, |s| s.devices.len())
    }

    /// This worker's rows of a micro-batch: contiguous, in order, sizes differing by at most one.
    pub fn share<'a>(&self, rows: &'a [usize]) -> &'a [usize] {
        let (n, size) = (rows.len(), self.size());
        &rows[self.rank * n / size..(self.rank + 1) * n / size]
    }

    /// Runs `f`, turning a panic into an error when other workers depend on this one reaching the
    /// next exchange (on one device a panic stays a panic).
    pub fn guard<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        if self.shared.is_none() {
            return Ok(f());
        }
        catch_unwind(AssertUnwindSafe(f)).map_err(|p| Error::Invalid(panic_text(p.as_ref())))
    }

    /// Every worker's post, in rank order. `Err` when any worker posted an error (naming it) or has
    /// gone.
    pub fn gather(&self, post: std::result::Result<Post, String>) -> Result<Vec<Post>> {
        let Some(sh) = &self.shared else {
            return post.map(|p| vec![p]).map_err(Error::Invalid);
        };
        let all = sh.all_gather(self.rank, post)?;
        all.iter()
            .enumerate()
            .map(|(rank, p)| {
                p.clone().map_err(|message| Error::Worker {
                    rank,
                    device: sh.devices[rank].clone(),
                    message,
                })
            })
            .collect()
    }

    /// The leader's decision to stop after this step (or its error), shared with every worker.
    pub fn agree(&self, verdict: Result<bool>) -> Result<bool> {
        if self.shared.is_none() {
            return verdict;
        }
        let post = match &verdict {
            Ok(stop) => Ok(Post {
                stop: *stop,
                ..Post::default()
            }),
            Err(e) => Err(e.to_string()),
        };
        let posts = self.gather(post);
        verdict?;
        Ok(posts?[0].stop)
    }

    /// The element-wise sum of `t` over every worker (Burn's collective; the identity on one device).
    pub fn all_reduce<B: Backend>(&self, t: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        if self.shared.is_none() {
            return Ok(t);
        }
        let p = t.into_primitive().tensor();
        collective::all_reduce::<B>(PeerId::from(self.rank), p, ReduceOperation::Sum)
            .map(|p| Tensor::from_primitive(TensorPrimitive::Float(p)))
            .map_err(|e| self.collective_error(e))
    }

    pub fn collective_error(&self, e: collective::CollectiveError) -> Error {
        let device = self
            .shared
            .as_ref()
            .map_or(String::new(), |s| s.devices[self.rank].clone());
        Error::Worker {
            rank: self.rank,
            device,
            message: format!("Burn's collective failed: {e:?}"),
        }
    }
}

impl Drop for Team {
    /// A worker that ends (finished, failed or panicking) wakes the others: an exchange it would
    /// have joined fails instead of waiting for ever.
    fn drop(&mut self) {
        if let Some(sh) = &self.shared {
            let mut r = sh.lock();
            r.gone.get_or_insert(self.rank);
            sh.cv.notify_all();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Round> {
        self.round.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn all_gather(
        &self,
        rank: usize,
        post: std::result::Result<Post, String>,
    ) -> Result<Arc<Vec<std::result::Result<Post, String>>>> {
        let n = self.devices.len();
        let mut r = self.lock();
        let gone = |r: &Round| {
            let w = r.gone.expect("checked");
            Error::Worker {
                rank: w,
                device: self.devices[w].clone(),
                message: "the worker stopped (see its error above)".into(),
            }
        };
        if r.gone.is_some() {
            return Err(gone(&r));
        }
        r.posted[rank] = Some(post);
        r.count += 1;
        if r.count == n {
            let posts = r.posted.iter_mut().map(|p| p.take().expect("posted"));
            r.result = Arc::new(posts.collect());
            r.count = 0;
            r.generation += 1;
            self.cv.notify_all();
            return Ok(r.result.clone());
        }
        // The round cannot finish again without this worker, so `result` is still this round's.
        let generation = r.generation;
        while r.generation == generation && r.gone.is_none() {
            r = self.cv.wait(r).unwrap_or_else(|p| p.into_inner());
        }
        if r.generation != generation {
            Ok(r.result.clone())
        } else {
            Err(gone(&r))
        }
    }
}

pub(crate) fn panic_text(p: &(dyn Any + Send)) -> String {
    let text = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into());
    format!("panicked: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(n: usize) -> Vec<Team> {
        Team::members(&(0..n).map(|i| format!("cpu#{i}")).collect::<Vec<_>>())
    }

    #[test]
    fn shares_cover_the_rows_in_order() {
        let t = team(3);
        let rows: Vec<usize> = (10..15).collect();
        let parts: Vec<Vec<usize>> = t.iter().map(|m| m.share(&rows).to_vec()).collect();
        assert_eq!(parts, vec![vec![10], vec![11, 12], vec![13, 14]]);
        let two: Vec<usize> = vec![1, 2];
        let parts: Vec<usize> = t.iter().map(|m| m.share(&two).len()).collect();
        assert_eq!(parts, vec![0, 1, 1]);
    }

    #[test]
    fn gather_returns_every_post_in_rank_order_round_after_round() {
        std::thread::scope(|s| {
            let hs: Vec<_> = team(3)
                .into_iter()
                .map(|t| {
                    let r = t.rank();
                    s.spawn(move || {
                        (0..50)
                            .map(|round| {
                                let post = Post {
                                    loss_sum: (round * 10 + r) as f64,
                                    ..Post::default()
                                };
                                let all = t.gather(Ok(post)).unwrap();
                                all.iter().map(|p| p.loss_sum).collect::<Vec<_>>()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in hs {
                let rounds = h.join().unwrap();
                for (round, got) in rounds.iter().enumerate() {
                    let want: Vec<f64> = (0..3).map(|r| (round * 10 + r) as f64).collect();
                    assert_eq!(got, &want);
                }
            }
        });
    }

    #[test]
    fn an_error_or_a_gone_worker_fails_the_exchange_instead_of_hanging() {
        let mut t = team(2);
        let t1 = t.pop().unwrap();
        let t0 = t.pop().unwrap();
        std::thread::scope(|s| {
            let h = s.spawn(move || t1.gather(Err("out of memory".into())).map(drop));
            let e = t0.gather(Ok(Post::default())).unwrap_err();
            assert!(e.to_string().contains("out of memory"), "{e}");
            assert!(e.to_string().contains("cpu#1"), "{e}");
            assert!(h.join().unwrap().is_err());
        });
        // Worker 1 has ended (its Team was dropped): the next exchange fails at once.
        let e = t0.gather(Ok(Post::default())).unwrap_err();
        assert!(e.to_string().contains("worker 1"), "{e}");
    }
}
