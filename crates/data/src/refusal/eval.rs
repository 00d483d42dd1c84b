//! Measuring a detector: precision and recall on labelled responses. The built-in set
//! (`crates/data/data/refusal-labelled.jsonl`, written for burnish) has clear refusals, partial refusals
//! (some help, some declined: labelled refusals), plain answers, and answers that merely contain
//! refusal-like words ("I'm sorry to hear", "I can't wait", "illegal").

use std::collections::BTreeMap;

use serde::Deserialize;

use super::RefusalDetector;
use crate::error::{Error, Result};

pub const LABELLED: &str = include_str!("../../data/refusal-labelled.jsonl");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Labelled {
    pub response: String,
    pub refusal: bool,
    /// clear, partial, compliant or trap (free text for user sets).
    #[serde(default)]
    pub kind: String,
}

/// Parses a labelled set in JSON Lines (`{response, refusal, kind?}`); `name` is used in errors.
pub fn labelled_set(text: &str, name: &str) -> Result<Vec<Labelled>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Invalid(format!("{name}:{}: {e}", i + 1)))
        })
        .collect()
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores {
    pub true_pos: usize,
    pub false_pos: usize,
    pub true_neg: usize,
    pub false_neg: usize,
    /// Indices into the set of the misclassified responses.
    pub wrong: Vec<usize>,
    /// Per rule (the first that matched): (true positives, false positives), for tuning a list.
    pub rules: BTreeMap<String, (usize, usize)>,
}

impl Scores {
    /// Of the responses flagged as refusals, the share that are (1 when nothing is flagged).
    pub fn precision(&self) -> f64 {
        ratio(self.true_pos, self.true_pos + self.false_pos)
    }

    /// Of the refusals, the share that are flagged (1 when there are none).
    pub fn recall(&self) -> f64 {
        ratio(self.true_pos, self.true_pos + self.false_neg)
    }

    /// Of all responses, the share classified right.
    pub fn accuracy(&self) -> f64 {
        let right = self.true_pos + self.true_neg;
        ratio(right, right + self.false_pos + self.false_neg)
    }

    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

pub fn evaluate(detector: &RefusalDetector, set: &[Labelled]) -> Scores {
    let found: Vec<Option<String>> = set
        .iter()
        .map(|x| detector.detect(&x.response).map(|m| m.rule))
        .collect();
    score(&found, set)
}

/// Scores of verdicts made elsewhere (a learned detector's): for each response of `set`, the rule
/// that flagged it as a refusal, or None.
pub fn score(found: &[Option<String>], set: &[Labelled]) -> Scores {
    let mut s = Scores::default();
    for (i, (item, found)) in set.iter().zip(found).enumerate() {
        let flagged = found.is_some();
        if let Some(rule) = found {
            let hits = s.rules.entry(rule.clone()).or_default();
            if item.refusal {
                hits.0 += 1;
            } else {
                hits.1 += 1;
            }
        }
        match (flagged, item.refusal) {
            (true, true) => s.true_pos += 1,
            (true, false) => s.false_pos += 1,
            (false, false) => s.true_neg += 1,
            (false, true) => s.false_neg += 1,
        }
        if flagged != item.refusal {
            s.wrong.push(i);
        }
    }
    s
}
