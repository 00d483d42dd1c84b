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

/// Keeps memory the process frees for its next allocations instead of handing it back to the kernel
/// (glibc's allocator; elsewhere nothing changes). A training step frees and allocates the same
/// activation-sized buffers every step; under glibc's defaults the large ones (above its mmap
/// threshold, which cannot be raised past 32 MiB, while a layer's attention scores at 1 × 1024 are
/// 38 MB) are mapped per allocation and come back from the kernel as fresh pages, zeroed page by page
/// on first touch: 8–12% of a CPU SFT step in page faults (perf, docs/benchmarks.md). So no mappings
/// (`M_MMAP_MAX = 0`: the heap serves every size) and no trimming of the heap's top. Peak memory is
/// unchanged (measured: the same peak RSS at 4 × 256 and 1 × 1024); memory freed after a peak stays
/// with the process. [`on_devices`] calls it for the CPU backend; idempotent.
pub fn retain_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; it is called before the backend's
        // threads start (and glibc serialises it against allocations anyway).
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    });
}

/// What the CPU backend's large f32 matrix products run on: the OpenBLAS library it loaded at run
/// time (vendor/burn-flex patch 5; `BURNISH_BLAS=off` or an absent library keeps them on the
/// pure-Rust `gemm` crate), or `"gemm"`. Loads the library if no product has yet.
pub fn cpu_matmul_library() -> &'static str {
    burn_flex::ops::blas::blas_library().unwrap_or("gemm")
}

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

/// A backend and, for GPUs, which device: `cpu`, `wgpu` (the best adapter), `wgpu:N` (the N-th
/// discrete GPU), `cuda` (= `cuda:0`), `cuda:N`. Written as that string in configs and run.json.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeviceSpec {
    pub kind: BackendKind,
    /// `None`: the backend's default device.
    pub index: Option<usize>,
}

impl DeviceSpec {
    pub const CPU: DeviceSpec = DeviceSpec {
        kind: BackendKind::Cpu,
        index: None,
    };
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind.feature())?;
        match self.index {
            Some(i) => write!(f, ":{i}"),
            None => Ok(()),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => {
                let i = i.parse::<usize>().map_err(|_| {
                    format!("device `{s}`: the index after `:` must be a number (e.g. cuda:1)")
                })?;
                (n, Some(i))
            }
            None => (s, None),
        };
        let kind: BackendKind = name.parse()?;
        if kind == BackendKind::Cpu && index.is_some_and(|i| i > 0) {
            return Err(format!(
                "device `{s}`: the CPU backend has one device (`cpu`)"
            ));
        }
        Ok(DeviceSpec { kind, index })
    }
}

impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Work written once, generic over the backend: [`on_device`] runs it on the backend a
/// [`DeviceSpec`] names. `B` is the autodiff backend (training); inference uses `B::InnerBackend`.
pub trait OnDevice {
    type Output;
    fn run<B: burn::tensor::backend::AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `job` on the backend and device of `spec`; `Err` names the cargo feature when that backend
/// is not compiled in.
pub fn on_device<J: OnDevice>(spec: DeviceSpec, job: J) -> Result<J::Output, String> {
    on_devices(&[spec], First(job))
}

/// Work on several devices of one backend (data-parallel training): [`on_devices`] hands it the
/// devices its specs name, in order.
pub trait OnDevices {
    type Output;
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        self,
        devices: Vec<B::Device>,
    ) -> Self::Output;
}

/// [`OnDevice`] as [`OnDevices`] with one device.
struct First<J>(J);

impl<J: OnDevice> OnDevices for First<J> {
    type Output = J::Output;
    fn run<B: burn::tensor::backend::AutodiffBackend>(self, mut d: Vec<B::Device>) -> J::Output {
        self.0.run::<B>(d.swap_remove(0))
    }
}

/// Runs `job` on the backend that every spec in `specs` names (at least one; one kind), with one
/// device per spec (a spec may repeat: two workers on one device). `Err` says why not: no specs,
/// several backends, or a backend that is not compiled in (naming its cargo feature).
pub fn on_devices<J: OnDevices>(specs: &[DeviceSpec], job: J) -> Result<J::Output, String> {
    let Some(first) = specs.first() else {
        return Err("no device given".into());
    };
    if let Some(other) = specs.iter().find(|s| s.kind != first.kind) {
        return Err(format!(
            "devices `{first}` and `{other}` are on different backends; one run uses one backend"
        ));
    }
    Ok(match first.kind {
        BackendKind::Cpu => {
            retain_freed_memory();
            tracing::info!("CPU matrix products on {}", cpu_matmul_library());
            job.run::<Autodiff<Cpu>>(vec![CpuDevice::default(); specs.len()])
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => job.run::<Autodiff<Wgpu>>(
            specs
                .iter()
                .map(|s| match s.index {
                    None => burn::backend::wgpu::WgpuDevice::DefaultDevice,
                    Some(i) => burn::backend::wgpu::WgpuDevice::DiscreteGpu(i),
                })
                .collect(),
        ),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => job.run::<Autodiff<Cuda>>(
            specs
                .iter()
                .map(|s| burn::backend::cuda::CudaDevice::new(s.index.unwrap_or(0)))
                .collect(),
        ),
        #[allow(unreachable_patterns)]
        other => {
            return Err(format!(
                "backend `{}` is not compiled in; rebuild with `--features {}`",
                other.feature(),
                other.feature()
            ))
        }
    })
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

/// What a GPU backend's memory pool holds on one device, MB (cubecl's own accounting; Burn 0.21 has
/// no memory API of its own). The pool keeps the pages it grew to, so `reserved_mb` read after a
/// training step is the pool's high-water mark so far, an upper bound of the step's peak in use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceMemory {
    /// Bytes in live tensors.
    pub in_use_mb: f64,
    /// Bytes the pool holds (in use, padding and free pages).
    pub reserved_mb: f64,
}

/// The device memory of `device` when it is a wgpu or CUDA device; `None` on the CPU backend (its
/// memory is the process's) and for backends not compiled in. Works for a backend's device and its
/// autodiff wrapper's alike (they share the device type).
pub fn device_memory<D: std::any::Any>(device: &D) -> Option<DeviceMemory> {
    let any = device as &dyn std::any::Any;
    #[cfg(feature = "wgpu")]
    if let Some(d) = any.downcast_ref::<burn::backend::wgpu::WgpuDevice>() {
        return pool_memory::<cubecl::wgpu::WgpuRuntime>(d);
    }
    #[cfg(feature = "cuda")]
    if let Some(d) = any.downcast_ref::<burn::backend::cuda::CudaDevice>() {
        return pool_memory::<cubecl::cuda::CudaRuntime>(d);
    }
    let _ = any;
    None
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn pool_memory<R: cubecl::Runtime>(device: &R::Device) -> Option<DeviceMemory> {
    let usage = R::client(device).memory_usage().ok()?;
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    Some(DeviceMemory {
        in_use_mb: mb(usage.bytes_in_use),
        reserved_mb: mb(usage.bytes_reserved),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_backend_has_no_device_memory() {
        assert_eq!(device_memory(&CpuDevice::default()), None);
    }

    /// Patch 5's products on OpenBLAS (vendor/burn-flex/src/ops/blas.rs) against f64 sums on the host,
    /// in the layouts training uses: a projection against a transposed weight (split by rows), a
    /// product wider than tall (split by columns, uneven parts), a transposed left operand in a
    /// batch (attention's `Pᵀ·dO`), and rows sliced out of a larger matrix (a leading dimension
    /// wider than the row). Without OpenBLAS this checks `gemm` instead and says so; in CI (CI=true,
    /// where .ci/run installs libopenblas0) OpenBLAS must have been loaded.
    #[test]
    fn products_on_openblas_match_host_sums() {
        use burn::tensor::{Tensor, TensorData};
        let lib = cpu_matmul_library();
        if lib == "gemm" {
            let msg = "OpenBLAS is not installed (apt-get install libopenblas0-pthread)";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
            eprintln!("checking gemm, not OpenBLAS: {msg}");
        }
        let d = CpuDevice::default();
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7 + seed) % 61) as f32 * 0.03 - 0.9)
                .collect()
        };
        let check =
            |got: Tensor<Cpu, 3>, a: &[f32], b: &[f32], [_, m, k, n]: [usize; 4], what: &str| {
                // a: [batch, m, k] and b: [batch, k, n], row-major, as the host sees the operands' values.
                let got = got.into_data().to_vec::<f32>().unwrap();
                for (idx, g) in got.iter().enumerate() {
                    let (j, i, z) = (idx % n, idx / n % m, idx / (n * m));
                    let want: f64 = (0..k)
                        .map(|t| a[(z * m + i) * k + t] as f64 * b[(z * k + t) * n + j] as f64)
                        .sum();
                    assert!(
                        (*g as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{what}[{idx}] on {lib}: {g} vs {want}"
                    );
                }
            };
        let t3 = |v: &[f32], shape: [usize; 3]| {
            Tensor::<Cpu, 3>::from_data(TensorData::new(v.to_vec(), shape), &d)
        };
        let transpose = |v: &[f32], [bs, r, c]: [usize; 3]| -> Vec<f32> {
            (0..bs * r * c)
                .map(|i| {
                    let (x, y, z) = (i % r, i / r % c, i / (r * c));
                    v[(z * r + x) * c + y]
                })
                .collect()
        };
        // x [1, 300, 256] · wᵀ with w [1, 200, 256]: a projection, taller than wide.
        let (x, w) = (values(300 * 256, 1), values(200 * 256, 2));
        let prod = t3(&x, [1, 300, 256]).matmul(t3(&w, [1, 200, 256]).swap_dims(1, 2));
        check(
            prod,
            &x,
            &transpose(&w, [1, 200, 256]),
            [1, 300, 256, 200],
            "x·wᵀ",
        );
        // [1, 130, 300] · [1, 300, 517]: wider than tall, parts of 272 and 245 columns.
        let (a, b) = (values(130 * 300, 3), values(300 * 517, 4));
        check(
            t3(&a, [1, 130, 300]).matmul(t3(&b, [1, 300, 517])),
            &a,
            &b,
            [1, 130, 300, 517],
            "wide",
        );
        // A batch of 3: pᵀ · o with p [3, 200, 150] (rows, keys): the left operand transposed.
        let (p, o) = (values(3 * 200 * 150, 5), values(3 * 200 * 96, 6));
        let prod = t3(&p, [3, 200, 150])
            .swap_dims(1, 2)
            .matmul(t3(&o, [3, 200, 96]));
        check(
            prod,
            &transpose(&p, [3, 200, 150]),
            &o,
            [3, 150, 200, 96],
            "pᵀ·o",
        );
        // Rows 10..310 and columns 0..256 of [1, 320, 384]: a leading dimension of 384.
        let big = values(320 * 384, 7);
        let rows: Vec<f32> = (10..310)
            .flat_map(|r| big[r * 384..r * 384 + 256].to_vec())
            .collect();
        let (sliced, r) = (
            t3(&big, [1, 320, 384]).slice([0..1, 10..310, 0..256]),
            values(256 * 160, 8),
        );
        check(
            sliced.matmul(t3(&r, [1, 256, 160])),
            &rows,
            &r,
            [1, 300, 256, 160],
            "sliced rows",
        );
    }

    /// The vendored burn-flex's patched paths (vendor/burn-flex/PATCHES.md) against the same
    /// arithmetic on the host, at a size above the threading threshold (128K elements): in-place and
    /// allocating element-wise ops split over threads, a product with a permuted operand, and the
    /// head-merge copy of a permuted view.
    #[test]
    fn patched_cpu_paths_match_host_arithmetic() {
        use burn::tensor::{Tensor, TensorData};
        let d = CpuDevice::default();
        let (b, s, h, e) = (4, 64, 9, 64); // 147,456 elements
        let n = b * s * h * e;
        let xs: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 0.01 - 0.3).collect();
        let ys: Vec<f32> = (0..n).map(|i| (i % 89) as f32 * 0.02 - 0.7).collect();
        let x = || Tensor::<Cpu, 4>::from_data(TensorData::new(xs.clone(), [b, s, h, e]), &d);
        let y = || Tensor::<Cpu, 4>::from_data(TensorData::new(ys.clone(), [b, h, s, e]), &d);
        let values = |t: Tensor<Cpu, 4>| t.into_data().to_vec::<f32>().unwrap();
        // [b, s, h, e] viewed as [b, h, s, e]: element (i, j, k, l) of the view is x[i, k, j, l].
        let permuted = |i: usize| {
            let (l, k, j, i0) = (i % e, i / e % s, i / (e * s) % h, i / (e * s * h));
            xs[((i0 * s + k) * h + j) * e + l]
        };
        let close = |got: Vec<f32>, want: &dyn Fn(usize) -> f32, what: &str| {
            assert_eq!(got.len(), n, "{what}");
            for (i, g) in got.iter().enumerate() {
                let w = want(i);
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{what}[{i}]: {g} vs {w}"
                );
            }
        };
        close(
            values(x() + y().swap_dims(1, 2)),
            &|i| {
                xs[i] + {
                    let (l, j, k, i0) = (i % e, i / e % h, i / (e * h) % s, i / (e * h * s));
                    ys[((i0 * h + j) * s + k) * e + l]
                }
            },
            "in-place add",
        );
        close(values(x().exp()), &|i| xs[i].exp(), "in-place exp");
        let shared = x();
        close(
            values(shared.clone().exp()),
            &|i| xs[i].exp(),
            "allocating exp",
        );
        close(
            values(shared.clone() * 3.0),
            &|i| xs[i] * 3.0,
            "allocating scalar product",
        );
        close(
            values(x().swap_dims(1, 2) * y()),
            &|i| permuted(i) * ys[i],
            "permuted product",
        );
        let merged = x().swap_dims(1, 2).reshape([b * h, s * e]);
        close(
            values(merged.reshape([b, h, s, e])),
            &permuted,
            "head merge copy",
        );
    }

    #[test]
    fn device_specs_parse_and_print() {
        let cpu: DeviceSpec = "cpu".parse().unwrap();
        assert_eq!(cpu, DeviceSpec::CPU);
        assert_eq!(cpu.to_string(), "cpu");
        assert_eq!(
            "cpu:0".parse::<DeviceSpec>().unwrap().kind,
            BackendKind::Cpu
        );
        let e = "cpu:1".parse::<DeviceSpec>().unwrap_err();
        assert!(e.contains("one device"), "{e}");
        let e = "cuda:x".parse::<DeviceSpec>().unwrap_err();
        assert!(e.contains("cuda:x") && e.contains("number"), "{e}");
        let e = "tpu".parse::<DeviceSpec>().unwrap_err();
        assert!(e.contains("unknown backend `tpu`"), "{e}");
        for (s, kind, index) in [
            ("wgpu", BackendKind::Wgpu, None),
            ("cuda:1", BackendKind::Cuda, Some(1)),
        ] {
            match s.parse::<DeviceSpec>() {
                Ok(d) => {
                    assert_eq!((d.kind, d.index), (kind, index));
                    assert_eq!(d.to_string(), s);
                }
                Err(e) => {
                    assert!(!kind.available(), "{s}: {e}");
                    assert!(e.contains(&format!("--features {}", kind.feature())), "{e}");
                }
            }
        }
        let toml: DeviceSpec = serde_json::from_str("\"cpu\"").unwrap();
        assert_eq!(toml, DeviceSpec::CPU);
        assert_eq!(serde_json::to_string(&DeviceSpec::CPU).unwrap(), "\"cpu\"");
    }
}
