//! Argument parsing shared by the JSON-printing benches.

use burnish::core::backend::DeviceSpec;
use burnish::core::Precision;

/// Positional arguments and `--name value` flags, without cargo's `--bench` marker.
pub struct Args(Vec<String>);

impl Args {
    pub fn parse() -> Self {
        Self(
            std::env::args()
                .skip(1)
                .filter(|a| a != "--bench")
                .collect(),
        )
    }

    /// The model path: the first argument, or the fetched SmolLM2.
    pub fn model(&self) -> String {
        self.0
            .first()
            .filter(|a| !a.starts_with("--"))
            .cloned()
            .unwrap_or_else(|| "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into())
    }

    /// A `--name value` flag as text.
    pub fn text(&self, name: &str) -> Option<String> {
        let i = self.0.iter().position(|a| a == name)?;
        self.0.get(i + 1).cloned()
    }

    /// `--backend` (default `cpu`) and `--dtype` (default `f32`).
    pub fn device_and_dtype(&self) -> anyhow::Result<(DeviceSpec, Precision)> {
        let spec = self.text("--backend").unwrap_or_else(|| "cpu".into());
        let dtype = self.text("--dtype").unwrap_or_else(|| "f32".into());
        Ok((
            spec.parse().map_err(anyhow::Error::msg)?,
            dtype.parse().map_err(anyhow::Error::msg)?,
        ))
    }

    pub fn flag(&self, name: &str, default: usize) -> usize {
        self.0
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.0.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
}
