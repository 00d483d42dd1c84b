//! Host-drawn random numbers: LoRA and head initialisations and dropout masks come from a seeded
//! `StdRng` on the CPU and are then moved to the device, so one seed gives the same run on every
//! backend (Burn's backend RNGs draw differently on flex, wgpu and cuda).

use std::cell::RefCell;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::io::Fnv64;

/// A generator for the tensor called `name` (an HF module path, "reward.head"), from the run's
/// seed: each tensor's draw depends on its name only, not on how many were drawn before it.
pub fn for_tensor(seed: u64, name: &str) -> StdRng {
    let mut h = Fnv64::new();
    h.write(name.as_bytes());
    StdRng::seed_from_u64(seed ^ h.finish())
}

/// A `[rows, cols]` tensor of uniform(-bound, bound) draws from `rng`.
pub fn uniform<B: Backend>(
    rng: &mut StdRng,
    [rows, cols]: [usize; 2],
    bound: f64,
    device: &B::Device,
) -> Tensor<B, 2> {
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    Tensor::from_data(TensorData::new(v, [rows, cols]), device)
}

/// A `[rows, cols]` tensor of normal(0, std) draws from `rng`.
pub fn normal<B: Backend>(
    rng: &mut StdRng,
    [rows, cols]: [usize; 2],
    std: f64,
    device: &B::Device,
) -> Tensor<B, 2> {
    let dist = Normal::new(0.0, std).expect("std is finite and >= 0");
    let v: Vec<f32> = (0..rows * cols).map(|_| dist.sample(rng) as f32).collect();
    Tensor::from_data(TensorData::new(v, [rows, cols]), device)
}

thread_local! {
    /// The dropout stream, reseeded by the training loop at every step (`seed + step`), so masks
    /// are the same on every backend and after a resume. One per thread: a training loop seeds and
    /// runs its forward passes on its own thread, so two runs in one process do not share draws.
    static DROPOUT: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Reseeds this thread's dropout stream.
pub fn seed_dropout(seed: u64) {
    DROPOUT.with(|d| *d.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// This thread's dropout stream as it stands (a copy), so a recomputed forward pass
/// ([`crate::model::recompute`]) can draw the masks its first pass drew.
pub fn dropout_state() -> Option<StdRng> {
    DROPOUT.with(|d| d.borrow().clone())
}

/// Puts back a stream taken by [`dropout_state`].
pub fn set_dropout_state(state: Option<StdRng>) {
    DROPOUT.with(|d| *d.borrow_mut() = state);
}

/// Inverted dropout with a host-drawn mask: each element of `x` kept with probability `1 - p` and
/// scaled by `1 / (1 - p)`. A no-op when `p` is 0 or the backend records no gradients (inference),
/// as Burn's `Dropout`.
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, p: f64) -> Tensor<B, D> {
    if p == 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    let shape = x.shape();
    let n = shape.num_elements();
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = DROPOUT.with(|d| {
        let mut d = d.borrow_mut();
        let rng = d.get_or_insert_with(|| StdRng::seed_from_u64(0));
        let draw = |_| {
            if rng.random::<f64>() < keep {
                scale
            } else {
                0.0
            }
        };
        (0..n).map(draw).collect()
    });
    let mask = Tensor::<B, D>::from_data(TensorData::new(mask, shape), &x.device());
    x * mask
}
