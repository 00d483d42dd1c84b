//! Selection among candidate directions (Arditi et al. 2024): each candidate is scored by what ablating
//! it does to harmful prompts' refusal score and to harmless prompts' first-token KL, and by whether adding
//! it induces refusal; steering picks the candidate that raises harmful prompts' refusal score most above
//! harmless prompts'.

use burnish_core::backend::Cpu;
use burnish_core::Llama;
use serde_json::{json, Value};

use super::directions::unit;
use super::weights::{ablate, steer, Kernels};
use super::{tensor, Ctx, Mode};
use crate::Result;

/// Scores every candidate below `max_layer` and picks one: (all scores, the pick, why it was picked).
pub(super) fn select(
    ctx: &Ctx<'_>,
    model: &Llama<Cpu>,
    dir: &dyn Fn(usize, usize) -> Vec<f64>,
    layers: usize,
    npos: usize,
    max_layer: usize,
) -> Result<(Vec<Value>, Value, &'static str)> {
    let cfg = ctx.cfg;
    let t = std::time::Instant::now();
    let mut selection = Vec::new();
    // A direction of (nearly) zero length carries no signal: e.g. at layer 0 every prompt has the same
    // token at the last position, so the means coincide.
    let norms: Vec<f64> = (0..max_layer * npos)
        .map(|k| {
            dir(k / npos, k % npos)
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let typical = norms.iter().cloned().fold(0.0, f64::max);
    for l in 0..max_layer {
        for p in 0..npos {
            let r = dir(l, p);
            if norms[l * npos + p] < 1e-3 * typical {
                continue;
            }
            let r32: Vec<f32> = r.iter().map(|&x| x as f32).collect();
            let induce = |prompts: &[Vec<u32>]| -> Result<f64> {
                Ok(if l == 0 {
                    f64::NAN
                } else {
                    ctx.score(&steer(model, l, tensor(&r32))?, prompts)
                })
            };
            let row = match cfg.mode {
                Mode::Ablate => {
                    let abl = ablate(
                        model,
                        &tensor(&unit(&r)),
                        &Kernels::flat(1.0, layers),
                        cfg.embeddings,
                        cfg.norm_preserving,
                    )?;
                    json!({"layer": l, "position": p, "bypass_score": ctx.score(&abl, &ctx.harmful_val),
                           "kl": ctx.kl(&abl), "induce_score": induce(&ctx.harmless_val)?})
                }
                Mode::Steer => {
                    json!({"layer": l, "position": p, "induce_score": induce(&ctx.harmless_val)?,
                                      "induce_harmful_score": induce(&ctx.harmful_val)?})
                }
            };
            selection.push(row);
            if selection.len() % 5 == 0 {
                eprintln!(
                    "ablate: selection: {} candidates scored ({:.0}s)",
                    selection.len(),
                    t.elapsed().as_secs_f64()
                );
            }
        }
    }
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let pick = |rows: Vec<&Value>, key: &dyn Fn(&Value) -> f64| -> Option<Value> {
        rows.into_iter()
            .filter(|r| key(r).is_finite())
            .min_by(|a, b| key(a).total_cmp(&key(b)))
            .cloned()
    };
    let (selected, filter) = match cfg.mode {
        Mode::Ablate => {
            let bypass = |r: &Value| f(r, "bypass_score");
            let ok_kl = |r: &&Value| f(r, "kl") <= cfg.kl_bound;
            // Layer 0 has no induce score (NaN): nothing can be added before the first layer.
            let ok_induce = |r: &&Value| {
                let s = f(r, "induce_score");
                s.is_nan() || s > 0.0
            };
            if let Some(s) = pick(
                selection.iter().filter(ok_kl).filter(ok_induce).collect(),
                &bypass,
            ) {
                (s, "kl and induce filters passed")
            } else if let Some(s) = pick(selection.iter().filter(ok_kl).collect(), &bypass) {
                (s, "no candidate induces refusal; kl filter only")
            } else {
                (
                    pick(selection.iter().collect(), &bypass).expect("candidates"),
                    "no candidate passes the kl filter",
                )
            }
        }
        Mode::Steer => {
            let selectivity = |r: &Value| -(f(r, "induce_harmful_score") - f(r, "induce_score"));
            let induces = |r: &&Value| f(r, "induce_harmful_score") > 0.0;
            match pick(selection.iter().filter(induces).collect(), &selectivity) {
                Some(s) => (
                    s,
                    "most selective candidate that induces refusal on harmful prompts",
                ),
                None => (
                    pick(selection.iter().collect(), &|r| {
                        -f(r, "induce_harmful_score")
                    })
                    .expect("candidates"),
                    "no candidate induces refusal; strongest one",
                ),
            }
        }
    };
    Ok((selection, selected, filter))
}
