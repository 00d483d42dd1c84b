// PEFT names the adapter matrices `lora_A` / `lora_B`; the module tree keeps those names.
#![allow(non_snake_case)]

//! LoRA adapters (Hu et al. 2021) with PEFT's names, defaults and initialisation: `W x + s · B A x` with
//! `s = lora_alpha / r` (or `/ sqrt(r)` with `use_rslora`), A kaiming-uniform (or gaussian), B = 0.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng;
use crate::weights::HfNames;

/// Every module LoRA can target, with its HF sub-path in a decoder layer.
pub const TARGETS: [(&str, &str); 9] = [
    ("q_proj", "self_attn.q_proj"),
    ("k_proj", "self_attn.k_proj"),
    ("v_proj", "self_attn.v_proj"),
    ("qkv_proj", "self_attn.qkv_proj"),
    ("o_proj", "self_attn.o_proj"),
    ("gate_proj", "mlp.gate_proj"),
    ("up_proj", "mlp.up_proj"),
    ("gate_up_proj", "mlp.gate_up_proj"),
    ("down_proj", "mlp.down_proj"),
];

/// `target_modules`: a list of module names, or `"all-linear"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    Names(Vec<String>),
    Preset(String),
}

impl Default for TargetModules {
    /// PEFT's default for Llama-family models.
    fn default() -> Self {
        TargetModules::Names(vec!["q_proj".into(), "v_proj".into()])
    }
}

impl TargetModules {
    /// The short names (`q_proj`, ...) this selects, validated.
    pub fn resolve(&self) -> std::result::Result<Vec<&'static str>, String> {
        let names: Vec<String> = match self {
            TargetModules::Preset(p) if p == "all-linear" => return Ok(TARGETS.iter().map(|t| t.0).collect()),
            TargetModules::Preset(p) => {
                return Err(format!(
                    "target_modules = \"{p}\": use a list of module names or \"all-linear\" (regexes are not supported)"
                ))
            }
            TargetModules::Names(n) => n.clone(),
        };
        if names.is_empty() {
            return Err("target_modules is empty".into());
        }
        let mut out = Vec::new();
        for n in &names {
            let short = n.rsplit('.').next().unwrap_or(n);
            let t = TARGETS.iter().find(|t| t.0 == short).ok_or_else(|| {
                format!(
                    "target_modules: unknown module `{n}` (valid: {}, or \"all-linear\")",
                    TARGETS.map(|t| t.0).join(", ")
                )
            })?;
            if !out.contains(&t.0) {
                out.push(t.0);
            }
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LoraInit {
    /// PEFT's default (`init_lora_weights = True`): A ~ kaiming-uniform(a = √5), i.e. U(±1/√in).
    #[default]
    Kaiming,
    /// A ~ N(0, 1/r).
    Gaussian,
}

/// LoRA options with PEFT's names and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of the update.
    pub r: usize,
    /// Scale numerator: the update is multiplied by `lora_alpha / r` (or `/ sqrt(r)` with rsLoRA).
    pub lora_alpha: f64,
    /// Dropout on the adapter's input during training.
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    /// Rank-stabilised scaling `lora_alpha / sqrt(r)`.
    pub use_rslora: bool,
    /// Initialisation of A (B always starts at zero, so a fresh adapter changes nothing).
    pub init_lora_weights: LoraInit,
    /// Only these decoder layers get adapters (all when unset).
    pub layers_to_transform: Option<Vec<usize>>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: TargetModules::default(),
            use_rslora: false,
            init_lora_weights: LoraInit::Kaiming,
            layers_to_transform: None,
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    pub fn validate(&self, num_layers: usize) -> Result<()> {
        let bad = |m: String| {
            Err(Error::Config {
                path: "[lora]".into(),
                msg: m,
            })
        };
        if self.r == 0 {
            return bad("`r` must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(format!(
                "`lora_dropout` = {} must be in [0, 1)",
                self.lora_dropout
            ));
        }
        self.target_modules.resolve().map_err(|m| Error::Config {
            path: "[lora]".into(),
            msg: m,
        })?;
        if let Some(layers) = &self.layers_to_transform {
            if let Some(l) = layers.iter().find(|&&l| l >= num_layers) {
                return bad(format!(
                    "`layers_to_transform` has layer {l}, the model has {num_layers}"
                ));
            }
        }
        Ok(())
    }

    /// Whether `layer`'s module `short` (`q_proj`, ...) gets an adapter. As in PEFT, an entry of
    /// `target_modules` matches a module whose path equals it or ends with `.entry`, so both `q_proj`
    /// and `model.layers.3.self_attn.q_proj` work.
    pub fn applies(&self, layer: usize, short: &str) -> bool {
        let layer_ok = self
            .layers_to_transform
            .as_ref()
            .is_none_or(|l| l.contains(&layer));
        let path = module_path(layer, short);
        layer_ok
            && match &self.target_modules {
                TargetModules::Preset(p) => p == "all-linear",
                TargetModules::Names(names) => names
                    .iter()
                    .any(|e| e == short || *e == path || path.ends_with(&format!(".{e}"))),
            }
    }
}

/// The adapter of one linear layer. Field names are PEFT's (`lora_A`, `lora_B`).
#[derive(Module, Debug)]

pub struct Lora<B: Backend> {
    /// `[r, in_features]`
    pub lora_A: Param<Tensor<B, 2>>,
    /// `[out_features, r]`
    pub lora_B: Param<Tensor<B, 2>>,
    pub scale: f64,
    pub dropout: Dropout,
    /// True while `B A · scale` is folded into the base weight.
    pub merged: bool,
}

impl<B: Backend> Lora<B> {
    /// A fresh adapter: A initialised as configured (drawn on the host from `rng`, so every backend
    /// gets the same values), B = 0.
    pub fn init(
        cfg: &LoraConfig,
        d_in: usize,
        d_out: usize,
        rng: &mut StdRng,
        device: &B::Device,
    ) -> Self {
        let a = match cfg.init_lora_weights {
            // PEFT: kaiming_uniform_(a=sqrt(5)) on [r, in], i.e. uniform(±1/sqrt(in)).
            LoraInit::Kaiming => {
                rng::uniform(rng, [cfg.r, d_in], 1.0 / (d_in as f64).sqrt(), device)
            }
            LoraInit::Gaussian => rng::normal(rng, [cfg.r, d_in], 1.0 / cfg.r as f64, device),
        };
        Self::from_tensors(
            a,
            Tensor::zeros([d_out, cfg.r], device),
            cfg.scale(),
            cfg.lora_dropout,
        )
    }

    pub fn from_tensors(a: Tensor<B, 2>, b: Tensor<B, 2>, scale: f64, dropout: f64) -> Self {
        Self {
            lora_A: Param::from_tensor(a),
            lora_B: Param::from_tensor(b),
            scale,
            dropout: DropoutConfig::new(dropout).init(),
            merged: false,
        }
    }

    pub fn rank(&self) -> usize {
        self.lora_A.dims()[0]
    }

    /// `scale · B A dropout(x)` for `x` `[n, in]`. Dropout is active only on an autodiff backend
    /// (training), with a host-drawn mask ([`rng::dropout`]).
    pub fn delta(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = rng::dropout(x, self.dropout.prob);
        self.delta_no_dropout(x)
    }

    pub fn delta_no_dropout(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.lora_A.val().transpose())
            .matmul(self.lora_B.val().transpose())
            .mul_scalar(self.scale)
    }

    /// `scale · B A`, the update to the base weight `[out, in]`.
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.lora_B
            .val()
            .matmul(self.lora_A.val())
            .mul_scalar(self.scale)
    }
}

/// PEFT's key for a tensor of the adapter on HF module `module` (`model.layers.3.self_attn.q_proj`).
pub fn peft_key(module: &str, which: char) -> String {
    format!("base_model.model.{module}.lora_{which}.weight")
}

/// HF module path of layer `i`'s target `short`.
pub fn module_path(layer: usize, short: &str) -> String {
    let sub = TARGETS.iter().find(|t| t.0 == short).map_or(short, |t| t.1);
    HfNames::layer(layer, sub)
}
