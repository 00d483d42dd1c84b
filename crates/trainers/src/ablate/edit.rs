//! The edit a search point describes, and the space of those points. Ablation: a direction interpolated
//! between layers (parameter 0, a fractional layer index) removed with one strength kernel for the
//! attention and one for the MLP writes. Steering: the candidate of one layer, scaled, added there —
//! through a gated MLP unit when `gate` is on (a third parameter: the gate's threshold). Subtraction:
//! the same gated unit with the vector negated.

use std::path::Path;

use burnish_core::burn::tensor::backend::Backend;
use burnish_core::Llama;

use super::directions::unit;
use super::gate;
use super::prepare::Directions;
use super::search::Range;
use super::weights::{ablate, steer, Kernel, Kernels};
use super::{tensor, AblateConfig, Mode};
use crate::Result;

/// The parameters a search explores.
pub(super) struct Space {
    pub names: &'static [&'static str],
    pub ranges: Vec<Range>,
    /// The first trial: the selected candidate at full strength, when selection ran.
    pub first: Option<Vec<f64>>,
}

/// Builds edited copies of the unedited model.
pub(super) struct Editor<'a, B: Backend> {
    pub cfg: &'a AblateConfig,
    pub model: &'a Llama<B>,
    pub dirs: &'a Directions,
    /// The candidates' position the edit takes its direction from: the selected one, else the last
    /// (the first generated token's).
    pub position: usize,
}

impl<B: Backend> Editor<'_, B> {
    fn gated(&self) -> bool {
        self.cfg.gated()
    }

    /// Steering and subtraction: the vector added at the trial's layer, the candidate scaled (negated
    /// for subtraction, which removes what steering adds).
    fn added(&self, params: &[f64]) -> Vec<f64> {
        let sign = match self.cfg.mode {
            Mode::Subtract => -1.0,
            _ => 1.0,
        };
        self.dir(params[0].round() as usize)
            .iter()
            .map(|&x| sign * x * params[1])
            .collect()
    }

    fn dir(&self, layer: usize) -> Vec<f64> {
        self.dirs.dir(layer, self.position)
    }

    /// The direction at a fractional layer index: linear interpolation of the neighbouring layers'.
    fn interpolated(&self, index: f64) -> Vec<f64> {
        let max = self.dirs.layers;
        let i = index.clamp(0.0, (max - 1) as f64);
        let (lo, hi) = (i.floor() as usize, (i.ceil() as usize).min(max - 1));
        let f = i - lo as f64;
        let (a, b) = (self.dir(lo), self.dir(hi));
        a.iter()
            .zip(&b)
            .map(|(x, y)| x * (1.0 - f) + y * f)
            .collect()
    }

    /// The search space. Ablation ranges as heretic's: the direction from 40–90% of the depth, each
    /// component's kernel peaking in the last 40% with strength 0.8–1.5; the falloff may span the whole
    /// model. Steering: a layer below `max_layer` and a scale, and for a gate its threshold, as a
    /// fraction of the way from the harmless prompts' mean cosine to the harmful prompts'. Subtraction:
    /// the same three, the scale up to 3 (once the harmful mean is moved to the harmless one, more only
    /// pushes it past) and the threshold from the harmless mean (0), so that harmless prompts the
    /// model leans to refuse open the gate too.
    pub fn space(&self, selected_layer: Option<usize>, max_layer: usize) -> Space {
        let layers = self.dirs.layers;
        let last = (layers - 1) as f64;
        let range = |lo: f64, hi: f64| Range { lo, hi };
        let sl = selected_layer;
        let steer_layer = range(1.0, (max_layer - 1) as f64);
        match self.cfg.mode {
            Mode::Ablate => {
                let kernel = [
                    range(0.8, 1.5),
                    range(0.6 * last, last),
                    range(0.0, 1.0),
                    range(1.0, layers as f64),
                ];
                let lo = sl.map_or(0.4 * last, |l| (l as f64).min(0.4 * last));
                let mut ranges = vec![range(lo, 0.9 * last)];
                ranges.extend(kernel);
                ranges.extend(kernel);
                let flat = [1.0, 0.0, 1.0, layers as f64];
                Space {
                    names: &[
                        "direction_index",
                        "attn_max_weight",
                        "attn_peak",
                        "attn_min_weight_fraction",
                        "attn_distance",
                        "mlp_max_weight",
                        "mlp_peak",
                        "mlp_min_weight_fraction",
                        "mlp_distance",
                    ],
                    ranges,
                    first: sl.map(|l| [&[l as f64][..], &flat, &flat].concat()),
                }
            }
            Mode::Subtract => Space {
                names: &["layer", "scale", "threshold"],
                ranges: vec![steer_layer, range(0.25, 3.0), range(0.0, 0.9)],
                first: sl.map(|l| vec![l.max(1) as f64, 1.0, 0.5]),
            },
            Mode::Steer if self.gated() => Space {
                names: &["layer", "scale", "threshold"],
                ranges: vec![steer_layer, range(0.25, 6.0), range(0.1, 0.9)],
                first: sl.map(|l| vec![l.max(1) as f64, 1.0, 0.5]),
            },
            Mode::Steer => Space {
                names: &["layer", "scale"],
                ranges: vec![steer_layer, range(0.25, 6.0)],
                first: sl.map(|l| vec![l.max(1) as f64, 1.0]),
            },
        }
    }

    /// A copy of the model with the edit `params` describe.
    pub fn build(&self, params: &[f64]) -> Result<Llama<B>> {
        match self.cfg.mode {
            Mode::Ablate => {
                let r = unit(&self.interpolated(params[0]));
                let kernel = |p: &[f64]| Kernel {
                    max_weight: p[0],
                    peak: p[1],
                    min_weight: p[2] * p[0],
                    distance: p[3],
                };
                let k = Kernels {
                    attn: kernel(&params[1..5]),
                    mlp: kernel(&params[5..9]),
                };
                ablate(
                    self.model,
                    &tensor(&r, &self.model.device()),
                    &k,
                    self.cfg.embeddings,
                    self.cfg.norm_preserving,
                )
            }
            Mode::Steer | Mode::Subtract => {
                let l = params[0].round() as usize;
                let v = self.added(params);
                match self.dirs.condition(l) {
                    Some(c) => {
                        gate::steer_gated(self.model, l, &v, &c, params[2]).map_err(Into::into)
                    }
                    None => {
                        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                        steer(self.model, l, tensor(&v, &self.model.device()))
                    }
                }
            }
        }
    }

    /// Gated steering: share of the `[data]` prompts the gate of `params` classifies right.
    pub fn gate_accuracy(&self, params: &[f64]) -> Option<f64> {
        let c = self.dirs.condition(params[0].round() as usize)?;
        Some(c.accuracy(c.threshold(params[2])))
    }

    /// The direction the edit removes (unit) or the vector it adds (scaled; negative for subtraction).
    fn vector(&self, params: &[f64]) -> Vec<f32> {
        match self.cfg.mode {
            Mode::Ablate => unit(&self.interpolated(params[0])),
            Mode::Steer | Mode::Subtract => self.added(params).iter().map(|&x| x as f32).collect(),
        }
    }

    /// direction.safetensors: the edit's vector, the candidates and the class means, and for a gate its
    /// unit's weights.
    pub fn write(&self, path: &Path, params: &[f64]) -> Result<()> {
        let (layers, npos, hidden) = (self.dirs.layers, self.dirs.npos, self.dirs.hidden);
        let f32s =
            |v: &[f64]| -> Vec<u8> { v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect() };
        let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let vector = self.vector(params);
        let shape = vec![layers, npos, hidden];
        let mut tensors = vec![
            ("direction".to_string(), vec![hidden], bytes(&vector)),
            (
                "candidates".into(),
                shape.clone(),
                f32s(&self.dirs.candidates),
            ),
            (
                "harmful_mean".into(),
                shape.clone(),
                f32s(&self.dirs.harmful_mean),
            ),
            (
                "harmless_mean".into(),
                shape,
                f32s(&self.dirs.harmless_mean),
            ),
        ];
        let l = params[0].round() as usize;
        if let (Some(c), true) = (self.dirs.condition(l), self.gated()) {
            // From the vector as stored above (f32), as the run has always written it.
            let v: Vec<f64> = vector.iter().map(|&x| f64::from(x)).collect();
            let (g, b, d) = gate::unit_weights(self.model, l, &v, &c, params[2]);
            tensors.push(("gate_weight".into(), vec![hidden], bytes(&g)));
            tensors.push(("gate_bias".into(), vec![1], bytes(&[b])));
            tensors.push(("gate_down".into(), vec![hidden], bytes(&d)));
        }
        let mode = match (self.cfg.mode, self.gated()) {
            (Mode::Ablate, _) => "ablate (unit direction)",
            (Mode::Steer, true) => {
                "steer (added vector, gated by an MLP unit of the previous layer)"
            }
            (Mode::Steer, false) => "steer (added vector)",
            (Mode::Subtract, _) => {
                "subtract (added vector, the negated candidate, gated by an MLP unit of the previous \
                 layer)"
            }
        };
        burnish_core::weights::write_safetensors(
            path,
            burnish_core::safetensors::Dtype::F32,
            &tensors,
            &[("mode", mode)],
        )?;
        Ok(())
    }
}
