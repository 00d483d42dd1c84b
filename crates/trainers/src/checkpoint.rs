//! Checkpoints: adapter (PEFT files) + optimizer moments + trainer state, written to a temp directory and
//! renamed into place, keeping the last K. A resumed run restores everything the next step depends on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use burnish_core::adapter::{load_adapter, save_adapter};
use burnish_core::backend::host_f32;
use burnish_core::burn;
use burnish_core::io::{publish_dir, staging_dir, write_atomic, Existing};
use burnish_core::weights::{write_safetensors, SafetensorsDir, WeightSource};
use burnish_core::{Llama, LoraConfig};
use serde::{Deserialize, Serialize};

use crate::optim::{AdamW, Moments};
use crate::{Error, Result};

/// First and second moment of one parameter, as read back (either may be missing in a bad file).
type Pair<B> = (Option<Tensor<B, 2>>, Option<Tensor<B, 2>>);

const STATE: &str = "trainer_state.json";
const OPTIM: &str = "optimizer.safetensors";
const HEADS: &str = "heads.safetensors";

/// Everything besides tensors that a resumed run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    pub seed: u64,
    /// Training rows consumed (the data order is a pure function of seed and position).
    pub data_cursor: usize,
    pub method: String,
    /// The run's settings that a resume must not change (model, LoRA, method, data, batch shape,
    /// seed), as given by the caller; compared key by key on resume. Empty in older checkpoints.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// The first setting where `ours` differs from `theirs`, as (dotted key, theirs, ours); keys present
/// on one side only count as differences.
pub fn first_difference(
    key: &str,
    theirs: &serde_json::Value,
    ours: &serde_json::Value,
) -> Option<(String, String, String)> {
    use serde_json::Value;
    match (theirs, ours) {
        (Value::Object(a), Value::Object(b)) => a
            .keys()
            .chain(b.keys().filter(|k| !a.contains_key(*k)))
            .find_map(|k| {
                let (x, y) = (
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                );
                first_difference(&format!("{key}.{k}"), x, y)
            }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(&format!("{key}.{i}"), x, y)),
        _ if theirs == ours => None,
        _ => Some((key.to_string(), theirs.to_string(), ours.to_string())),
    }
}

fn io(p: &Path, e: std::io::Error) -> Error {
    Error::Io(p.to_path_buf(), e)
}

pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// Named 2-D heads (reward or value heads) as the engine checkpoints them.
pub type Heads<IB> = Vec<(String, Tensor<IB, 2>)>;

/// Writes `out/checkpoints/step-NNNNNN/` atomically and prunes old ones beyond `keep`.
#[allow(clippy::too_many_arguments)] // each is a distinct part of the checkpoint
pub fn save<B: Backend, IB: Backend>(
    out: &Path,
    model: &Llama<B>,
    lora: &LoraConfig,
    base_model: &str,
    opt: &AdamW<IB>,
    heads: &[(String, Tensor<IB, 2>)],
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(out);
    let name = format!("step-{:06}", state.step);
    let dst = root.join(&name);
    // Built beside its final place and renamed there, so a crash never leaves a partial checkpoint.
    let tmp = staging_dir(&dst)?;
    save_adapter(model, lora, base_model, &tmp)?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (k, st) in &opt.state {
        for (suffix, t) in [("m", &st.m), ("v", &st.v)] {
            tensors.push((format!("{k}.{suffix}"), t.dims().to_vec(), f32_bytes(t)));
        }
    }
    let step = opt.step.to_string();
    write_safetensors(
        &tmp.join(OPTIM),
        safetensors::Dtype::F32,
        &tensors,
        &[("optimizer_step", &step)],
    )?;
    if !heads.is_empty() {
        write_safetensors(
            &tmp.join(HEADS),
            safetensors::Dtype::F32,
            &head_tensors(heads),
            &[],
        )?;
    }
    write_atomic(
        &tmp.join(STATE),
        serde_json::to_string_pretty(state)
            .expect("json")
            .as_bytes(),
    )?;
    publish_dir(&tmp, &dst, Existing::Replace)?;
    let mut all = list(out)?;
    while all.len() > keep.max(1) {
        let old = all.remove(0);
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
    }
    Ok(dst)
}

/// Heads (`[name, shape, f32 bytes]`) for a safetensors file.
pub fn head_tensors<IB: Backend>(
    heads: &[(String, Tensor<IB, 2>)],
) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    heads
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec(), f32_bytes(t)))
        .collect()
}

/// A tensor's values as little-endian f32 bytes (safetensors' layout).
fn f32_bytes<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Vec<u8> {
    host_f32(t.clone())
        .into_iter()
        .flat_map(f32::to_le_bytes)
        .collect()
}

/// Reads the 2-D tensors of a heads file.
pub fn read_heads<IB: Backend>(
    path: &Path,
    device: &IB::Device,
) -> Result<Vec<(String, Tensor<IB, 2>)>> {
    let file = SafetensorsDir::open_file(path)?;
    let names: Vec<String> = file.names().map(String::from).collect();
    let mut out = Vec::new();
    for key in names {
        let t = file.tensor(&key)?.expect("listed");
        let shape: [usize; 2] =
            t.shape.clone().try_into().map_err(|_| {
                Error::BadTensorFile(path.to_path_buf(), format!("{key} is not 2-D"))
            })?;
        out.push((
            key,
            Tensor::from_data(TensorData::new(t.data, shape), device),
        ));
    }
    Ok(out)
}

/// Finished checkpoints, oldest first.
pub fn list(out: &Path) -> Result<Vec<PathBuf>> {
    let root = checkpoints_dir(out);
    if !root.exists() {
        return Ok(vec![]);
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| io(&root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
                && p.join(STATE).exists()
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Restores adapter and optimizer from `dir` onto `model`; returns the trainer state.
pub fn load<B: Backend, IB: Backend>(
    dir: &Path,
    model: &mut Llama<B>,
    opt: &mut AdamW<IB>,
    device: &B::Device,
    inner_device: &IB::Device,
) -> Result<(TrainerState, Heads<IB>)> {
    let state_path = dir.join(STATE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| io(&state_path, e))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| Error::Config(state_path.clone(), e.to_string()))?;
    load_adapter(model, dir, device)?;
    let optim = dir.join(OPTIM);
    let bad = |what: String| Error::BadTensorFile(optim.clone(), what);
    let file = SafetensorsDir::open_file(&optim)?;
    let mut moments: BTreeMap<String, Pair<IB>> = BTreeMap::new();
    let names: Vec<String> = file.names().map(String::from).collect();
    for key in names {
        let t = file.tensor(&key)?.expect("listed");
        let (name, which) = key
            .rsplit_once('.')
            .ok_or_else(|| bad(format!("bad optimizer key {key}")))?;
        let shape: [usize; 2] = t
            .shape
            .clone()
            .try_into()
            .map_err(|_| bad(format!("{key}: not 2-D")))?;
        let tensor = Tensor::<IB, 2>::from_data(TensorData::new(t.data, shape), inner_device);
        let slot = moments.entry(name.to_string()).or_default();
        match which {
            "m" => slot.0 = Some(tensor),
            "v" => slot.1 = Some(tensor),
            _ => return Err(bad(format!("bad optimizer key {key}"))),
        }
    }
    opt.state.clear();
    for (name, (m, v)) in moments {
        let (Some(m), Some(v)) = (m, v) else {
            return Err(bad(format!("optimizer state of {name} is incomplete")));
        };
        opt.state.insert(name, Moments { m, v });
    }
    opt.step = state.step as u64;
    let heads = if dir.join(HEADS).exists() {
        read_heads(&dir.join(HEADS), inner_device)?
    } else {
        Vec::new()
    };
    Ok((state, heads))
}

#[cfg(test)]
mod tests {
    use super::first_difference;
    use serde_json::json;

    #[test]
    fn first_difference_names_the_nested_key() {
        let a = json!({"r": 4, "target_modules": ["q_proj", "v_proj"], "alpha": 8});
        assert_eq!(first_difference("lora", &a, &a.clone()), None);
        let b = json!({"r": 8, "target_modules": ["q_proj", "v_proj"], "alpha": 8});
        assert_eq!(
            first_difference("lora", &a, &b),
            Some(("lora.r".into(), "4".into(), "8".into()))
        );
        let c = json!({"r": 4, "target_modules": ["q_proj", "k_proj"], "alpha": 8});
        assert_eq!(
            first_difference("lora", &a, &c).unwrap().0,
            "lora.target_modules.1"
        );
        let d = json!({"r": 4, "target_modules": ["q_proj", "v_proj"], "alpha": 8, "extra": 1});
        assert_eq!(first_difference("lora", &a, &d).unwrap().0, "lora.extra");
    }
}
