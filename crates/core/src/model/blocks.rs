//! How training attention (attend.rs) cuts a layer's folded query rows `[b, g, rep · s, ·]` into blocks
//! of scores. Masked attention reads every key from every row, so its blocks are runs of rows. Causal
//! attention's blocks are runs of query *positions*, taken from every query head of the group, and each
//! reads only the keys up to its last position: with 128 positions a block, a 1024-token sequence
//! computes 56% of the `[s, t]` score matrix instead of all of it (the rest is masked anyway), in the
//! forward pass and in every product of the backward pass.

use std::ops::Range;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

use super::scores::Masked;

/// Query positions in one causal block.
pub(super) const CAUSAL_POSITIONS: usize = 128;

/// The sizes of one attention call: batch, KV heads, query heads per KV head, queries, keys, head
/// width.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    pub b: usize,
    pub g: usize,
    pub rep: usize,
    pub s: usize,
    pub t: usize,
    pub d: usize,
}

impl Dims {
    /// Rows of the folded layout.
    pub fn rows(&self) -> usize {
        self.rep * self.s
    }
}

/// One block of scores.
#[derive(Clone, Debug)]
pub(super) enum Block {
    /// Folded rows `range` (head after head), reading every key: masked attention.
    Rows(Range<usize>),
    /// Query positions `range` of every query head of the group, reading the keys up to the last
    /// position's: causal attention.
    Positions(Range<usize>),
}

/// The blocks of a layer whose score blocks may hold `budget` elements (`None`: one block of rows, or
/// causal blocks of [`CAUSAL_POSITIONS`]).
pub(super) fn plan(dims: Dims, causal: bool, budget: Option<usize>) -> Vec<Block> {
    let Dims {
        b, g, rep, s, t, ..
    } = dims;
    let cut = |len: usize, step: usize| {
        (0..len)
            .step_by(step.max(1))
            .map(move |a| a..(a + step).min(len))
    };
    if causal {
        let step = budget.map_or(CAUSAL_POSITIONS, |n| n / (b * g * rep * t).max(1));
        cut(s, step.clamp(1, CAUSAL_POSITIONS))
            .map(Block::Positions)
            .collect()
    } else {
        let step = budget.map_or(dims.rows(), |n| n / (b * g * t).max(1));
        cut(dims.rows(), step.clamp(1, dims.rows()))
            .map(Block::Rows)
            .collect()
    }
}

impl Block {
    /// The keys the block reads: the first `keys` of `t`.
    pub fn keys(&self, dims: Dims) -> usize {
        match self {
            Block::Rows(_) => dims.t,
            Block::Positions(p) => dims.t - dims.s + p.end,
        }
    }

    /// The block's rows of a folded `[b, g, rep · s, w]` tensor.
    pub fn gather<B: Backend>(&self, x: &Tensor<B, 4>, dims: Dims) -> Tensor<B, 4> {
        let Dims { b, g, rep, s, .. } = dims;
        let w = x.dims()[3];
        match self {
            Block::Rows(r) => x.clone().slice([0..b, 0..g, r.clone(), 0..w]),
            Block::Positions(p) => x
                .clone()
                .reshape([b, g, rep, s, w])
                .slice([0..b, 0..g, 0..rep, p.clone(), 0..w])
                .reshape([b, g, rep * p.len(), w]),
        }
    }

    /// Which of the block's scores are masked; `mask` is the folded mask of masked attention.
    pub fn masked<'a, B: Backend>(
        &self,
        mask: Option<&'a Tensor<B, 4, Bool>>,
        dims: Dims,
    ) -> Masked<'a, B> {
        match (self, mask) {
            (Block::Rows(range), Some(mask)) => Masked::Given {
                mask,
                range: range.clone(),
            },
            (Block::Positions(p), _) => Masked::Causal {
                first: p.start,
                period: p.len(),
                offset: dims.t - dims.s,
            },
            (Block::Rows(_), None) => {
                unreachable!("plan makes row blocks for masked attention only")
            }
        }
    }
}

/// The blocks' `[·, ·, block rows, w]` results put back in order as `[b, rep · g, s, w]`.
pub(super) fn scatter<B: Backend>(
    parts: Vec<Tensor<B, 4>>,
    blocks: &[Block],
    dims: Dims,
) -> Tensor<B, 4> {
    let Dims { b, g, rep, s, .. } = dims;
    let w = parts[0].dims()[3];
    let whole = match blocks[0] {
        Block::Rows(_) => Tensor::cat(parts, 2),
        Block::Positions(_) => {
            let parts = parts
                .into_iter()
                .map(|x| {
                    let n = x.dims()[2] / rep;
                    x.reshape([b, g, rep, n, w])
                })
                .collect();
            Tensor::cat(parts, 3).reshape([b, g, rep * s, w])
        }
    };
    whole.reshape([b, g * rep, s, w])
}

/// `acc[:, :, ..keys] += x` for a `[b, g, t, d]` accumulator and a block's `[b, g, keys, d]` part.
pub(super) fn add_keys<B: Backend>(acc: Tensor<B, 4>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, g, t, d] = acc.dims();
    let keys = x.dims()[2];
    if keys == t {
        return acc + x;
    }
    let range = [0..b, 0..g, 0..keys, 0..d];
    // The sum is a new tensor, so `acc` is the only owner of its buffer again when it is assigned.
    let sum = acc.clone().slice(range.clone()) + x;
    acc.slice_assign(range, sum)
}
