//! Packing several examples into one sequence, and batching sequences.
//!
//! In a packed sequence every example keeps its own positions (0, 1, ...) and a segment id; attention
//! must be block-diagonal causal (`burnish_core::model::segment_mask`) so that no token sees another
//! example. The label of each example's first token is cleared: with HF's shifted loss it would be
//! predicted from the previous example's last position.

use std::collections::BTreeSet;

use burnish_core::burn::tensor::backend::Backend;
use burnish_core::burn::tensor::{Bool, Int, Tensor, TensorData};
use burnish_core::model::{positions_tensor, segment_mask};

use crate::encode::{TokenizedExample, IGNORE_INDEX};
use crate::error::{Error, Result};

/// One training row: examples side by side, segment ids 1, 2, ... (0 is padding in a `Batch`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Packed {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub position_ids: Vec<i64>,
    pub segment_ids: Vec<u32>,
}

impl Packed {
    /// An unpacked example as a one-segment row.
    pub fn single(ex: &TokenizedExample) -> Self {
        let mut p = Self::default();
        p.push(ex);
        p
    }

    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    pub fn segments(&self) -> usize {
        self.segment_ids.last().copied().unwrap_or(0) as usize
    }

    fn push(&mut self, ex: &TokenizedExample) {
        let seg = self.segments() as u32 + 1;
        let start = self.labels.len();
        self.input_ids.extend(&ex.input_ids);
        self.labels.extend(&ex.labels);
        if let Some(first) = self.labels.get_mut(start) {
            *first = IGNORE_INDEX;
        }
        self.position_ids.extend(0..ex.input_ids.len() as i64);
        self.segment_ids
            .extend(std::iter::repeat_n(seg, ex.input_ids.len()));
    }
}

/// Packs examples into rows of at most `max_length` tokens: best-fit decreasing (each example, longest
/// first, goes into the fullest row it fits), which wastes little room and is deterministic. Within a row,
/// examples keep their input order.
pub fn pack(examples: &[TokenizedExample], max_length: usize) -> Result<Vec<Packed>> {
    if let Some((i, ex)) = examples
        .iter()
        .enumerate()
        .find(|(_, e)| e.input_ids.len() > max_length)
    {
        return Err(Error::Invalid(format!(
            "example {i} has {} tokens, more than the packing length {max_length}; truncate first",
            ex.input_ids.len()
        )));
    }
    let mut order: Vec<usize> = (0..examples.len())
        .filter(|&i| !examples[i].input_ids.is_empty())
        .collect();
    order.sort_by_key(|&i| std::cmp::Reverse(examples[i].input_ids.len()));
    // (room left, bin) for every bin; the smallest room that fits is the best fit.
    let mut free: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut bins: Vec<Vec<usize>> = Vec::new();
    for i in order {
        let len = examples[i].input_ids.len();
        match free.range((len, 0)..).next().copied() {
            Some((room, b)) => {
                free.remove(&(room, b));
                free.insert((room - len, b));
                bins[b].push(i);
            }
            None => {
                free.insert((max_length - len, bins.len()));
                bins.push(vec![i]);
            }
        }
    }
    Ok(bins
        .into_iter()
        .map(|mut b| {
            b.sort_unstable();
            let mut p = Packed::default();
            for i in b {
                p.push(&examples[i]);
            }
            p
        })
        .collect())
}

/// Rows right-padded to the longest, row-major `[rows, len]`. Padding has segment 0, position 0 and no
/// loss; with the segment mask it only ever attends to other padding.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub len: usize,
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub position_ids: Vec<i64>,
    pub segment_ids: Vec<u32>,
}

impl Batch {
    pub fn new(rows: &[Packed], pad_id: u32) -> Self {
        let len = rows.iter().map(Packed::len).max().unwrap_or(0);
        let n = rows.len() * len;
        let mut b = Self {
            rows: rows.len(),
            len,
            input_ids: Vec::with_capacity(n),
            labels: Vec::with_capacity(n),
            position_ids: Vec::with_capacity(n),
            segment_ids: Vec::with_capacity(n),
        };
        for r in rows {
            let pad = len - r.len();
            b.input_ids.extend(
                r.input_ids
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad_id, pad)),
            );
            b.labels.extend(
                r.labels
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(IGNORE_INDEX, pad)),
            );
            b.position_ids.extend(
                r.position_ids
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, pad)),
            );
            b.segment_ids.extend(
                r.segment_ids
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, pad)),
            );
        }
        b
    }

    fn rows_of<T: Clone>(&self, flat: &[T]) -> Vec<Vec<T>> {
        flat.chunks(self.len.max(1)).map(<[T]>::to_vec).collect()
    }

    /// Tensors for `Llama::context(positions, Some(mask))` and `forward_hidden(ids, ...)`; labels stay on
    /// the host side for the loss to pick.
    pub fn tensors<B: Backend>(&self, device: &B::Device) -> BatchTensors<B> {
        let ids: Vec<i64> = self.input_ids.iter().map(|&t| t as i64).collect();
        BatchTensors {
            input_ids: Tensor::from_data(TensorData::new(ids, [self.rows, self.len]), device),
            labels: Tensor::from_data(
                TensorData::new(self.labels.clone(), [self.rows, self.len]),
                device,
            ),
            positions: positions_tensor::<B>(&self.rows_of(&self.position_ids), device),
            mask: segment_mask::<B>(&self.rows_of(&self.segment_ids), device),
        }
    }
}

pub struct BatchTensors<B: Backend> {
    pub input_ids: Tensor<B, 2, Int>,
    pub labels: Tensor<B, 2, Int>,
    pub positions: Tensor<B, 2, Int>,
    /// `[rows, 1, len, len]`, true = masked.
    pub mask: Tensor<B, 4, Bool>,
}
