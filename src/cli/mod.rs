pub mod ablate;
pub mod data;
pub mod eval;
pub mod export;
pub mod model;
pub mod progress;
pub mod score;
pub mod showcase;
pub mod steps;
pub mod sweep;
pub mod train;

/// `on_backend!(spec, f(args: Args))` runs `f::<B>(args, &device)` on the backend and device `spec`
/// names, `B` being that backend's inference (non-autodiff) backend: one generic code path per
/// command, no per-backend copies. `f` returns `anyhow::Result<()>`.
macro_rules! on_backend {
    ($spec:expr, $f:ident($args:ident: $ty:ty)) => {{
        struct Job($ty);
        impl burnish_core::backend::OnDevice for Job {
            type Output = anyhow::Result<()>;
            fn run<B: burnish_core::burn::tensor::backend::AutodiffBackend>(
                self,
                device: B::Device,
            ) -> anyhow::Result<()> {
                $f::<B::InnerBackend>(self.0, &device)
            }
        }
        burnish_core::backend::on_device($spec, Job($args)).map_err(anyhow::Error::msg)?
    }};
}
pub(crate) use on_backend;
