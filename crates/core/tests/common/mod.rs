//! Shared test helpers: fixture paths and reading expected tensors written by scripts/reference.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burnish_core::backend::Cpu;
use burnish_core::burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

pub type B = Cpu;

/// Every fixture family with its own transformers reference: Llama (untied and tied head), Qwen2
/// (biases), Mistral (window), Qwen3 (q/k norms), Gemma 2 (soft-caps, sandwich norms), Gemma 3 (local
/// RoPE), Phi-3 (fused, LongRoPE).
pub const FAMILIES: [&str; 8] = [
    "tiny-llama",
    "tiny-llama-tied",
    "tiny-qwen2",
    "tiny-mistral",
    "tiny-qwen3",
    "tiny-gemma2",
    "tiny-gemma3",
    "tiny-phi3",
];

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub struct Expected {
    bytes: Vec<u8>,
}

impl Expected {
    pub fn open(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { bytes }
    }

    fn view(&self, name: &str) -> (Vec<usize>, Dtype, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).expect("valid fixture");
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("fixture tensor {name}"));
        (t.shape().to_vec(), t.dtype(), t.data().to_vec())
    }

    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, dtype, data) = self.view(name);
        assert_eq!(dtype, Dtype::F32, "{name}");
        (
            shape,
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }

    pub fn i64(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        let (shape, dtype, data) = self.view(name);
        assert_eq!(dtype, Dtype::I64, "{name}");
        (
            shape,
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }

    pub fn ids2(&self, name: &str) -> Tensor<B, 2, burnish_core::burn::tensor::Int> {
        let (shape, data) = self.i64(name);
        Tensor::from_data(
            TensorData::new(data, [shape[0], shape[1]]),
            &Default::default(),
        )
    }
}

pub fn to_vec3(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
