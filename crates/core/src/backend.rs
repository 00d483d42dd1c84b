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
