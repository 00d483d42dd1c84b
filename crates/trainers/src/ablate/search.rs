//! The search over ablation (or steering) parameters: seeded random trials first, then Pareto-local
//! perturbation — each new trial perturbs a random point of the current Pareto front with Gaussian noise
//! that shrinks as the search goes on (a small evolution strategy; Optuna's TPE, which heretic uses,
//! would be a drop-in replacement). Both objectives are minimised.

use serde::{Deserialize, Serialize};

use burnish_data::rng::Rng;

use super::report::TrialInfo;

/// A parameter's range.
#[derive(Clone, Copy, Debug)]
pub struct Range {
    pub lo: f64,
    pub hi: f64,
}

/// One point the search tried (a line of trials.jsonl).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub index: usize,
    pub params: Vec<f64>,
    /// The two objectives, both minimised (e.g. refusal rate and KL).
    pub objectives: [f64; 2],
    #[serde(default)]
    pub info: TrialInfo,
}

/// Indices of the trials no other trial dominates.
pub fn pareto_front(trials: &[Trial]) -> Vec<usize> {
    let objectives: Vec<[f64; 2]> = trials.iter().map(|t| t.objectives).collect();
    pareto_indices(&objectives)
}

/// Indices of the points (two objectives, both minimised) that no other point dominates.
pub fn pareto_indices(points: &[[f64; 2]]) -> Vec<usize> {
    let dominates =
        |a: &[f64; 2], b: &[f64; 2]| a[0] <= b[0] && a[1] <= b[1] && (a[0] < b[0] || a[1] < b[1]);
    (0..points.len())
        .filter(|&i| !points.iter().any(|p| dominates(p, &points[i])))
        .collect()
}

pub struct Search {
    pub ranges: Vec<Range>,
    pub startup: usize,
    pub total: usize,
    rng: Rng,
}

impl Search {
    pub fn new(ranges: Vec<Range>, startup: usize, total: usize, seed: u64) -> Self {
        Self {
            ranges,
            startup,
            total,
            rng: Rng::new(seed),
        }
    }

    /// The parameters of the next trial, given the finished ones.
    pub fn propose(&mut self, done: &[Trial]) -> Vec<f64> {
        let k = done.len();
        if k < self.startup || done.is_empty() {
            return self
                .ranges
                .iter()
                .map(|r| r.lo + self.rng.unit() * (r.hi - r.lo))
                .collect();
        }
        let front = pareto_front(done);
        let parent = &done[front[self.rng.below(front.len())]];
        // Noise from 20% of the range down to 5% over the remaining trials.
        let progress = (k - self.startup) as f64 / (self.total - self.startup).max(1) as f64;
        let scale = 0.2 - 0.15 * progress.min(1.0);
        parent
            .params
            .iter()
            .zip(&self.ranges)
            .map(|(&p, r)| (p + self.rng.normal() * scale * (r.hi - r.lo)).clamp(r.lo, r.hi))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(i: usize, a: f64, b: f64) -> Trial {
        Trial {
            index: i,
            params: vec![],
            objectives: [a, b],
            info: TrialInfo::default(),
        }
    }

    #[test]
    fn front_keeps_non_dominated_points() {
        let trials = [
            t(0, 0.5, 0.1),
            t(1, 0.2, 0.3),
            t(2, 0.6, 0.2),
            t(3, 0.2, 0.3),
            t(4, 0.0, 1.0),
        ];
        assert_eq!(pareto_front(&trials), vec![0, 1, 3, 4]);
    }

    #[test]
    fn proposals_are_seeded_and_in_range() {
        let ranges = vec![Range { lo: 0.0, hi: 1.0 }, Range { lo: 5.0, hi: 29.0 }];
        let mut a = Search::new(ranges.clone(), 3, 10, 7);
        let mut b = Search::new(ranges, 3, 10, 7);
        let mut done = Vec::new();
        for i in 0..10 {
            let p = a.propose(&done);
            assert_eq!(p, b.propose(&done));
            assert!((0.0..=1.0).contains(&p[0]) && (5.0..=29.0).contains(&p[1]));
            done.push(Trial {
                index: i,
                params: p,
                objectives: [i as f64 % 3.0, 1.0 / (i + 1) as f64],
                info: TrialInfo::default(),
            });
        }
    }
}
