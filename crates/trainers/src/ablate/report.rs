//! What an ablation run reports: report.json (and the rows of trials.jsonl). Tests, docs/ablate.md and
//! the showcase read these files, so the types serialize to exactly their keys and order.

use serde::{Deserialize, Serialize};

use super::search::Trial;
use super::select::Candidate;
use super::Mode;
use crate::eval::{EvalReport, Named};

/// A model's behaviour on the validation prompts. Ablation measures KL to the unedited model on the
/// harmless prompts; steering measures refusals on them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Share of the harmful validation prompts refused.
    pub refusal_rate: f64,
    /// `ablate`: mean first-token KL(unedited ‖ edited) on the harmless validation prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    /// `steer`: share of the harmless validation prompts refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harmless_refusal_rate: Option<f64>,
}

/// A search trial's measurements and parameters (a trials.jsonl row's `info`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrialInfo {
    #[serde(flatten)]
    pub measured: Measured,
    /// Building and measuring the edit.
    pub seconds: f64,
    /// Gated steering: share of the `[data]` prompts the gate classifies right.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_accuracy: Option<f64>,
    /// The trial's parameters by name, in search order.
    pub params: Named<f64>,
}

/// The unedited model on the validation prompts: the point the search starts from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// The search's two objectives (both minimised).
    pub objectives: [f64; 2],
    pub info: Measured,
}

/// An ablation (or steering) run: report.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AblateReport {
    pub mode: Mode,
    pub layers: usize,
    /// Positions per prompt the activations were read at.
    pub positions: usize,
    /// The candidate selection picked (null when `select = false`).
    pub selected: Option<Candidate>,
    /// Why it was picked.
    pub selection_filter: String,
    /// Mean refusal score of the unedited model on the harmful validation prompts.
    pub unedited_refusal_score: f64,
    pub baseline_val: Baseline,
    /// The trial whose edit was applied and exported.
    pub chosen: Trial,
    /// Indices of the trials on the Pareto front.
    pub pareto_front: Vec<usize>,
    pub search_seconds: f64,
    /// The unedited model on the `[eval]` sets (null when `eval_before = false`).
    pub before: Option<EvalReport>,
    /// The edited model on the `[eval]` sets, with KL to the unedited one.
    pub after: EvalReport,
    /// The whole run.
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ablate::select::{AblateScores, Scores, SteerScores};
    use serde_json::Value;

    fn keys(v: &Value) -> Vec<String> {
        v.as_object().expect("an object").keys().cloned().collect()
    }

    /// selection.jsonl rows as before the typed rows: by mode, and with null (not absent) induce scores
    /// at layer 0.
    #[test]
    fn candidate_rows_keep_their_layout() {
        let ablate = Candidate {
            layer: 0,
            position: 1,
            scores: Scores::Ablate(AblateScores {
                bypass_score: -1.5,
                kl: 0.25,
                induce_score: None,
            }),
        };
        let v = serde_json::to_value(&ablate).unwrap();
        assert_eq!(
            keys(&v),
            ["layer", "position", "bypass_score", "kl", "induce_score"]
        );
        assert!(v["induce_score"].is_null());
        assert_eq!(serde_json::from_value::<Candidate>(v).unwrap(), ablate);
        let steer = Candidate {
            layer: 3,
            position: 0,
            scores: Scores::Steer(SteerScores {
                induce_score: Some(0.5),
                induce_harmful_score: Some(2.0),
            }),
        };
        let v = serde_json::to_value(&steer).unwrap();
        assert_eq!(
            keys(&v),
            ["layer", "position", "induce_score", "induce_harmful_score"]
        );
        assert_eq!(serde_json::from_value::<Candidate>(v).unwrap(), steer);
    }

    /// trials.jsonl rows: `info` holds the measurements, the time, the gate's accuracy (gated steering
    /// only) and the parameters by name in search order.
    #[test]
    fn trial_rows_keep_their_layout() {
        let trial = Trial {
            index: 2,
            params: vec![4.0, 1.5, 0.5],
            objectives: [0.25, 0.0],
            info: TrialInfo {
                measured: Measured {
                    refusal_rate: 0.75,
                    kl: None,
                    harmless_refusal_rate: Some(0.0),
                },
                seconds: 1.5,
                gate_accuracy: Some(1.0),
                params: [("layer", 4.0), ("scale", 1.5), ("threshold", 0.5)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            },
        };
        let v = serde_json::to_value(&trial).unwrap();
        assert_eq!(keys(&v), ["index", "params", "objectives", "info"]);
        assert_eq!(
            keys(&v["info"]),
            [
                "refusal_rate",
                "harmless_refusal_rate",
                "seconds",
                "gate_accuracy",
                "params"
            ]
        );
        assert_eq!(keys(&v["info"]["params"]), ["layer", "scale", "threshold"]);
        assert_eq!(serde_json::from_value::<Trial>(v).unwrap(), trial);
        let ablated = TrialInfo {
            measured: Measured {
                refusal_rate: 0.5,
                kl: Some(0.125),
                harmless_refusal_rate: None,
            },
            gate_accuracy: None,
            ..trial.info
        };
        assert_eq!(
            keys(&serde_json::to_value(&ablated).unwrap()),
            ["refusal_rate", "kl", "seconds", "params"]
        );
    }
}
