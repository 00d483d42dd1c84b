//! The precision of a model's frozen base: `[model] dtype = "f32" | "bf16" | "f16"`.
//!
//! burnish's mixed precision: the base's weight *matrices* (every linear, the embeddings, an untied
//! head) live on the device in the chosen dtype, and each matmul with them runs in it. Everything else
//! stays f32: the residual stream and every activation between matmuls, RMSNorm, RoPE, attention and
//! its softmax, the LM head's log-softmax and every loss, biases and norm weights, LoRA's A and B, the
//! optimizer's moments. The casts are explicit, at the two places a base matrix meets an activation
//! (`model::linear::matmul_t` and the embedding lookup); Burn 0.21 checks no dtypes in GPU binary ops,
//! so the CPU backend, which asserts them, is where tests run every path in bf16.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, FloatDType};
use serde::{Deserialize, Serialize};

/// The dtype of the base's weight matrices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    pub fn float_dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
            Precision::F16 => FloatDType::F16,
        }
    }

    /// The precision of a tensor's dtype, if it is one of these.
    pub fn of(dtype: DType) -> Option<Precision> {
        Precision::ALL.into_iter().find(|p| p.dtype() == dtype)
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown dtype `{s}` (f32, bf16, f16)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_eq!(Precision::of(p.dtype()), Some(p));
        }
        assert!("fp16"
            .parse::<Precision>()
            .unwrap_err()
            .contains("f32, bf16, f16"));
        assert_eq!(Precision::of(DType::F64), None);
    }
}
