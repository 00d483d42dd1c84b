//! Backends: flex (pure-Rust CPU, the default) and, behind cargo features, wgpu and cuda.

pub use burn::backend::Autodiff;
pub use burn::backend::Flex;

/// The default CPU backend.
pub type Cpu = Flex;
pub type CpuDevice = burn::backend::flex::FlexDevice;

#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu;
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// Backend names accepted by the CLI and configs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Cpu,
    Wgpu,
    Cuda,
}

impl BackendKind {
    pub fn available(self) -> bool {
        match self {
            BackendKind::Cpu => true,
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The cargo feature that compiles this backend in (`cpu` is always there).
    pub fn feature(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let kind = match s {
            "cpu" | "flex" => BackendKind::Cpu,
            "wgpu" => BackendKind::Wgpu,
            "cuda" => BackendKind::Cuda,
            other => return Err(format!("unknown backend `{other}` (cpu, wgpu, cuda)")),
        };
        if !kind.available() {
            return Err(format!(
                "backend `{s}` is not compiled in; rebuild with `--features {s}`"
            ));
        }
        Ok(kind)
    }
}

/// A tensor's values on the host as `f32`, whatever the backend and element type (the one place that
/// reads device memory back for metrics, reports and cached values).
pub fn host_f32<B: burn::tensor::backend::Backend, const D: usize>(
    t: burn::tensor::Tensor<B, D>,
) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("converted to f32")
}

/// [`host_f32`] widened to `f64`, for sums and statistics.
pub fn host_f64<B: burn::tensor::backend::Backend, const D: usize>(
    t: burn::tensor::Tensor<B, D>,
) -> Vec<f64> {
    host_f32(t).into_iter().map(f64::from).collect()
}
