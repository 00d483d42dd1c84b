//! Scaled dot-product attention for training: one autodiff operation whose backward recomputes the
//! scores block by block, instead of Burn 0.21's autodiff attention, which is the decomposed formula and
//! keeps every intermediate `[batch, heads, seq, seq]` tensor of every layer alive until the backward pass
//! (scores, masked scores, exponentials, probabilities). Here a layer keeps only its queries, keys,
//! values and output (and the probabilities, when they are small); the backward rebuilds one block of
//! query rows at a time, as memory-efficient attention does. Grouped-query attention is folded into the
//! query axis (`[b, kv_heads, rep · seq, d]`), so keys and values are never repeated per query head in
//! the backward pass. Causal blocks read only the keys up to their last query (blocks.rs), and the
//! passes over a block's scores are one pass each way on the CPU (scores.rs).
//!
//! The forward pass is the inner backend's own attention kernel (flex's flash attention on the CPU,
//! CubeCL's on GPUs). Which backends get the lean operation is decided by type: the model is generic over
//! `Backend` and Burn has no hook to replace an autodiff op, so `attend` recognises the autodiff
//! backends burnish runs on (CPU, and wgpu/CUDA when compiled in) and gives every other backend the
//! reference path (K/V repeated, Burn's attention). Both compute the same function; the tests below
//! check values and gradients against the reference.

use std::any::Any;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor, TensorPrimitive};

use super::blocks::{self, Block, Dims};
use super::scores::{self, Masked};

/// Score elements (`[batch, kv_heads, rows, keys]`) a layer may keep for its backward pass, and the size
/// of one block of recomputed scores when it keeps none: 16M f32 values, 64 MB. Below it the
/// probabilities are kept (SmolLM2 at 4×256: 9 MB a layer; at 1×1024: 38 MB) and the backward pass
/// recomputes nothing; above it (SmolLM2 at 1×2048: 151 MB a layer) they are recomputed, a block at a
/// time. At 1×1024 keeping them took a step from 11.0 s to 9.6 s for 1.1 GB more peak memory (3.2 GB).
const BLOCK_SCORES: usize = 1 << 24;

/// What attention computes besides Q, K, V and the mask.
#[derive(Clone, Copy, Debug)]
pub struct AttendOptions {
    /// Score scale; `None` is `head_dim^-1/2`.
    pub scale: Option<f64>,
    /// `cap · tanh(score / cap)` before masking (Gemma 2).
    pub softcap: Option<f64>,
}

impl AttendOptions {
    fn scale(&self, head_dim: usize) -> f64 {
        self.scale.unwrap_or(1.0 / (head_dim as f64).sqrt())
    }

    fn burn(&self, is_causal: bool) -> AttentionModuleOptions {
        AttentionModuleOptions {
            scale: self.scale,
            softcap: self.softcap,
            is_causal,
        }
    }
}

/// `softmax(mask(softcap(Q·Kᵀ·scale)))·V` for queries `[b, heads, s, d]` and keys/values
/// `[b, kv_heads, t, d]` (each KV head serves `heads / kv_heads` query heads). `mask` is
/// `[b, heads, s, t]`, true = masked; `None` is causal attention over the last `s` of `t` positions.
pub fn attend<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    options: AttendOptions,
) -> Tensor<B, 4> {
    attend_blocked(
        Args {
            q,
            k,
            v,
            mask,
            options,
        },
        BLOCK_SCORES,
    )
}

/// The inputs of one attention call, moved through the backend dispatch in one piece.
struct Args<B: Backend> {
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    options: AttendOptions,
}

fn attend_blocked<B: Backend>(args: Args<B>, block: usize) -> Tensor<B, 4> {
    let args = match lean_on::<B, crate::backend::Cpu>(args, block, lean_cpu) {
        Ok(y) => return y,
        Err(args) => args,
    };
    #[cfg(feature = "wgpu")]
    let args = match lean_on::<B, crate::backend::Wgpu>(args, block, lean_wgpu) {
        Ok(y) => return y,
        Err(args) => args,
    };
    #[cfg(feature = "cuda")]
    let args = match lean_on::<B, crate::backend::Cuda>(args, block, lean_cuda) {
        Ok(y) => return y,
        Err(args) => args,
    };
    reference(args.q, args.k, args.v, args.mask, args.options)
}

// One non-generic entry per backend, so the operation is compiled once, here, and not again in every
// crate and test binary that instantiates the model for some backend (the likely cause of a test build
// that took 30 min instead of 14; not confirmed by a timed build).
fn lean_cpu(
    args: Args<Autodiff<crate::backend::Cpu>>,
    block: usize,
) -> Tensor<Autodiff<crate::backend::Cpu>, 4> {
    lean(args.q, args.k, args.v, args.mask, args.options, block)
}

#[cfg(feature = "wgpu")]
fn lean_wgpu(
    args: Args<Autodiff<crate::backend::Wgpu>>,
    block: usize,
) -> Tensor<Autodiff<crate::backend::Wgpu>, 4> {
    lean(args.q, args.k, args.v, args.mask, args.options, block)
}

#[cfg(feature = "cuda")]
fn lean_cuda(
    args: Args<Autodiff<crate::backend::Cuda>>,
    block: usize,
) -> Tensor<Autodiff<crate::backend::Cuda>, 4> {
    lean(args.q, args.k, args.v, args.mask, args.options, block)
}

/// The decomposed path: K/V repeated over the query heads of their group, Burn's attention.
pub fn reference<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    options: AttendOptions,
) -> Tensor<B, 4> {
    let rep = q.dims()[1] / k.dims()[1];
    let burn_options = options.burn(mask.is_none());
    attention(
        q,
        repeat_kv(k, rep),
        repeat_kv(v, rep),
        mask,
        None,
        burn_options,
    )
}

/// Grouped-query attention: each KV head serves `n_rep` query heads.
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, n_rep: usize) -> Tensor<B, 4> {
    if n_rep == 1 {
        return x;
    }
    let [b, nkv, t, hd] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, nkv, n_rep, t, hd])
        .reshape([b, nkv * n_rep, t, hd])
}

/// Runs `op` when `B` is `Autodiff<I>`; gives the arguments back otherwise. The downcasts cannot fail
/// once the type matched: they only name the type the compiler already has.
fn lean_on<B: Backend, I: Backend>(
    args: Args<B>,
    block: usize,
    op: fn(Args<Autodiff<I>>, usize) -> Tensor<Autodiff<I>, 4>,
) -> Result<Tensor<B, 4>, Args<B>> {
    if std::any::TypeId::of::<B>() != std::any::TypeId::of::<Autodiff<I>>() {
        return Err(args);
    }
    let args = Args {
        q: cast(args.q),
        k: cast(args.k),
        v: cast(args.v),
        mask: args.mask.map(cast),
        options: args.options,
    };
    Ok(cast(op(args, block)))
}

/// `x` as the type `U` it is known to be (a generic backend's tensor as the concrete backend's, once
/// their `TypeId`s matched).
pub(crate) fn cast<T: 'static, U: 'static>(x: T) -> U {
    *(Box::new(x) as Box<dyn Any>)
        .downcast::<U>()
        .expect("the backend type matched")
}

/// Inputs and output the backward pass needs, on the inner backend.
#[derive(Clone, Debug)]
struct Saved<B: Backend> {
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    out: Tensor<B, 4>,
    /// The probabilities (and soft-cap tanh) of each block when the layer's scores fit in
    /// `BLOCK_SCORES`.
    probs: Option<Vec<Probs<B>>>,
    options: AttendOptions,
    blocks: Vec<Block>,
}

/// Softmax probabilities `[b, g, block rows, keys]` of one block, and `tanh(S / cap)` when soft-capped.
#[derive(Clone, Debug)]
struct Probs<B: Backend> {
    p: Tensor<B, 4>,
    tanh: Option<Tensor<B, 4>>,
}

#[derive(Debug)]
struct LeanAttention;

fn inner<B: Backend>(p: burn::tensor::ops::FloatTensor<B>) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

fn lean<I: Backend, C: CheckpointStrategy>(
    q: Tensor<Autodiff<I, C>, 4>,
    k: Tensor<Autodiff<I, C>, 4>,
    v: Tensor<Autodiff<I, C>, 4>,
    mask: Option<Tensor<Autodiff<I, C>, 4, Bool>>,
    options: AttendOptions,
    block: usize,
) -> Tensor<Autodiff<I, C>, 4> {
    let (q, k, v) = (
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
    );
    let mask: Option<Tensor<I, 4, Bool>> = mask.map(|m| Tensor::from_primitive(m.into_primitive()));
    let (qi, ki, vi) = (
        inner::<I>(q.primitive.clone()),
        inner::<I>(k.primitive.clone()),
        inner::<I>(v.primitive.clone()),
    );
    let prep = LeanAttention
        .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful();
    let dims = dims(&qi, &ki);
    let causal = mask.is_none();
    // Small layers keep their probabilities (one score-sized tensor instead of the decomposed
    // formula's several), so the backward pass needs no recomputation; large ones recompute. An
    // untracked call (the first pass of a layer under gradient checkpointing, a frozen reference
    // model) computes its output the same way, so a layer recomputed in the backward pass gives the
    // same values bit for bit: with flex's own kernel for the untracked pass, a checkpointed DPO run's
    // adapters drifted 1.4e-5 from the plain run's in 4 steps.
    let keep = dims.b * dims.g * dims.rows() * dims.t <= block;
    let out = match prep {
        OpsKind::Tracked(prep) => {
            let (out, blocks, probs) = if keep {
                let blocks = blocks::plan(dims, causal, None);
                let (out, probs) = forward_keeping(&qi, &ki, &vi, mask.as_ref(), options, &blocks);
                (out, blocks, Some(probs))
            } else {
                let out = forward(qi.clone(), ki.clone(), vi.clone(), mask.clone(), options);
                (out, blocks::plan(dims, causal, Some(block)), None)
            };
            let saved = Saved {
                q: qi,
                k: ki,
                v: vi,
                mask,
                out: out.clone(),
                probs,
                options,
                blocks,
            };
            prep.finish(saved, out.into_primitive().tensor())
        }
        OpsKind::UnTracked(prep) => {
            let out = if keep {
                let blocks = blocks::plan(dims, causal, None);
                forward_keeping(&qi, &ki, &vi, mask.as_ref(), options, &blocks).0
            } else {
                forward(qi, ki, vi, mask, options)
            };
            prep.finish(out.into_primitive().tensor())
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The inner backend's attention kernel, grouped-query heads folded into the query axis when a mask
/// is given (a causal call keeps the kernel's causal fast path and repeats K/V for the kernel only).
fn forward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    options: AttendOptions,
) -> Tensor<B, 4> {
    let [b, h, s, d] = q.dims();
    let [_, g, t, _] = k.dims();
    match mask {
        Some(mask) if h != g => {
            let rows = h / g * s;
            let mb = mask.dims()[0];
            let y = attention(
                q.reshape([b, g, rows, d]),
                k,
                v,
                Some(mask.reshape([mb, g, rows, t])),
                None,
                options.burn(false),
            );
            y.reshape([b, h, s, d])
        }
        mask => reference(q, k, v, mask, options),
    }
}

/// The sizes of an attention call with queries `q` and keys `k`.
fn dims<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>) -> Dims {
    let [b, h, s, d] = q.dims();
    let [_, g, t, _] = k.dims();
    Dims {
        b,
        g,
        rep: h / g,
        s,
        t,
        d,
    }
}

/// The first `keys` keys (or values) of `[b, g, t, d]`.
fn first_keys<B: Backend>(x: &Tensor<B, 4>, keys: usize) -> Tensor<B, 4> {
    let [b, g, _, d] = x.dims();
    x.clone().slice([0..b, 0..g, 0..keys, 0..d])
}

/// The forward pass, block by block as the backward pass will go, keeping each block's probabilities.
fn forward_keeping<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    mask: Option<&Tensor<B, 4, Bool>>,
    options: AttendOptions,
    blocks: &[Block],
) -> (Tensor<B, 4>, Vec<Probs<B>>) {
    let dims = dims(q, k);
    let (rows, Dims { b, g, d, .. }) = (dims.rows(), dims);
    let mask = mask.map(|m| fold_mask(m.clone(), g, rows));
    let qf = q.clone().reshape([b, g, rows, d]);
    let (mut outs, mut probs) = (Vec::new(), Vec::new());
    for block in blocks {
        let keys = block.keys(dims);
        let kt = first_keys(k, keys).swap_dims(2, 3);
        let masked = block.masked(mask.as_ref(), dims);
        let p = probabilities(block.gather(&qf, dims), kt, masked, options);
        outs.push(p.p.clone().matmul(first_keys(v, keys)));
        probs.push(p);
    }
    (blocks::scatter(outs, blocks, dims), probs)
}

/// A `[b, heads, s, t]` mask as `[b, g, rep·s, t]`, the folded layout's rows.
fn fold_mask<B: Backend>(mask: Tensor<B, 4, Bool>, g: usize, rows: usize) -> Tensor<B, 4, Bool> {
    let [mb, _, _, t] = mask.dims();
    mask.reshape([mb, g, rows, t])
}

/// Softmax probabilities of a block's query rows `qb` against the keys it reads (`kt`, transposed):
/// scale, soft-cap, mask, softmax over the keys (scores.rs).
fn probabilities<B: Backend>(
    qb: Tensor<B, 4>,
    kt: Tensor<B, 4>,
    masked: Masked<'_, B>,
    options: AttendOptions,
) -> Probs<B> {
    let d = qb.dims()[3];
    let (p, tanh) = scores::softmax(qb.matmul(kt), masked, options.scale(d), options.softcap);
    Probs { p, tanh }
}

impl<B: Backend> Backward<B, 3> for LeanAttention {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dout = inner::<B>(grads.consume::<B>(&ops.node));
        let (dq, dk, dv) = backward(ops.state, dout);
        for (parent, grad) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad.into_primitive().tensor());
            }
        }
    }
}

/// Gradients of Q, K and V, block by block in the folded layout `[b, g, rep·s, ·]`, each block
/// against the keys it reads (blocks.rs): `dV += Pᵀ·dO`, `dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O))` through
/// the soft-cap and the scale (scores.rs), `dQ = dS·K`, `dK += dSᵀ·Q`. The probabilities are the kept
/// ones, or recomputed per block.
fn backward<B: Backend>(
    saved: Saved<B>,
    dout: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let Saved {
        q,
        k,
        v,
        mask,
        out,
        probs,
        options,
        blocks,
    } = saved;
    let dims = dims(&q, &k);
    let (rows, Dims { b, g, t, d, .. }) = (dims.rows(), dims);
    let scale = options.scale(d);
    let fold = |x: Tensor<B, 4>| x.reshape([b, g, rows, d]);
    let (q, dout, out) = (fold(q), fold(dout), fold(out));
    let mask = mask.map(|m| fold_mask(m, g, rows));
    let mut kept = probs.map(Vec::into_iter);
    let device = q.device();
    let mut dk = Tensor::<B, 4>::zeros([b, g, t, d], &device);
    let mut dv = Tensor::<B, 4>::zeros([b, g, t, d], &device);
    let mut dq = Vec::with_capacity(blocks.len());
    for block in &blocks {
        let keys = block.keys(dims);
        let (kb, vb) = (first_keys(&k, keys), first_keys(&v, keys));
        let (qb, dob) = (block.gather(&q, dims), block.gather(&dout, dims));
        let Probs { p, tanh } = match kept.as_mut() {
            Some(kept) => kept
                .next()
                .expect("one kept block of probabilities per block"),
            None => {
                let masked = block.masked(mask.as_ref(), dims);
                probabilities(qb.clone(), kb.clone().swap_dims(2, 3), masked, options)
            }
        };
        dv = blocks::add_keys(dv, p.clone().swap_dims(2, 3).matmul(dob.clone()));
        // rowsum(dO ⊙ O) of the block's rows, computed per block: a slice of a whole-layer
        // `[b, g, rows, 1]` is strided whenever b · g > 1, and subtracting it broadcast over the keys
        // took the CPU backend's scalar strided path (10% of a 1 × 1024 step).
        let delta = (dob.clone() * block.gather(&out, dims)).sum_dim(3);
        let ds = scores::grads(p, dob.matmul(vb.swap_dims(2, 3)), delta, tanh, scale);
        dq.push(ds.clone().matmul(kb));
        dk = blocks::add_keys(dk, ds.swap_dims(2, 3).matmul(qb));
    }
    (blocks::scatter(dq, &blocks, dims), dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Autodiff, Cpu};
    use burn::tensor::Distribution;

    type Ad = Autodiff<Cpu>;

    fn random(shape: [usize; 4], seed: u64) -> Tensor<Ad, 4> {
        <Cpu as Backend>::seed(&Default::default(), seed);
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default()).require_grad()
    }

    fn padding_mask(b: usize, h: usize, s: usize) -> Tensor<Ad, 4, Bool> {
        // Row 1 has two left-padding positions (attending only to themselves), row 0 none.
        let valid: Vec<Vec<bool>> = (0..b)
            .map(|r| (0..s).map(|i| r == 0 || i >= 2).collect())
            .collect();
        crate::model::causal_padding_mask::<Ad>(&valid, s, None, &Default::default())
            .repeat_dim(1, h)
    }

    fn max_diff(a: Tensor<Cpu, 4>, b: Tensor<Cpu, 4>) -> f32 {
        let scale: f32 = b.clone().abs().max().into_scalar();
        let diff: f32 = (a - b).abs().max().into_scalar();
        diff / scale.max(1e-6)
    }

    /// Output and Q/K/V gradients of the lean op against Burn's decomposed attention, in several
    /// blocks, with grouped-query heads, masks, soft-capping and a custom scale.
    fn check(mask: bool, softcap: Option<f64>, scale: Option<f64>, block: usize) {
        check_len(7, mask, softcap, scale, block)
    }

    fn check_len(s: usize, mask: bool, softcap: Option<f64>, scale: Option<f64>, block: usize) {
        let (b, h, g, d) = (2, 4, 2, 8);
        let q = random([b, h, s, d], 1);
        let k = random([b, g, s, d], 2);
        let v = random([b, g, s, d], 3);
        let dout = random([b, h, s, d], 4).detach();
        let mask = mask.then(|| padding_mask(b, h, s));
        let options = AttendOptions { scale, softcap };
        let run = |lean: bool| {
            let (q2, k2, v2) = (q.clone(), k.clone(), v.clone());
            let args = Args {
                q: q2.clone(),
                k: k2.clone(),
                v: v2.clone(),
                mask: mask.clone(),
                options,
            };
            let y = if lean {
                attend_blocked(args, block)
            } else {
                reference(args.q, args.k, args.v, args.mask, options)
            };
            let grads = (y.clone() * dout.clone()).sum().backward();
            let g = |x: &Tensor<Ad, 4>| x.grad(&grads).expect("tracked");
            (y.inner(), g(&q2), g(&k2), g(&v2))
        };
        let (y1, dq1, dk1, dv1) = run(true);
        let (y0, dq0, dk0, dv0) = run(false);
        for (name, a, b) in [
            ("out", y1, y0),
            ("dq", dq1, dq0),
            ("dk", dk1, dk0),
            ("dv", dv1, dv0),
        ] {
            let diff = max_diff(a, b);
            assert!(diff < 1e-5, "{name}: relative difference {diff}");
        }
    }

    #[test]
    fn causal_matches_the_decomposed_gradients() {
        check(false, None, None, usize::MAX);
        // 2·2·7 = 28 score elements per folded row: blocks of 2 rows, the last one short.
        check(false, None, None, 28 * 2 * 2);
        // Longer than one causal block: kept, the second block reads all keys, the first fewer; and
        // recomputed in blocks of 3 positions.
        let s = blocks::CAUSAL_POSITIONS + 5;
        check_len(s, false, None, None, usize::MAX);
        check_len(s, false, Some(3.0), Some(0.2), 2 * 2 * 2 * s * 3);
    }

    #[test]
    fn masked_softcapped_and_scaled_match_the_decomposed_gradients() {
        check(true, None, None, 28 * 3);
        check(true, Some(5.0), Some(0.3), 28 * 3);
        // Probabilities kept from the forward pass (everything fits one block).
        check(true, Some(5.0), Some(0.3), usize::MAX);
        check(false, Some(2.0), None, 28 * 5);
    }
}
