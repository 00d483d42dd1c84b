//! Data-parallel training: one worker thread per device (`[train] devices`), each with a replica of
//! the model and of the method. Every micro-batch of a one-device run is split into contiguous shares,
//! one per worker; each worker runs forward and backward on its share with the loss normalised by the
//! *global* loss units, the adapter and head gradients are summed across workers as one flat bucket
//! by Burn's collective all-reduce, and every replica takes the same clipped AdamW step. So the losses
//! and the adapters are those of the one-device run, up to float summation order (docs/distributed.md).
//! The loop is the engine's; [`crate::team`] is how the workers talk.

use std::sync::Mutex;

use burn::collective::{self, CollectiveConfig, PeerId};
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burnish_core::burn;
use burnish_core::Llama;

use crate::engine::{run_loop, EngineConfig, Summary};
use crate::method::Method;
use crate::progress::Progress;
use crate::team::{panic_text, Team};
use crate::{Error, Result};

/// Burn's collective keeps one registry per backend type in the process: one data-parallel run at a
/// time (tests run in parallel threads).
static ONE_RUN: Mutex<()> = Mutex::new(());

/// Copies every parameter into a buffer of its own on `device`, through the host. Replicas that
/// shared the frozen base's buffers (Burn's `fork` on the same device copies nothing) trained wrong
/// on wgpu: NaN or wrong losses at the second step on lavapipe, a race between worker threads on
/// Burn 0.21's GPU backend. With a copy each, two wgpu workers match the CPU run (tests/backends.rs).
/// It costs the base's size per extra worker, as distinct GPUs would anyway.
struct DeepCopy<'a, B: Backend> {
    device: &'a B::Device,
}

impl<B: Backend> ModuleMapper<B> for DeepCopy<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let grad = tensor.is_require_grad();
        // In the tensor's own dtype: a bf16 base must stay bf16 (the default would convert to f32).
        let dtype = tensor.dtype();
        let mut copy = Tensor::from_data(tensor.to_data(), (self.device, dtype));
        if grad {
            copy = copy.require_grad();
        }
        Param::from_mapped_value(id, copy, mapper)
    }
}

/// Non-leading workers report nothing.
struct Silent;
impl Progress for Silent {
    fn message(&self, _: &str) {}
}

/// [`crate::engine::train`] on `devices` (one worker per entry; an entry may repeat). The model is on
/// `devices[0]`; every other worker gets a copy of it and of the method there. With one device this
/// is `engine::train`. Methods that cannot be replicated (PPO) are refused by name.
pub fn train_on_devices<B: AutodiffBackend, M: Method<B> + Send>(
    method: &mut M,
    model: Llama<B>,
    cfg: &EngineConfig,
    devices: &[B::Device],
    labels: &[String],
    progress: &dyn Progress,
) -> Result<(Llama<B>, Summary)> {
    if devices.len() <= 1 {
        return crate::engine::train(method, model, cfg, progress);
    }
    if labels.len() != devices.len() {
        return Err(Error::Invalid(format!(
            "{} devices but {} device labels",
            devices.len(),
            labels.len()
        )));
    }
    let _one = ONE_RUN.lock().unwrap_or_else(|p| p.into_inner());
    let mut others = Vec::with_capacity(devices.len() - 1);
    for d in &devices[1..] {
        let m = method
            .replica(d)
            .ok_or(Error::OneDeviceOnly(method.name()))?;
        others.push((m, model.clone()));
    }
    let mut teams = Team::members(labels).into_iter();
    let team = teams.next().expect("two devices or more");
    collective::reset_collective::<B::InnerBackend>();
    let config = CollectiveConfig::default().with_num_devices(devices.len());
    let (lead, rest) = std::thread::scope(|s| {
        let handles: Vec<_> = others
            .into_iter()
            .zip(&devices[1..])
            .zip(teams)
            .map(|(((mut m, replica), d), team)| {
                let config = config.clone();
                s.spawn(move || -> Result<()> {
                    // A copy of every buffer, made on this worker's thread: no tensor is shared
                    // with another worker (adapters become fresh autodiff leaves too). Sharing the
                    // frozen base between threads gave NaN or wrong sums at step 2 on wgpu.
                    let replica = replica.map(&mut DeepCopy { device: d });
                    worker::<B, ()>(&team, d, config, || {
                        run_loop(&mut m, replica, cfg, &Silent, &team).map(drop)
                    })
                })
            })
            .collect();
        let lead = worker::<B, _>(&team, &devices[0], config, || {
            run_loop(method, model, cfg, progress, &team)
        });
        drop(team);
        let rest: Vec<Result<()>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|p| Err(Error::Invalid(panic_text(p.as_ref()))))
            })
            .collect();
        (lead, rest)
    });
    collective::reset_collective::<B::InnerBackend>();
    match lead {
        Ok(done) => Ok(done),
        // The leader only saw that another worker stopped: that worker's own error is the cause.
        Err(Error::Worker { rank, device, .. }) if rank > 0 => match rest.into_iter().nth(rank - 1)
        {
            // Already naming the worker (e.g. a collective error): as it is.
            Some(Err(e @ Error::Worker { .. })) => Err(e),
            Some(Err(e)) => Err(Error::Worker {
                rank,
                device,
                message: e.to_string(),
            }),
            Some(Ok(())) | None => Err(Error::Worker {
                rank,
                device,
                message: "the worker ended early".into(),
            }),
        },
        Err(e) => Err(e),
    }
}

/// A worker's life: registered with the collective, its loop, unregistered.
fn worker<B: AutodiffBackend, T>(
    team: &Team,
    device: &B::Device,
    config: CollectiveConfig,
    run: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let id = PeerId::from(team.rank());
    collective::register::<B::InnerBackend>(id, device.clone(), config)
        .map_err(|e| team.collective_error(e))?;
    let out = run();
    // Unregistering only matters to a later run, which resets the registry anyway.
    let _ = collective::finish_collective::<B::InnerBackend>(id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burnish_core::backend::{Autodiff, Cpu};
    use burnish_core::burn::module::Module;
    use burnish_core::{Llama, ModelConfig, Precision};

    /// A worker's copy keeps every tensor's dtype and values: a bf16 base stays bf16 (a copy through
    /// the default dtype would silently train the other workers on an f32 base).
    #[test]
    fn a_copy_keeps_every_tensors_dtype_and_values() {
        type B = Autodiff<Cpu>;
        let json = r#"{"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
            "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 1,
            "vocab_size": 16, "max_position_embeddings": 64, "rms_norm_eps": 1e-5}"#;
        let cfg = ModelConfig::from_json(json, std::path::Path::new("test.json")).unwrap();
        let device = Default::default();
        let model = Llama::<B>::init(&cfg, 0.1, &device).with_precision(Precision::Bf16);
        let copy = model.clone().map(&mut DeepCopy { device: &device });
        assert_eq!(copy.precision(), Precision::Bf16);
        let (a, b) = (model.named_tensors(), copy.named_tensors());
        assert_eq!(a.len(), b.len());
        for ((name, _, x), (_, _, y)) in a.into_iter().zip(b) {
            assert_eq!(x.dtype(), y.dtype(), "{name}");
            assert!(x.equal(y).all().into_scalar(), "{name}");
        }
    }
}
