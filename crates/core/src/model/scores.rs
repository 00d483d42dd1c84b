//! The element-wise passes over attention scores `[b, g, rows, t]` in training attention (attend.rs):
//! forward, `softmax(mask(softcap(S · scale)))`; backward, `dS = P ⊙ (dP − δ) ⊙ (1 − tanh²) · scale`.
//!
//! Written as tensor operations these are five to seven passes over a score-sized tensor each way, and
//! Burn's mask fill runs on one thread on the CPU backend. At SmolLM2 1 × 1024 a layer's scores are 38 MB,
//! so those passes are memory traffic, not arithmetic. On the CPU backend each direction is therefore
//! one pass here, row by row on rayon's threads, in the buffer the score matmul just wrote (the CPU
//! backend hands a uniquely owned contiguous tensor's buffer to `into_data` and back from `from_data`
//! without copying); the causal mask is computed from the row index instead of being read. Other
//! backends (and other dtypes) take the tensor operations, `decomposed_*`, which the tests compare
//! against.

use std::ops::Range;

use burn::tensor::backend::Backend;
use burn::tensor::{activation, Bool, DType, Int, Tensor, TensorData};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::softmax::avx2_fma;

/// Which keys each score row may not attend to.
pub(super) enum Masked<'a, B: Backend> {
    /// Causal attention: row `r` of the block's `n` rows is query position
    /// `first + (r mod period)` (grouped-query heads folded into the rows repeat the positions), which
    /// reads the first `offset + position + 1` keys.
    Causal {
        first: usize,
        period: usize,
        offset: usize,
    },
    /// The folded mask `[1 or b, g, rows, t]`, true = masked; the block is rows `range` of it.
    Given {
        mask: &'a Tensor<B, 4, Bool>,
        range: Range<usize>,
    },
}

/// Softmax probabilities of the scores `S` (`[b, g, n, t]`, the product Q·Kᵀ of a block of rows):
/// scaled, soft-capped (`cap · tanh(S / cap)`, whose tanh is returned for the backward pass), masked.
/// A row with every key masked gets zero probabilities (the decomposed formula would give NaN).
pub(super) fn softmax<B: Backend>(
    scores: Tensor<B, 4>,
    masked: Masked<'_, B>,
    scale: f64,
    softcap: Option<f64>,
) -> (Tensor<B, 4>, Option<Tensor<B, 4>>) {
    if on_host::<B>(&scores) {
        host_softmax(scores, masked, scale, softcap)
    } else {
        decomposed_softmax(scores, masked, scale, softcap)
    }
}

/// `dS = P ⊙ (dP − δ) ⊙ (1 − tanh²) · scale` for `dP = dO · Vᵀ` and `δ = rowsum(dO ⊙ O)` (`[b, g, n, 1]`).
pub(super) fn grads<B: Backend>(
    p: Tensor<B, 4>,
    dp: Tensor<B, 4>,
    delta: Tensor<B, 4>,
    tanh: Option<Tensor<B, 4>>,
    scale: f64,
) -> Tensor<B, 4> {
    if on_host::<B>(&dp) {
        host_grads(p, dp, delta, tanh, scale)
    } else {
        decomposed_grads(p, dp, delta, tanh, scale)
    }
}

/// The CPU backend with f32 scores: the one-pass host kernels.
fn on_host<B: Backend>(x: &Tensor<B, 4>) -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<crate::backend::Cpu>()
        && x.dtype() == DType::F32
}

fn decomposed_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    masked: Masked<'_, B>,
    scale: f64,
    softcap: Option<f64>,
) -> (Tensor<B, 4>, Option<Tensor<B, 4>>) {
    let [b, g, n, t] = scores.dims();
    let mut scores = scores * scale;
    let tanh = softcap.map(|cap| {
        let th = (scores.clone() / cap).tanh();
        scores = th.clone() * cap;
        th
    });
    let mask = match masked {
        Masked::Given { mask, range } => {
            let mb = mask.dims()[0];
            mask.clone()
                .slice([0..mb, 0..g, range, 0..t])
                .expand([b, g, n, t])
        }
        Masked::Causal {
            first,
            period,
            offset,
        } => causal_rows::<B>(n, first, period, offset, t, &scores.device()).expand([b, g, n, t]),
    };
    let p = activation::softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
    (p, tanh)
}

fn decomposed_grads<B: Backend>(
    p: Tensor<B, 4>,
    dp: Tensor<B, 4>,
    delta: Tensor<B, 4>,
    tanh: Option<Tensor<B, 4>>,
    scale: f64,
) -> Tensor<B, 4> {
    let mut ds = p * (dp - delta);
    if let Some(th) = tanh {
        ds = ds * (th.powi_scalar(2).neg() + 1.0);
    }
    ds * scale
}

/// `[1, 1, n, t]`: the causal mask of `n` rows (row `r` is position `first + r mod period`, which reads
/// the first `offset + position + 1` keys), built on the device.
fn causal_rows<B: Backend>(
    n: usize,
    first: usize,
    period: usize,
    offset: usize,
    t: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let last = Tensor::<B, 1, Int>::arange(0..n as i64, device)
        .remainder_scalar(period as i64)
        .add_scalar((first + offset) as i64)
        .reshape([1, 1, n, 1]);
    let keys = Tensor::<B, 1, Int>::arange(0..t as i64, device).reshape([1, 1, 1, t]);
    keys.expand([1, 1, n, t]).greater(last.expand([1, 1, n, t]))
}

/// Rows handed to one rayon task: a 1024-key row is a few microseconds of work.
const ROWS_PER_TASK: usize = 16;

fn host_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    masked: Masked<'_, B>,
    scale: f64,
    softcap: Option<f64>,
) -> (Tensor<B, 4>, Option<Tensor<B, 4>>) {
    let [b, g, n, t] = scores.dims();
    let device = scores.device();
    let mut data = scores.into_data();
    let mut tanh_data = softcap.map(|_| TensorData::new(vec![0f32; b * g * n * t], [b, g, n, t]));
    let given = match &masked {
        Masked::Given { mask, range } => Some(host_mask(mask, range.clone())),
        Masked::Causal { .. } => None,
    };
    // The keys row `i` (of `b · g · n`) may attend to: a prefix for causal rows, a lookup otherwise.
    let limit = |i: usize| match &masked {
        Masked::Causal {
            first,
            period,
            offset,
        } => (offset + first + (i % n) % period + 1).min(t),
        Masked::Given { .. } => t,
    };
    let mask_row = |i: usize| -> Option<&[bool]> {
        let Masked::Given { mask, .. } = &masked else {
            return None;
        };
        let mb = mask.dims()[0];
        let (bg, r) = (i / n, i % n);
        let (bi, gi) = (bg / g, bg % g);
        let row = ((if mb == 1 { 0 } else { bi }) * g + gi) * n + r;
        given.as_deref().map(|m| &m[row * t..(row + 1) * t])
    };
    let (scale, cap) = (scale as f32, softcap.map(|c| c as f32));
    let rows = data.as_mut_slice::<f32>().expect("f32 scores");
    let row = |i: usize, x: &mut [f32], th: Option<&mut [f32]>| {
        softmax_row(x, th, scale, cap, limit(i), mask_row(i));
    };
    match tanh_data.as_mut() {
        Some(th) => {
            let th = th.as_mut_slice::<f32>().expect("f32");
            rows.par_chunks_mut(t)
                .zip(th.par_chunks_mut(t))
                .enumerate()
                .with_min_len(ROWS_PER_TASK)
                .for_each(|(i, (x, th))| row(i, x, Some(th)));
        }
        None => rows
            .par_chunks_mut(t)
            .enumerate()
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(i, x)| row(i, x, None)),
    }
    let tensor = |d: TensorData| Tensor::from_data(d, (&device, DType::F32));
    (tensor(data), tanh_data.map(tensor))
}

/// The booleans of the mask's rows `range` (`[1 or b, g, range, t]`) on the host: a copy of the
/// block's rows only, not of the whole layer's mask; only padded batches pass a mask.
fn host_mask<B: Backend>(mask: &Tensor<B, 4, Bool>, range: Range<usize>) -> Vec<bool> {
    let [mb, g, _, t] = mask.dims();
    let data = mask.clone().slice([0..mb, 0..g, range, 0..t]).into_data();
    match data.as_slice::<bool>() {
        Ok(m) => m.to_vec(),
        Err(_) => data.iter::<bool>().collect(),
    }
}

/// One row in place: scale, soft-cap, mask (keys from `limit` on, and those `given` marks), softmax.
/// The tanh of keys from `limit` on stays zero: their probabilities are zero, so the backward pass
/// never uses it.
fn softmax_row(
    x: &mut [f32],
    tanh: Option<&mut [f32]>,
    scale: f32,
    cap: Option<f32>,
    limit: usize,
    given: Option<&[bool]>,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has the features this copy of the kernel is compiled for.
        return unsafe { softmax_row_avx2(x, tanh, scale, cap, limit, given) };
    }
    softmax_row_lanes(x, tanh, scale, cap, limit, given)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_avx2(
    x: &mut [f32],
    tanh: Option<&mut [f32]>,
    scale: f32,
    cap: Option<f32>,
    limit: usize,
    given: Option<&[bool]>,
) {
    softmax_row_lanes(x, tanh, scale, cap, limit, given)
}

#[inline(always)]
fn softmax_row_lanes(
    x: &mut [f32],
    tanh: Option<&mut [f32]>,
    scale: f32,
    cap: Option<f32>,
    limit: usize,
    given: Option<&[bool]>,
) {
    let (live, dead) = x.split_at_mut(limit);
    dead.fill(0.0);
    match (cap, tanh) {
        (Some(cap), Some(th)) => {
            for (v, th) in live.iter_mut().zip(th.iter_mut()) {
                *th = (*v * scale / cap).tanh();
                *v = *th * cap;
            }
        }
        _ => live.iter_mut().for_each(|v| *v *= scale),
    }
    if let Some(given) = given {
        for (v, &m) in live.iter_mut().zip(given) {
            if m {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    super::softmax::softmax(live);
}

fn host_grads<B: Backend>(
    p: Tensor<B, 4>,
    dp: Tensor<B, 4>,
    delta: Tensor<B, 4>,
    tanh: Option<Tensor<B, 4>>,
    scale: f64,
) -> Tensor<B, 4> {
    let [_, _, _, t] = dp.dims();
    let device = dp.device();
    let mut data = dp.into_data();
    let (p, delta) = (p.into_data(), delta.into_data());
    let tanh = tanh.map(|th| th.into_data());
    let (p, delta) = (
        p.as_slice::<f32>().expect("f32"),
        delta.as_slice::<f32>().expect("f32"),
    );
    let tanh = tanh.as_ref().map(|th| th.as_slice::<f32>().expect("f32"));
    let scale = scale as f32;
    data.as_mut_slice::<f32>()
        .expect("f32 scores")
        .par_chunks_mut(t)
        .enumerate()
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(i, ds)| {
            let th = tanh.map(|th| &th[i * t..(i + 1) * t]);
            grads_row(ds, &p[i * t..(i + 1) * t], delta[i], th, scale);
        });
    Tensor::from_data(data, (&device, DType::F32))
}

/// One row of `dS = P ⊙ (dP − δ) ⊙ (1 − tanh²) · scale`, in place over `dP`.
fn grads_row(ds: &mut [f32], p: &[f32], delta: f32, tanh: Option<&[f32]>, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has the features this copy of the kernel is compiled for.
        return unsafe { grads_row_avx2(ds, p, delta, tanh, scale) };
    }
    grads_row_lanes(ds, p, delta, tanh, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grads_row_avx2(ds: &mut [f32], p: &[f32], delta: f32, tanh: Option<&[f32]>, scale: f32) {
    grads_row_lanes(ds, p, delta, tanh, scale)
}

#[inline(always)]
fn grads_row_lanes(ds: &mut [f32], p: &[f32], delta: f32, tanh: Option<&[f32]>, scale: f32) {
    match tanh {
        Some(th) => {
            for ((v, &p), &th) in ds.iter_mut().zip(p).zip(th) {
                *v = p * (*v - delta) * (1.0 - th * th) * scale;
            }
        }
        None => {
            for (v, &p) in ds.iter_mut().zip(p) {
                *v = p * (*v - delta) * scale;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use burn::tensor::Distribution;

    fn random(shape: [usize; 4], seed: u64) -> Tensor<Cpu, 4> {
        <Cpu as Backend>::seed(&Default::default(), seed);
        Tensor::random(shape, Distribution::Normal(0.0, 3.0), &Default::default())
    }

    fn assert_close(name: &str, a: Tensor<Cpu, 4>, b: Tensor<Cpu, 4>) {
        assert_eq!(a.dims(), b.dims(), "{name}: shapes");
        let scale: f32 = b.clone().abs().max().into_scalar();
        let diff: f32 = (a - b).abs().max().into_scalar();
        let rel = diff / scale.max(1e-6);
        assert!(
            rel < 1e-6,
            "{name}: largest difference {diff}, {rel} of the largest value"
        );
    }

    /// A folded mask `[mb, g, rows, t]` with a different pattern in every row, some keys masked
    /// everywhere and none masked in a whole row.
    fn given_mask(mb: usize, g: usize, rows: usize, t: usize) -> Tensor<Cpu, 4, Bool> {
        let m: Vec<bool> = (0..mb * g * rows * t)
            .map(|i| !(i / t).is_multiple_of(3) && (i * 7 + i / t) % 5 < 2)
            .collect();
        Tensor::from_data(TensorData::new(m, [mb, g, rows, t]), &Default::default())
    }

    /// The host kernels against the tensor formulas, for blocks that start mid-way through the
    /// folded rows, with fewer queries than keys, grouped-query repetition, masks and soft-capping.
    #[test]
    fn host_kernels_match_the_tensor_formulas() {
        let (b, g, rows, t, s) = (2, 3, 12, 9, 6); // 2 query heads per KV head, 6 queries, 9 keys
        let (range, n) = (4..11, 7);
        let mask = given_mask(b, g, rows, t);
        let mask1 = given_mask(1, g, rows, t);
        for softcap in [None, Some(4.0)] {
            for case in 0..3 {
                let masked = || match case {
                    // Rows of positions 1..=5, 1, 2 (a block of 5 positions of two query heads
                    // ends mid-way through the second).
                    0 => Masked::Causal {
                        first: 1,
                        period: 5,
                        offset: t - s,
                    },
                    1 => Masked::Given {
                        mask: &mask,
                        range: range.clone(),
                    },
                    _ => Masked::Given {
                        mask: &mask1,
                        range: range.clone(),
                    },
                };
                let scores = random([b, g, n, t], case);
                let (p1, th1) = host_softmax(scores.clone(), masked(), 0.7, softcap);
                let (p0, th0) = decomposed_softmax(scores, masked(), 0.7, softcap);
                let name = format!("case {case}, softcap {softcap:?}");
                assert_close(&format!("probabilities, {name}"), p1.clone(), p0.clone());
                let sums: Vec<f32> = p1.clone().sum_dim(3).into_data().to_vec().unwrap();
                assert!(
                    sums.iter().all(|x| (x - 1.0).abs() < 1e-5),
                    "{name}: row sums {sums:?}"
                );

                let dp = random([b, g, n, t], 10 + case);
                let delta = random([b, g, n, 1], 20 + case);
                let ds1 = host_grads(p1, dp.clone(), delta.clone(), th1, 0.7);
                let ds0 = decomposed_grads(p0, dp, delta, th0, 0.7);
                assert_close(&format!("score gradients, {name}"), ds1, ds0);
            }
        }
    }

    #[test]
    fn causal_rows_mask_the_future_of_each_row() {
        // 3 rows against 4 keys, as (first position, period, offset).
        let mask = |first, period, offset| -> Vec<bool> {
            let m = causal_rows::<Cpu>(3, first, period, offset, 4, &Default::default());
            m.into_data().iter::<bool>().collect()
        };
        let (o, x) = (false, true);
        // Positions 1, 2, 1 (period 2 from position 1), one key before the queries: position 1
        // reads 3 keys, position 2 all 4.
        assert_eq!(mask(1, 2, 1), [o, o, o, x, o, o, o, o, o, o, o, x]);
        // Positions 0, 1, 2 (period 3), no key before the queries.
        assert_eq!(mask(0, 3, 0), [o, x, x, x, o, o, x, x, o, o, o, x]);
    }

    /// Two workers pad their shares of a batch to different lengths: the probabilities of a row's
    /// real keys must not depend on how many masked keys surround them.
    #[test]
    fn padding_leaves_the_probabilities_unchanged() {
        let real: Vec<f32> = (0..21)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.7)
            .collect();
        let row = |pad_left: usize, pad_right: usize| -> Vec<f32> {
            let t = pad_left + real.len() + pad_right;
            let mut x = vec![0f32; t];
            x[pad_left..pad_left + real.len()].copy_from_slice(&real);
            let given: Vec<bool> = (0..t)
                .map(|k| k < pad_left || k >= pad_left + real.len())
                .collect();
            softmax_row(&mut x, None, 0.9, None, t, Some(&given));
            x[pad_left..pad_left + real.len()].to_vec()
        };
        let unpadded = row(0, 0);
        for (l, r) in [(3, 0), (0, 5), (7, 4), (1, 11)] {
            assert_eq!(row(l, r), unpadded, "padded by {l} and {r}");
        }
    }

    #[test]
    fn a_row_with_every_key_masked_gets_zero_probabilities() {
        let mask = Tensor::<Cpu, 4, Bool>::from_data(
            TensorData::new(vec![true; 3], [1, 1, 1, 3]),
            &Default::default(),
        );
        let (p, _) = softmax(
            random([1, 1, 1, 3], 1),
            Masked::Given {
                mask: &mask,
                range: 0..1,
            },
            1.0,
            None,
        );
        let p: Vec<f32> = p.into_data().to_vec().unwrap();
        assert_eq!(p, [0.0; 3]);
    }
}
