//! PEFT adapter files: `adapter_config.json` + `adapter_model.safetensors` with PEFT's key names
//! (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`), so adapters move freely between
//! burnish and Python's `peft`.

use std::collections::BTreeSet;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::model::lora::{
    module_path, peft_key, Lora, LoraConfig, LoraInit, TargetModules, TARGETS,
};
use crate::model::Llama;
use crate::weights::{write_safetensors, SafetensorsDir, WeightSource};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// `adapter_config.json` as PEFT writes it for a LoRA on a causal LM.
pub fn peft_config_json(cfg: &LoraConfig, base_model: &str) -> Value {
    let targets: Vec<&str> = cfg.target_modules.resolve().unwrap_or_default();
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": targets,
        "use_rslora": cfg.use_rslora,
        "init_lora_weights": match cfg.init_lora_weights { LoraInit::Kaiming => json!(true), LoraInit::Gaussian => json!("gaussian") },
        "layers_to_transform": cfg.layers_to_transform,
        "layers_pattern": null,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "modules_to_save": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": false,
        "revision": null,
    })
}

/// Reads a PEFT `adapter_config.json`, refusing options burnish does not implement.
pub fn read_peft_config(dir: &Path) -> Result<(LoraConfig, Value)> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    let err = |msg: String| Error::Config {
        path: path.clone(),
        msg,
    };
    match v.get("peft_type").and_then(Value::as_str) {
        Some("LORA") | None => {}
        Some(other) => {
            return Err(err(format!(
                "peft_type `{other}`: only LORA adapters are supported"
            )))
        }
    }
    if v.get("use_dora").and_then(Value::as_bool) == Some(true) {
        return Err(err("`use_dora = true`: DoRA is not supported".into()));
    }
    if v.get("bias")
        .and_then(Value::as_str)
        .is_some_and(|b| b != "none")
    {
        return Err(err("`bias` other than \"none\" is not supported".into()));
    }
    if v.get("fan_in_fan_out").and_then(Value::as_bool) == Some(true) {
        return Err(err(
            "`fan_in_fan_out = true` (Conv1D models) is not supported".into(),
        ));
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if v.get(key)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(err(format!("`{key}` (per-module ranks) is not supported")));
        }
    }
    if v.get("modules_to_save")
        .is_some_and(|m| !m.is_null() && m.as_array().is_none_or(|a| !a.is_empty()))
    {
        return Err(err(
            "`modules_to_save` (fully trained extra modules) is not supported".into(),
        ));
    }
    let num = |k: &str| {
        v.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| err(format!("missing number `{k}`")))
    };
    let target_modules: TargetModules =
        serde_json::from_value(v.get("target_modules").cloned().unwrap_or(Value::Null))
            .map_err(|e| err(format!("`target_modules`: {e}")))?;
    target_modules.resolve().map_err(err)?;
    let layers_to_transform = match v.get("layers_to_transform") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(vec![n.as_u64().unwrap_or(0) as usize]),
        Some(x) => Some(
            serde_json::from_value(x.clone())
                .map_err(|e| err(format!("`layers_to_transform`: {e}")))?,
        ),
    };
    let cfg = LoraConfig {
        r: num("r")? as usize,
        lora_alpha: num("lora_alpha")?,
        lora_dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        target_modules,
        use_rslora: v
            .get("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        init_lora_weights: match v.get("init_lora_weights").and_then(Value::as_str) {
            Some("gaussian") => LoraInit::Gaussian,
            _ => LoraInit::Kaiming,
        },
        layers_to_transform,
    };
    Ok((cfg, v))
}

/// Writes the model's adapters as a PEFT adapter directory (atomically, file by file).
pub fn save_adapter<B: Backend>(
    model: &Llama<B>,
    cfg: &LoraConfig,
    base_model: &str,
    dir: &Path,
) -> Result<()> {
    let adapters = model.adapters();
    if adapters.is_empty() {
        return Err(Error::Unsupported(
            "the model has no LoRA adapters to save".into(),
        ));
    }
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (module, lora) in adapters {
        for (which, t) in [('A', lora.lora_A.val()), ('B', lora.lora_B.val())] {
            let dims = t.dims().to_vec();
            let data = t.into_data().convert::<f32>();
            let bytes = data
                .as_slice::<f32>()
                .map_err(|e| Error::Unsupported(format!("{e:?}")))?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            tensors.push((peft_key(&module, which), dims, bytes));
        }
    }
    write_safetensors(
        &dir.join(WEIGHTS_FILE),
        safetensors::Dtype::F32,
        &tensors,
        &[("format", "pt")],
    )?;
    let config = serde_json::to_string_pretty(&peft_config_json(cfg, base_model)).expect("json");
    write_atomic(&dir.join(CONFIG_FILE), config.as_bytes())
}

/// Loads a PEFT adapter directory onto `model` (replacing any adapters). Shapes, rank and targets are
/// checked against the model and the config; any mismatch is an error naming the key.
pub fn load_adapter<B: Backend>(
    model: &mut Llama<B>,
    dir: &Path,
    device: &B::Device,
) -> Result<LoraConfig> {
    let (cfg, _) = read_peft_config(dir)?;
    cfg.validate(model.num_layers())?;
    let weights = SafetensorsDir::open_file(&dir.join(WEIGHTS_FILE))?;
    let path = weights.path().to_path_buf();
    let mut expected = BTreeSet::new();
    let mut loaded = Vec::new();
    for (i, short) in model.linear_ids() {
        if !cfg.applies(i, short) {
            continue;
        }
        let lin = model.linear(i, short).expect("known");
        let module = module_path(i, short);
        let (d_in, d_out) = (lin.in_features(), lin.out_features());
        let mut get = |which: char, shape: [usize; 2]| -> Result<Tensor<B, 2>> {
            let key = peft_key(&module, which);
            expected.insert(key.clone());
            let t = weights.tensor(&key)?.ok_or_else(|| Error::MissingTensor {
                path: path.clone(),
                name: key.clone(),
            })?;
            if t.shape != shape {
                return Err(Error::Shape {
                    path: path.clone(),
                    name: key,
                    expected: shape.to_vec(),
                    actual: t.shape,
                });
            }
            Ok(Tensor::from_data(TensorData::new(t.data, shape), device))
        };
        let a = get('A', [cfg.r, d_in])?;
        let b = get('B', [d_out, cfg.r])?;
        loaded.push((i, short, a, b));
    }
    // Keys the config does not account for mean a different target set or base model: refuse them.
    if let Some(extra) = weights.names().find(|k| !expected.contains(*k)) {
        return Err(Error::Config {
            path,
            msg: format!("tensor `{extra}` is not covered by adapter_config.json's target_modules/layers (targets: {})",
                TARGETS.iter().filter(|t| cfg.target_modules.resolve().unwrap_or_default().contains(&t.0)).map(|t| t.0).collect::<Vec<_>>().join(", ")),
        });
    }
    for (i, short, a, b) in loaded {
        model.linear_mut(i, short).expect("known").lora =
            Some(Lora::from_tensors(a, b, cfg.scale(), cfg.lora_dropout));
    }
    Ok(cfg)
}
