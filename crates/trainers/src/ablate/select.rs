//! Selection among candidate directions (Arditi et al. 2024): each candidate is scored by what ablating
//! it does to harmful prompts' refusal score and to harmless prompts' first-token KL, and by whether adding
//! it induces refusal; steering picks the candidate that raises harmful prompts' refusal score most above
//! harmless prompts'.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::directions::unit;
use super::prepare::{Ctx, Directions};
use super::weights::{ablate, steer, Kernels};
use super::{tensor, Mode};
use crate::Result;
use burnish_core::burn::tensor::backend::Backend;

/// A scored candidate direction (a line of selection.jsonl).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub layer: usize,
    pub position: usize,
    #[serde(flatten)]
    pub scores: Scores,
}

/// A candidate's scores, by mode. The induce scores are absent (null) at layer 0: nothing can be
/// added before the first layer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scores {
    Ablate(AblateScores),
    Steer(SteerScores),
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AblateScores {
    /// Harmful prompts' mean refusal score with the direction ablated everywhere (lower bypasses more).
    pub bypass_score: f64,
    /// Harmless prompts' first-token KL to the unedited model with it ablated.
    pub kl: f64,
    /// Harmless prompts' mean refusal score with the direction added at its layer.
    pub induce_score: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SteerScores {
    /// Harmless prompts' mean refusal score with the direction added at its layer.
    pub induce_score: Option<f64>,
    /// Harmful prompts' mean refusal score with it added.
    pub induce_harmful_score: Option<f64>,
}

/// What selection found.
#[derive(Clone, Debug)]
pub struct Selection {
    /// Every candidate scored, in (layer, position) order.
    pub candidates: Vec<Candidate>,
    /// The pick; none when selection is skipped.
    pub selected: Option<Candidate>,
    /// Why it was picked.
    pub filter: &'static str,
}

impl Selection {
    pub fn skipped() -> Self {
        Self {
            candidates: Vec::new(),
            selected: None,
            filter: "selection skipped (select = false)",
        }
    }
}

/// Scores every candidate below `max_layer` and picks one.
pub(super) fn select<B: Backend>(
    ctx: &Ctx<'_, B>,
    dirs: &Directions,
    max_layer: usize,
) -> Result<Selection> {
    let candidates = score(ctx, dirs, max_layer)?;
    let (selected, filter) = match ctx.cfg.mode {
        Mode::Ablate => pick_ablate(&candidates, ctx.cfg.kl_bound),
        // Subtraction removes what steering adds: the direction that induces refusal best.
        Mode::Steer | Mode::Subtract => pick_steer(&candidates),
    };
    Ok(Selection {
        candidates,
        selected: Some(selected),
        filter,
    })
}

/// Scores of the candidates with a direction, in (layer, position) order.
fn score<B: Backend>(
    ctx: &Ctx<'_, B>,
    dirs: &Directions,
    max_layer: usize,
) -> Result<Vec<Candidate>> {
    let (cfg, model) = (ctx.cfg, &ctx.model.model);
    let npos = dirs.npos;
    let t = Instant::now();
    // A direction of (nearly) zero length carries no signal: e.g. at layer 0 every prompt has the same
    // token at the last position, so the means coincide.
    let norms: Vec<f64> = (0..max_layer * npos)
        .map(|k| norm(&dirs.dir(k / npos, k % npos)))
        .collect();
    let typical = norms.iter().cloned().fold(0.0, f64::max);
    let mut out = Vec::new();
    for layer in 0..max_layer {
        for position in 0..npos {
            if norms[layer * npos + position] < 1e-3 * typical {
                continue;
            }
            let r = dirs.dir(layer, position);
            let r32: Vec<f32> = r.iter().map(|&x| x as f32).collect();
            let induce = |prompts: &[Vec<u32>]| -> Result<Option<f64>> {
                if layer == 0 {
                    return Ok(None);
                }
                Ok(Some(ctx.score(
                    &steer(model, layer, tensor(&r32, &model.device()))?,
                    prompts,
                )))
            };
            let scores = match cfg.mode {
                Mode::Ablate => {
                    let abl = ablate(
                        model,
                        &tensor(&unit(&r), &model.device()),
                        &Kernels::flat(1.0, dirs.layers),
                        cfg.embeddings,
                        cfg.norm_preserving,
                    )?;
                    Scores::Ablate(AblateScores {
                        bypass_score: ctx.score(&abl, &ctx.harmful_val),
                        kl: ctx.kl(&abl),
                        induce_score: induce(&ctx.harmless_val)?,
                    })
                }
                Mode::Steer | Mode::Subtract => Scores::Steer(SteerScores {
                    induce_score: induce(&ctx.harmless_val)?,
                    induce_harmful_score: induce(&ctx.harmful_val)?,
                }),
            };
            out.push(Candidate {
                layer,
                position,
                scores,
            });
            if out.len() % 5 == 0 {
                ctx.progress.message(&format!(
                    "ablate: selection: {} candidates scored ({:.0}s)",
                    out.len(),
                    t.elapsed().as_secs_f64()
                ));
            }
        }
    }
    Ok(out)
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// The candidate with the smallest finite `key` among `rows`.
fn lowest<'a, S>(
    rows: impl Iterator<Item = &'a (&'a Candidate, S)>,
    key: impl Fn(&S) -> f64,
) -> Option<Candidate>
where
    S: 'a,
{
    rows.filter(|(_, s)| key(s).is_finite())
        .min_by(|(_, a), (_, b)| key(a).total_cmp(&key(b)))
        .map(|(c, _)| (*c).clone())
}

/// Ablation: the lowest bypass score among candidates that keep KL within `kl_bound` and whose
/// addition induces refusal, relaxing the filters in that order when none passes.
fn pick_ablate(candidates: &[Candidate], kl_bound: f64) -> (Candidate, &'static str) {
    let rows: Vec<(&Candidate, AblateScores)> = candidates
        .iter()
        .filter_map(|c| match c.scores {
            Scores::Ablate(s) => Some((c, s)),
            Scores::Steer(_) => None,
        })
        .collect();
    let bypass = |s: &AblateScores| s.bypass_score;
    let ok_kl = |r: &&(&Candidate, AblateScores)| r.1.kl <= kl_bound;
    // Layer 0 has no induce score: it passes, as nothing could be added there to test it.
    let ok_induce =
        |r: &&(&Candidate, AblateScores)| r.1.induce_score.is_none_or(|s| s.is_nan() || s > 0.0);
    if let Some(s) = lowest(rows.iter().filter(ok_kl).filter(ok_induce), bypass) {
        (s, "kl and induce filters passed")
    } else if let Some(s) = lowest(rows.iter().filter(ok_kl), bypass) {
        (s, "no candidate induces refusal; kl filter only")
    } else {
        (
            lowest(rows.iter(), bypass).expect("candidates"),
            "no candidate passes the kl filter",
        )
    }
}

/// Steering: the most selective candidate (harmful minus harmless induced score) among those that
/// induce refusal on harmful prompts, else the strongest on harmful prompts.
fn pick_steer(candidates: &[Candidate]) -> (Candidate, &'static str) {
    let rows: Vec<(&Candidate, SteerScores)> = candidates
        .iter()
        .filter_map(|c| match c.scores {
            Scores::Steer(s) => Some((c, s)),
            Scores::Ablate(_) => None,
        })
        .collect();
    let nan = |x: Option<f64>| x.unwrap_or(f64::NAN);
    let harmful = |s: &SteerScores| nan(s.induce_harmful_score);
    let selectivity = |s: &SteerScores| -(harmful(s) - nan(s.induce_score));
    let induces = |r: &&(&Candidate, SteerScores)| harmful(&r.1) > 0.0;
    match lowest(rows.iter().filter(induces), selectivity) {
        Some(s) => (
            s,
            "most selective candidate that induces refusal on harmful prompts",
        ),
        None => (
            lowest(rows.iter(), |s| -harmful(s)).expect("candidates"),
            "no candidate induces refusal; strongest one",
        ),
    }
}
