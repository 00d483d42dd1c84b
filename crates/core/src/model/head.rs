//! Log-probabilities of target tokens through the LM head, for training losses, without holding the
//! `[tokens, vocab]` logits. Rows are taken a block at a time (32 MB of logits; on the CPU, chunks of the
//! vocabulary, `host_blocks`), each block's logits
//! reduced to the targets' log-probabilities and the argmax, then dropped.
//!
//! Under autodiff (CPU, and wgpu/CUDA when compiled in) this is one operation whose backward needs
//! no logits either: a target's log-probability depends on its own hidden row only, so the forward
//! pass also computes, per row, `J = ∂ log p(target) / ∂ hidden = W[target] − Σ_v p_v · W[v]`
//! (`[tokens, hidden]`, through the soft-cap's `1 − tanh²` when there is one), and the backward pass is
//! `d hidden = d logp · J`. That is the work the ordinary backward does on the full logits, moved into
//! the forward pass's blocks. It requires a frozen head (LoRA never adapts `lm_head` here); a head
//! that requires gradients takes the same blocks through Burn's own autodiff.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use super::attend::cast;
use super::linear::{matmul_t, to_dtype};
use super::softmax;

/// Logit elements of one block of rows on the tensor path (GPUs, other dtypes): 8M f32 values, 32 MB
/// (SmolLM2's 49,152-token vocabulary: 170 rows a block). The CPU backend's host path holds at most
/// [`HOST_CHUNK`] at a time.
const BLOCK_LOGITS: usize = 1 << 23;

/// The targets' log-probabilities `[n]` under `softcap(hidden · Wᵀ)` for `hidden` `[n, h]` and the
/// head `w` `[vocab, h]`, and each row's argmax token.
pub(crate) fn target_logps<B: Backend>(
    hidden: Tensor<B, 2>,
    w: Tensor<B, 2>,
    targets: &[i64],
    softcap: Option<f64>,
) -> (Tensor<B, 1>, Vec<i64>) {
    target_logps_blocked(hidden, w, targets, softcap, BLOCK_LOGITS)
}

fn target_logps_blocked<B: Backend>(
    hidden: Tensor<B, 2>,
    w: Tensor<B, 2>,
    targets: &[i64],
    softcap: Option<f64>,
    block: usize,
) -> (Tensor<B, 1>, Vec<i64>) {
    // The lean operation needs a frozen head; a head that requires gradients (or a backend without
    // the operation) takes the blocks through Burn's own autodiff.
    let (hidden, w) = match w.is_require_grad() {
        true => (hidden, w),
        false => match lean_any((hidden, w), targets, softcap, block) {
            Ok(y) => return y,
            Err(args) => args,
        },
    };
    let b = blocks(hidden, w, targets, softcap, block, false);
    (b.logps, b.argmax)
}

/// The lean operation when `B` is one of the autodiff backends compiled in; the tensors back otherwise.
#[allow(clippy::type_complexity)]
fn lean_any<B: Backend>(
    args: (Tensor<B, 2>, Tensor<B, 2>),
    targets: &[i64],
    softcap: Option<f64>,
    block: usize,
) -> Result<(Tensor<B, 1>, Vec<i64>), (Tensor<B, 2>, Tensor<B, 2>)> {
    let args = match lean_on::<B, crate::backend::Cpu>(args, targets, softcap, block, lean_cpu) {
        Ok(y) => return Ok(y),
        Err(args) => args,
    };
    #[cfg(feature = "wgpu")]
    let args = match lean_on::<B, crate::backend::Wgpu>(args, targets, softcap, block, lean_wgpu) {
        Ok(y) => return Ok(y),
        Err(args) => args,
    };
    #[cfg(feature = "cuda")]
    let args = match lean_on::<B, crate::backend::Cuda>(args, targets, softcap, block, lean_cuda) {
        Ok(y) => return Ok(y),
        Err(args) => args,
    };
    Err(args)
}

type LeanFn<I> = fn(
    (Tensor<Autodiff<I>, 2>, Tensor<Autodiff<I>, 2>),
    &[i64],
    Option<f64>,
    usize,
) -> (Tensor<Autodiff<I>, 1>, Vec<i64>);

// One non-generic entry per backend, compiled once here (as attend.rs does).
fn lean_cpu(
    (h, w): (
        Tensor<Autodiff<crate::backend::Cpu>, 2>,
        Tensor<Autodiff<crate::backend::Cpu>, 2>,
    ),
    targets: &[i64],
    softcap: Option<f64>,
    block: usize,
) -> (Tensor<Autodiff<crate::backend::Cpu>, 1>, Vec<i64>) {
    lean(h, w.inner(), targets, softcap, block)
}

#[cfg(feature = "wgpu")]
fn lean_wgpu(
    (h, w): (
        Tensor<Autodiff<crate::backend::Wgpu>, 2>,
        Tensor<Autodiff<crate::backend::Wgpu>, 2>,
    ),
    targets: &[i64],
    softcap: Option<f64>,
    block: usize,
) -> (Tensor<Autodiff<crate::backend::Wgpu>, 1>, Vec<i64>) {
    lean(h, w.inner(), targets, softcap, block)
}

#[cfg(feature = "cuda")]
fn lean_cuda(
    (h, w): (
        Tensor<Autodiff<crate::backend::Cuda>, 2>,
        Tensor<Autodiff<crate::backend::Cuda>, 2>,
    ),
    targets: &[i64],
    softcap: Option<f64>,
    block: usize,
) -> (Tensor<Autodiff<crate::backend::Cuda>, 1>, Vec<i64>) {
    lean(h, w.inner(), targets, softcap, block)
}

/// Runs `op` when `B` is `Autodiff<I>`; gives the tensors back otherwise.
#[allow(clippy::type_complexity)]
fn lean_on<B: Backend, I: Backend>(
    (h, w): (Tensor<B, 2>, Tensor<B, 2>),
    targets: &[i64],
    softcap: Option<f64>,
    block: usize,
    op: LeanFn<I>,
) -> Result<(Tensor<B, 1>, Vec<i64>), (Tensor<B, 2>, Tensor<B, 2>)> {
    if std::any::TypeId::of::<B>() != std::any::TypeId::of::<Autodiff<I>>() {
        return Err((h, w));
    }
    let (logps, argmax) = op((cast(h), cast(w)), targets, softcap, block);
    Ok((cast(logps), argmax))
}

#[derive(Debug)]
struct HeadLogps;

impl<B: Backend> Backward<B, 1> for HeadLogps {
    /// `∂ log p(target) / ∂ hidden`, `[n, h]`.
    type State = Tensor<B, 2>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g: Tensor<B, 1> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
        let dh = ops.state * g.unsqueeze_dim::<2>(1);
        if let [Some(node)] = ops.parents {
            grads.register::<B>(node.id, dh.into_primitive().tensor());
        }
    }
}

fn lean<I: Backend, C: CheckpointStrategy>(
    hidden: Tensor<Autodiff<I, C>, 2>,
    w: Tensor<I, 2>,
    targets: &[i64],
    softcap: Option<f64>,
    block: usize,
) -> (Tensor<Autodiff<I, C>, 1>, Vec<i64>) {
    let h = hidden.into_primitive().tensor();
    let hi: Tensor<I, 2> = Tensor::from_primitive(TensorPrimitive::Float(h.primitive.clone()));
    let prep = HeadLogps
        .prepare::<C>([h.node.clone()])
        .compute_bound()
        .stateful();
    let (out, argmax) = match prep {
        OpsKind::Tracked(prep) => {
            let b = blocks(hi, w, targets, softcap, block, true);
            let jac = b.jac.expect("asked for");
            (
                prep.finish(jac, b.logps.into_primitive().tensor()),
                b.argmax,
            )
        }
        OpsKind::UnTracked(prep) => {
            let b = blocks(hi, w, targets, softcap, block, false);
            (prep.finish(b.logps.into_primitive().tensor()), b.argmax)
        }
    };
    (Tensor::from_primitive(TensorPrimitive::Float(out)), argmax)
}

/// What the blocks produce: log-probabilities `[n]`, argmax tokens, and `∂ logp / ∂ hidden` `[n, h]`
/// when asked for.
struct Blocks<B: Backend> {
    logps: Tensor<B, 1>,
    argmax: Vec<i64>,
    jac: Option<Tensor<B, 2>>,
}

fn blocks<B: Backend>(
    hidden: Tensor<B, 2>,
    w: Tensor<B, 2>,
    targets: &[i64],
    softcap: Option<f64>,
    block: usize,
    want_jac: bool,
) -> Blocks<B> {
    match on_host(&hidden) && w.dtype() == DType::F32 {
        true => host_blocks(hidden, w, targets, softcap, want_jac, block.min(HOST_CHUNK)),
        false => tensor_blocks(hidden, w, targets, softcap, want_jac, block),
    }
}

/// [`Blocks`] as tensor operations, a block of rows of the whole vocabulary at a time.
fn tensor_blocks<B: Backend>(
    hidden: Tensor<B, 2>,
    w: Tensor<B, 2>,
    targets: &[i64],
    softcap: Option<f64>,
    want_jac: bool,
    block: usize,
) -> Blocks<B> {
    let [n, _] = hidden.dims();
    let vocab = w.dims()[0];
    let device = hidden.device();
    let rows = (block / vocab.max(1)).max(1);
    let (mut logps, mut jacs, mut argmax) = (Vec::new(), Vec::new(), Vec::with_capacity(n));
    for r0 in (0..n).step_by(rows) {
        let r1 = (r0 + rows).min(n);
        let t = &targets[r0..r1];
        let idx =
            Tensor::<B, 2, Int>::from_data(TensorData::new(t.to_vec(), [r1 - r0, 1]), &device);
        let z = matmul_t(hidden.clone().slice(r0..r1), w.clone());
        let rows = tensor_rows(z, idx.clone(), softcap);
        argmax.extend(rows.argmax);
        logps.push(rows.logps);
        if want_jac {
            // ∂ logp / ∂ z_v = 1[v = target] − p_v, times 1 − tanh² through the soft-cap (already in
            // `rows.p`).
            let mut wt = w.clone().select(0, idx.squeeze_dim::<1>(1));
            wt = to_dtype(wt, hidden.dtype());
            if let Some(d) = rows.d_target {
                wt = wt * d;
            }
            // p · W in the head's dtype (a bf16/f16 base), back to the activations' f32.
            let pw = to_dtype(
                to_dtype(rows.p, w.dtype()).matmul(w.clone()),
                hidden.dtype(),
            );
            jacs.push(wt - pw);
        }
    }
    Blocks {
        logps: Tensor::cat(logps, 0),
        argmax,
        jac: want_jac.then(|| Tensor::cat(jacs, 0)),
    }
}

/// One block of logits `[r, vocab]` reduced: the targets' log-probabilities `[r]`, each row's argmax,
/// the probabilities `p` (times `1 − tanh²` under a soft-cap), and the targets' `1 − tanh²` `[r, 1]`
/// under a soft-cap.
struct Rows<B: Backend> {
    logps: Tensor<B, 1>,
    argmax: Vec<i64>,
    p: Tensor<B, 2>,
    d_target: Option<Tensor<B, 2>>,
}

/// The CPU backend with f32 activations: the host kernels.
fn on_host<B: Backend>(z: &Tensor<B, 2>) -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<crate::backend::Cpu>()
        && z.dtype() == DType::F32
}

/// [`Rows`] as tensor operations (GPU backends, other dtypes).
fn tensor_rows<B: Backend>(
    mut z: Tensor<B, 2>,
    idx: Tensor<B, 2, Int>,
    softcap: Option<f64>,
) -> Rows<B> {
    let tanh = softcap.map(|cap| {
        let th = (z.clone() / cap).tanh();
        z = th.clone() * cap;
        th
    });
    let top = z.clone().argmax(1).into_data().convert::<i64>();
    let max = z.clone().max_dim(1);
    let lse = (z.clone() - max.clone()).exp().sum_dim(1).log() + max;
    let zt = z.clone().gather(1, idx.clone());
    let logps = (zt - lse.clone()).squeeze_dim::<1>(1);
    let mut p = (z - lse).exp();
    let d_target = tanh.map(|th| {
        let d = th.powi_scalar(2).neg().add_scalar(1.0);
        p = p.clone() * d.clone();
        d.gather(1, idx)
    });
    Rows {
        logps,
        argmax: top.to_vec::<i64>().expect("converted to i64"),
        p,
        d_target,
    }
}

/// Logit elements of one host chunk: 4M f32 values, 16 MB, under glibc's 32 MB limit above which
/// every allocation is a fresh `mmap` whose pages fault in (and are zeroed) again at every step.
const HOST_CHUNK: usize = 1 << 22;

/// [`Blocks`] on the CPU backend: the logits of a block of rows are computed a chunk of the vocabulary
/// at a time, with a running maximum and sum per row (online softmax, as flash attention does over
/// keys), and `Σ_v p_v · W[v]` accumulated over the chunks, rescaled when a row's maximum moves. So
/// the head matrix is packed once for the matrix-product kernel per block of rows (row blocks of the
/// whole vocabulary pack it per block: six times at 1 × 1024 with 32 MB blocks), and no chunk is
/// larger than 16 MB (256 MB blocks, which also pack the head once, cost 330 MB more peak memory at
/// 1 × 1024; glibc serves allocations above 32 MB with fresh pages every time). Each chunk is one
/// pass per row on rayon's threads, in the buffer the logits' matmul wrote (the CPU backend hands a
/// uniquely owned tensor's buffer to `into_data` and back without copying), with the vector
/// exponential of softmax.rs.
fn host_blocks<B: Backend>(
    hidden: Tensor<B, 2>,
    w: Tensor<B, 2>,
    targets: &[i64],
    softcap: Option<f64>,
    want_jac: bool,
    chunk: usize,
) -> Blocks<B> {
    let n = hidden.dims()[0];
    let vocab = w.dims()[0];
    let device = hidden.device();
    // Rows a block: at 4,096, a 16 MB chunk is 1,024 tokens of the vocabulary.
    let rows = n.clamp(1, 4096);
    let step = (chunk / rows).clamp(1, vocab.max(1));
    let cap = softcap.map(|c| c as f32);
    let (mut logps, mut jacs, mut argmax) = (Vec::new(), Vec::new(), Vec::with_capacity(n));
    for r0 in (0..n).step_by(rows) {
        let r1 = (r0 + rows).min(n);
        let hb = hidden.clone().slice(r0..r1);
        let mut state: Vec<RowState> = targets[r0..r1]
            .iter()
            .map(|&t| RowState::new(t as usize, vocab))
            .collect();
        let mut acc: Option<Tensor<B, 2>> = None;
        for v0 in (0..vocab).step_by(step) {
            let v1 = (v0 + step).min(vocab);
            let wc = w.clone().slice(v0..v1);
            let mut data = matmul_t(hb.clone(), wc.clone()).into_data();
            let alpha: Vec<f32> = data
                .as_mut_slice::<f32>()
                .expect("f32 logits")
                .par_chunks_mut(v1 - v0)
                .zip(state.par_iter_mut())
                .map(|(x, st)| st.chunk(x, v0, cap))
                .collect();
            if want_jac {
                let e = Tensor::<B, 2>::from_data(data, (&device, DType::F32)).matmul(wc);
                acc = Some(match acc {
                    None => e,
                    Some(acc) => acc * column::<B>(alpha, &device) + e,
                });
            }
        }
        let f32s = |f: fn(&RowState) -> f32| column::<B>(state.iter().map(f).collect(), &device);
        logps.push(f32s(RowState::logp).squeeze_dim::<1>(1));
        argmax.extend(state.iter().map(|st| st.top as i64));
        if let Some(acc) = acc {
            let idx = Tensor::<B, 1, Int>::from_data(
                TensorData::new(targets[r0..r1].to_vec(), [r1 - r0]),
                &device,
            );
            let wt = w.clone().select(0, idx) * f32s(|st| st.d_target);
            let inv_sum = f32s(|st| (1.0 / st.sum) as f32);
            jacs.push(wt - acc * inv_sum);
        }
    }
    Blocks {
        logps: Tensor::cat(logps, 0),
        argmax,
        jac: want_jac.then(|| Tensor::cat(jacs, 0)),
    }
}

/// `[r, 1]` from `r` values.
fn column<B: Backend>(v: Vec<f32>, device: &B::Device) -> Tensor<B, 2> {
    let r = v.len();
    Tensor::from_data(TensorData::new(v, [r, 1]), (device, DType::F32))
}

/// One row's online softmax over the chunks of the vocabulary seen so far.
struct RowState {
    target: usize,
    /// The largest (soft-capped) logit so far, and the first token that has it.
    max: f32,
    top: usize,
    /// `Σ exp(z − max)` so far.
    sum: f64,
    /// The target's (soft-capped) logit and `1 − tanh²` there (1 without a soft-cap).
    z_target: f32,
    d_target: f32,
}

impl RowState {
    fn new(target: usize, vocab: usize) -> Self {
        assert!(
            target < vocab,
            "target token {target} outside the head's {vocab}-token vocabulary"
        );
        RowState {
            target,
            max: f32::NEG_INFINITY,
            top: 0,
            sum: 0.0,
            z_target: f32::NEG_INFINITY,
            d_target: 1.0,
        }
    }

    /// Takes in the logits `x` of tokens `v0..`, leaving `exp(z − max) · (1 − tanh²)` in `x` (the
    /// chunk's share of `p · W` before the division by the final sum), and returns the factor
    /// `exp(old max − new max)` by which what was accumulated before this chunk must be rescaled.
    fn chunk(&mut self, x: &mut [f32], v0: usize, cap: Option<f32>) -> f32 {
        let d: Option<Vec<f32>> = cap.map(|cap| {
            x.iter_mut()
                .map(|v| {
                    let th = (*v / cap).tanh();
                    *v = cap * th;
                    1.0 - th * th
                })
                .collect()
        });
        if (v0..v0 + x.len()).contains(&self.target) {
            self.z_target = x[self.target - v0];
            self.d_target = d.as_ref().map_or(1.0, |d| d[self.target - v0]);
        }
        let max = softmax::max(x);
        if max == f32::NEG_INFINITY && self.max == f32::NEG_INFINITY {
            x.fill(0.0);
            return 0.0;
        }
        if max > self.max {
            self.top = v0 + x.iter().position(|&v| v == max).unwrap_or(0);
        }
        let new = self.max.max(max);
        let alpha = match self.max {
            m if m == f32::NEG_INFINITY => 0.0,
            m => softmax::exp_nonpositive(m - new),
        };
        self.sum = self.sum * alpha as f64 + softmax::exp_sum(x, new);
        self.max = new;
        if let Some(d) = d {
            x.iter_mut().zip(&d).for_each(|(e, d)| *e *= d);
        }
        alpha
    }

    /// `log p(target) = z_target − max − ln Σ`.
    fn logp(&self) -> f32 {
        self.z_target - self.max - self.sum.ln() as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use burn::tensor::activation::log_softmax;
    use burn::tensor::Distribution;

    type Ad = Autodiff<Cpu>;

    fn reference(
        h: Tensor<Ad, 2>,
        w: Tensor<Ad, 2>,
        targets: &[i64],
        softcap: Option<f64>,
    ) -> (Tensor<Ad, 1>, Vec<i64>) {
        let mut z = h.matmul(w.transpose());
        if let Some(cap) = softcap {
            z = (z / cap).tanh() * cap;
        }
        let n = targets.len();
        let idx = Tensor::<Ad, 2, Int>::from_data(
            TensorData::new(targets.to_vec(), [n, 1]),
            &Default::default(),
        );
        let top = z.clone().argmax(1).into_data().convert::<i64>();
        let lp = log_softmax(z, 1).gather(1, idx).squeeze_dim::<1>(1);
        (lp, top.to_vec().unwrap())
    }

    fn max_diff<const D: usize>(a: Tensor<Cpu, D>, b: Tensor<Cpu, D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// Values, argmax and the hidden states' gradient (under a non-uniform upstream gradient, as DPO
    /// gives) equal the full-logits computation, in one block and in blocks of 3 rows.
    fn check(softcap: Option<f64>, block: usize) {
        let device = Default::default();
        let (n, h, v) = (10, 8, 23);
        let hidden = Tensor::<Cpu, 2>::random([n, h], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<Ad, 2>::random([v, h], Distribution::Normal(0.0, 1.0), &device);
        let targets: Vec<i64> = (0..n as i64).map(|i| (i * 7 + 3) % v as i64).collect();
        let weights = Tensor::<Ad, 1>::from_floats(
            [0.5, -1.0, 2.0, 0.1, 1.0, -0.3, 0.7, 1.5, -2.0, 0.2],
            &device,
        );
        let run = |lean: bool| {
            let x = Tensor::<Ad, 2>::from_inner(hidden.clone()).require_grad();
            let (lp, top) = match lean {
                true => target_logps_blocked(x.clone(), w.clone(), &targets, softcap, block),
                false => reference(x.clone(), w.clone(), &targets, softcap),
            };
            let g = (lp.clone() * weights.clone()).sum().backward();
            (lp.inner(), top, x.grad(&g).unwrap())
        };
        let (lp, top, g) = run(true);
        let (lp_ref, top_ref, g_ref) = run(false);
        assert!(max_diff(lp, lp_ref) < 1e-5);
        assert_eq!(top, top_ref);
        assert!(max_diff(g, g_ref) < 1e-5);
    }

    #[test]
    fn matches_the_full_logits_in_one_block_and_in_blocks() {
        check(None, 1 << 20);
        check(None, 3 * 23);
    }

    #[test]
    fn matches_the_full_logits_through_a_softcap() {
        check(Some(2.0), 1 << 20);
        check(Some(2.0), 3 * 23);
    }

    /// The host path (chunks of the vocabulary, online softmax) against the tensor path (blocks of
    /// rows), with and without a soft-cap, in several chunks and in one.
    #[test]
    fn host_chunks_match_the_tensor_blocks() {
        let device = Default::default();
        let (n, h, v) = (10, 8, 23);
        let hidden = Tensor::<Cpu, 2>::random([n, h], Distribution::Normal(0.0, 2.0), &device);
        let w = Tensor::<Cpu, 2>::random([v, h], Distribution::Normal(0.0, 2.0), &device);
        let targets: Vec<i64> = (0..n as i64).map(|i| (i * 5 + 1) % v as i64).collect();
        for softcap in [None, Some(3.0)] {
            let want = tensor_blocks(hidden.clone(), w.clone(), &targets, softcap, true, 3 * v);
            for chunk in [n * 4, n * 7, n * v] {
                let got = host_blocks(hidden.clone(), w.clone(), &targets, softcap, true, chunk);
                let name = format!("softcap {softcap:?}, chunk {chunk}");
                assert!(
                    max_diff(got.logps, want.logps.clone()) < 1e-5,
                    "{name}: logps"
                );
                assert_eq!(got.argmax, want.argmax, "{name}: argmax");
                let (a, b) = (got.jac.unwrap(), want.jac.clone().unwrap());
                assert!(max_diff(a, b) < 1e-5, "{name}: jacobian");
            }
        }
    }

    #[test]
    fn a_head_that_requires_gradients_gets_them() {
        let device = Default::default();
        let hidden = Tensor::<Ad, 2>::random([4, 3], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<Ad, 2>::random([5, 3], Distribution::Normal(0.0, 1.0), &device);
        let grad_of = |lean: bool| {
            let w = Tensor::<Ad, 2>::from_inner(w.clone().inner()).require_grad();
            let (lp, _) = match lean {
                true => target_logps_blocked(hidden.clone(), w.clone(), &[1, 2, 0, 4], None, 10),
                false => reference(hidden.clone(), w.clone(), &[1, 2, 0, 4], None),
            };
            let g = lp.sum().backward();
            w.grad(&g).unwrap()
        };
        assert!(max_diff(grad_of(true), grad_of(false)) < 1e-5);
    }
}
