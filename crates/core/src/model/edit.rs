//! Reading and replacing weights by HF name (ablation orthogonalises `embed_tokens`, `o_proj`,
//! `down_proj`), and attaching, merging and unmerging LoRA adapters.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use super::linear::to_dtype;
use super::lora::{module_path, peft_key, Lora, LoraConfig, TARGETS};
use super::{Linear, Llama};
use crate::error::{Error, Result};
use crate::weights::HfNames;

fn bad_name(name: &str) -> Error {
    Error::Unsupported(format!("no weight matrix named `{name}` in this model"))
}

impl<B: Backend> Llama<B> {
    /// Layer `i`'s linear `short` (`q_proj`, ..., `down_proj`).
    pub fn linear(&self, layer: usize, short: &str) -> Option<&Linear<B>> {
        let l = self.model.layers.get(layer)?;
        match short {
            "q_proj" => l.self_attn.q_proj.as_ref(),
            "k_proj" => l.self_attn.k_proj.as_ref(),
            "v_proj" => l.self_attn.v_proj.as_ref(),
            "qkv_proj" => l.self_attn.qkv_proj.as_ref(),
            "o_proj" => Some(&l.self_attn.o_proj),
            "gate_proj" => l.mlp.gate_proj.as_ref(),
            "up_proj" => l.mlp.up_proj.as_ref(),
            "gate_up_proj" => l.mlp.gate_up_proj.as_ref(),
            "down_proj" => Some(&l.mlp.down_proj),
            _ => None,
        }
    }

    pub fn linear_mut(&mut self, layer: usize, short: &str) -> Option<&mut Linear<B>> {
        let l = self.model.layers.get_mut(layer)?;
        match short {
            "q_proj" => l.self_attn.q_proj.as_mut(),
            "k_proj" => l.self_attn.k_proj.as_mut(),
            "v_proj" => l.self_attn.v_proj.as_mut(),
            "qkv_proj" => l.self_attn.qkv_proj.as_mut(),
            "o_proj" => Some(&mut l.self_attn.o_proj),
            "gate_proj" => l.mlp.gate_proj.as_mut(),
            "up_proj" => l.mlp.up_proj.as_mut(),
            "gate_up_proj" => l.mlp.gate_up_proj.as_mut(),
            "down_proj" => Some(&mut l.mlp.down_proj),
            _ => None,
        }
    }

    /// (layer, short name) of every linear layer, in checkpoint order.
    pub fn linear_ids(&self) -> Vec<(usize, &'static str)> {
        (0..self.num_layers())
            .flat_map(|i| TARGETS.iter().map(move |t| (i, t.0)))
            .filter(|&(i, short)| self.linear(i, short).is_some())
            .collect()
    }

    /// Parses `model.layers.{i}.{self_attn|mlp}.{short}.weight`.
    fn parse_linear(name: &str) -> Option<(usize, &str)> {
        let rest = name.strip_prefix("model.layers.")?;
        let (i, rest) = rest.split_once('.')?;
        let module = rest.strip_suffix(".weight")?;
        let short = TARGETS.iter().find(|t| t.1 == module)?.0;
        Some((i.parse().ok()?, short))
    }

    /// A weight matrix by HF name, in HF orientation (`[out, in]`; embeddings `[vocab, hidden]`), in
    /// f32 whatever the base's precision. With a merged adapter this is the merged weight.
    pub fn weight(&self, name: &str) -> Option<Tensor<B, 2>> {
        let w = self.stored_weight(name)?;
        Some(to_dtype(w, DType::F32))
    }

    /// The matrix as the model holds it (in the base's precision).
    fn stored_weight(&self, name: &str) -> Option<Tensor<B, 2>> {
        match name {
            HfNames::EMBED => Some(self.model.embed_tokens.val()),
            HfNames::LM_HEAD => self.lm_head.as_ref().map(|h| h.weight.val()),
            _ => {
                let (i, short) = Self::parse_linear(name)?;
                Some(self.linear(i, short)?.weight.val())
            }
        }
    }

    /// Replaces a weight matrix by HF name; the shape must not change. The new weight is frozen and
    /// stored in the base's precision.
    pub fn set_weight(&mut self, name: &str, value: Tensor<B, 2>) -> Result<()> {
        let current = self.stored_weight(name).ok_or_else(|| bad_name(name))?;
        let value = to_dtype(value, current.dtype());
        if current.dims() != value.dims() {
            return Err(Error::Shape {
                path: "set_weight".into(),
                name: name.to_string(),
                expected: current.dims().to_vec(),
                actual: value.dims().to_vec(),
            });
        }
        let slot = match name {
            HfNames::EMBED => &mut self.model.embed_tokens,
            HfNames::LM_HEAD => &mut self.lm_head.as_mut().ok_or_else(|| bad_name(name))?.weight,
            _ => {
                let (i, short) = Self::parse_linear(name).ok_or_else(|| bad_name(name))?;
                &mut self
                    .linear_mut(i, short)
                    .ok_or_else(|| bad_name(name))?
                    .weight
            }
        };
        *slot = Param::initialized(slot.id, value);
        Ok(())
    }

    /// Adds `v` `[hidden]` to the residual stream entering layer `layer` (>= 1), at every position: as
    /// the bias of layer `layer - 1`'s `down_proj`, so generation and export need nothing special.
    /// Every MLP linear gets a (zero) bias, so the model stays a valid `mlp_bias = true` checkpoint.
    pub fn add_residual_bias(&mut self, layer: usize, v: Tensor<B, 1>) -> Result<()> {
        self.check_steer_layer(layer)?;
        self.ensure_mlp_bias(&v.device());
        let lin = self
            .linear_mut(layer - 1, "down_proj")
            .expect("known target");
        let b = lin.bias.as_ref().expect("just set").val();
        lin.bias = Some(super::linear::frozen(b + v));
        Ok(())
    }

    /// Adds a gated unit to the MLP of layer `layer - 1`, writing `silu(g·x̂ + g_bias) · d` into the
    /// residual stream entering `layer`, where x̂ is the MLP's normed input: `d` switches on only at
    /// positions whose input points along `g` (conditional steering). It is one more intermediate
    /// neuron (its `up_proj` row is 0 with bias 1), added to every layer — zero elsewhere — so all layers
    /// keep one `intermediate_size` and the model stays an ordinary Llama checkpoint with `mlp_bias`.
    pub fn add_gated_unit(
        &mut self,
        layer: usize,
        gate: Tensor<B, 1>,
        gate_bias: f32,
        down: Tensor<B, 1>,
    ) -> Result<()> {
        self.check_steer_layer(layer)?;
        let device = gate.device();
        let h = self.hidden_size();
        if gate.dims()[0] != h || down.dims()[0] != h {
            return Err(Error::Unsupported(format!(
                "a gated unit needs vectors of the hidden size {h}"
            )));
        }
        for i in 0..self.num_layers() {
            for short in ["gate_proj", "up_proj", "down_proj"] {
                if self.linear(i, short).is_some_and(|l| l.lora.is_some()) {
                    return Err(Error::Unsupported(
                        "a gated unit changes the MLP's shape: merge or drop LoRA adapters first"
                            .into(),
                    ));
                }
            }
        }
        self.ensure_mlp_bias(&device);
        let zeros = || Tensor::<B, 1>::zeros([h], &device);
        let one = |x: f32| Tensor::<B, 1>::from_floats([x], &device);
        for i in 0..self.num_layers() {
            let on = i + 1 == layer;
            let (g, gb, d, ub) = if on {
                (gate.clone(), gate_bias, down.clone(), 1.0)
            } else {
                (zeros(), 0.0, zeros(), 0.0)
            };
            let grow = |lin: &mut Linear<B>, row: Tensor<B, 1>, bias: f32| {
                let row = to_dtype(row, lin.weight.val().dtype());
                let w = Tensor::cat(vec![lin.weight.val(), row.unsqueeze_dim(0)], 0);
                let b = lin.bias.as_ref().expect("just set").val();
                lin.weight = super::linear::frozen(w);
                lin.bias = Some(super::linear::frozen(Tensor::cat(vec![b, one(bias)], 0)));
            };
            grow(self.linear_mut(i, "gate_proj").expect("known"), g, gb);
            grow(self.linear_mut(i, "up_proj").expect("known"), zeros(), ub);
            let lin = self.linear_mut(i, "down_proj").expect("known");
            let d = to_dtype(d, lin.weight.val().dtype());
            let w = Tensor::cat(vec![lin.weight.val(), d.unsqueeze_dim(1)], 1);
            lin.weight = super::linear::frozen(w);
        }
        Ok(())
    }

    fn check_steer_layer(&self, layer: usize) -> Result<()> {
        if layer == 0 || layer >= self.num_layers() {
            return Err(Error::Unsupported(format!(
                "a residual bias can enter layers 1..{} (through the previous layer's MLP), not {layer}",
                self.num_layers()
            )));
        }
        // Steering is a bias on the previous layer's down_proj; after Gemma's post-feedforward norm it
        // would be rescaled with the rest of the MLP's output instead of added to the residual stream.
        if self.model.layers[layer - 1].mlp.gate_up_proj.is_some() {
            return Err(Error::Unsupported(
                "steering writes MLP biases, which Phi-3's checkpoints (fused gate_up_proj) cannot \
                 carry; directional ablation works on these models"
                    .into(),
            ));
        }
        if self.model.layers[layer - 1]
            .post_feedforward_layernorm
            .is_some()
        {
            return Err(Error::Unsupported(
                "steering adds to the residual stream through the previous layer's down_proj bias, \
                 which a post-feedforward norm (Gemma) rescales; directional ablation works on these \
                 models"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Every MLP linear gets a (zero) bias if it has none.
    fn ensure_mlp_bias(&mut self, device: &B::Device) {
        for i in 0..self.num_layers() {
            for short in ["gate_proj", "up_proj", "down_proj"] {
                let Some(lin) = self.linear_mut(i, short) else {
                    continue;
                };
                if lin.bias.is_none() {
                    lin.bias = Some(super::linear::frozen(Tensor::zeros(
                        [lin.out_features()],
                        device,
                    )));
                }
            }
        }
    }

    /// The MLP's intermediate size (`intermediate_size` of the exported config).
    pub fn intermediate_size(&self) -> usize {
        self.linear(0, "down_proj").map_or(0, |l| l.in_features())
    }

    /// Whether the MLP linears carry biases (`mlp_bias` of the exported config).
    pub fn has_mlp_bias(&self) -> bool {
        self.linear(0, "down_proj")
            .is_some_and(|l| l.bias.is_some())
    }

    /// Every base tensor with its HF name and shape, flattened (for export).
    pub fn named_tensors(&self) -> Vec<(String, Vec<usize>, Tensor<B, 1>)> {
        let mut out = Vec::new();
        let mut push2 = |name: String, t: Tensor<B, 2>| {
            let dims = t.dims().to_vec();
            out.push((name, dims, t.flatten(0, 1)));
        };
        push2(HfNames::EMBED.to_string(), self.model.embed_tokens.val());
        let mut ones = Vec::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            for (short, sub) in TARGETS {
                let Some(lin) = self.linear(i, short) else {
                    continue;
                };
                push2(
                    HfNames::layer(i, &format!("{sub}.weight")),
                    lin.weight.val(),
                );
                if let Some(b) = &lin.bias {
                    ones.push((HfNames::layer(i, &format!("{sub}.bias")), b.val()));
                }
            }
            for (sub, norm) in layer.norms() {
                ones.push((
                    HfNames::layer(i, &format!("{sub}.weight")),
                    norm.weight.val(),
                ));
            }
        }
        ones.push((HfNames::NORM.to_string(), self.model.norm.weight.val()));
        if let Some(h) = &self.lm_head {
            push2(HfNames::LM_HEAD.to_string(), h.weight.val());
        }
        out.extend(ones.into_iter().map(|(n, t)| {
            let d = t.dims().to_vec();
            (n, d, t)
        }));
        out
    }

    /// Attaches fresh adapters (A initialised, B = 0) to the configured modules; replaces existing ones.
    pub fn attach_lora(&mut self, cfg: &LoraConfig, seed: u64, device: &B::Device) -> Result<()> {
        cfg.validate(self.num_layers())?;
        let mut attached = 0;
        for (i, short) in self.linear_ids() {
            if cfg.applies(i, short) {
                let mut rng = crate::rng::for_tensor(seed, &peft_key(&module_path(i, short), 'A'));
                let lin = self.linear_mut(i, short).expect("listed by linear_ids");
                let (d_in, d_out) = (lin.in_features(), lin.out_features());
                lin.lora = Some(Lora::init(cfg, d_in, d_out, &mut rng, device));
                attached += 1;
            }
        }
        if attached == 0 {
            // PEFT refuses this too ("Target modules ... not found"): an adapter on nothing trains nothing.
            let here: Vec<&str> = self
                .linear_ids()
                .into_iter()
                .filter(|&(i, _)| i == 0)
                .map(|(_, s)| s)
                .collect();
            return Err(Error::Config {
                path: "[lora]".into(),
                msg: format!(
                    "target_modules {:?} match no linear layer of this model; it has {}",
                    cfg.target_modules,
                    here.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Linears that carry an adapter, as (HF module path, adapter).
    pub fn adapters(&self) -> Vec<(String, &Lora<B>)> {
        self.linear_ids()
            .into_iter()
            .filter_map(|(i, short)| {
                let l = self.linear(i, short)?.lora.as_ref()?;
                Some((module_path(i, short), l))
            })
            .collect()
    }

    /// Mutable adapters with their HF module paths (the optimizer writes updated A/B back through these).
    pub fn adapters_mut(&mut self) -> Vec<(String, &mut Lora<B>)> {
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            let lins = [
                ("q_proj", a.q_proj.as_mut()),
                ("k_proj", a.k_proj.as_mut()),
                ("v_proj", a.v_proj.as_mut()),
                ("qkv_proj", a.qkv_proj.as_mut()),
                ("o_proj", Some(&mut a.o_proj)),
                ("gate_proj", m.gate_proj.as_mut()),
                ("up_proj", m.up_proj.as_mut()),
                ("gate_up_proj", m.gate_up_proj.as_mut()),
                ("down_proj", Some(&mut m.down_proj)),
            ];
            for (short, lin) in lins {
                if let Some(l) = lin.and_then(|l| l.lora.as_mut()) {
                    out.push((module_path(i, short), l));
                }
            }
        }
        out
    }

    pub fn has_adapters(&self) -> bool {
        !self.adapters().is_empty()
    }

    /// Folds every adapter into its base weight (`W += s·BA`); forward passes then cost nothing extra.
    pub fn merge_adapters(&mut self) {
        self.fold(true);
    }

    /// Undoes `merge_adapters` (`W -= s·BA`).
    pub fn unmerge_adapters(&mut self) {
        self.fold(false);
    }

    fn fold(&mut self, merge: bool) {
        for (i, short) in self.linear_ids() {
            let lin = self.linear_mut(i, short).expect("listed by linear_ids");
            let Some(lora) = lin.lora.as_mut() else {
                continue;
            };
            if lora.merged == merge {
                continue;
            }
            let w = lin.weight.val();
            let delta = to_dtype(lora.delta_weight().detach(), w.dtype());
            let w = if merge { w + delta } else { w - delta };
            lin.weight = Param::initialized(lin.weight.id, w);
            lora.merged = merge;
        }
    }

    /// Removes all adapters, merging them first when `merge` is set (export of a merged model).
    pub fn drop_adapters(&mut self, merge: bool) {
        if merge {
            self.merge_adapters();
        } else {
            self.unmerge_adapters();
        }
        for (i, short) in self.linear_ids() {
            self.linear_mut(i, short)
                .expect("listed by linear_ids")
                .lora = None;
        }
    }
}
