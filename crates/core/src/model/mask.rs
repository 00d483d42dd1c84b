//! Attention masks (true = masked), built on the host: they are small and their logic is easier to
//! check in plain Rust than in tensor ops.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};

/// Mask `[batch, 1, q_len, kv_len]` for the last `q_len` positions of rows whose key positions are
/// `valid[b][..kv_len]` (false = padding). Causal, optional sliding window. A padding query attends only to
/// itself so its softmax row is never empty (an all-masked row would give NaN that leaks through V).
pub fn causal_padding_mask<B: Backend>(
    valid: &[Vec<bool>],
    q_len: usize,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let b = valid.len();
    let kv = valid.first().map_or(0, |r| r.len());
    let offset = kv - q_len;
    let mut data = Vec::with_capacity(b * q_len * kv);
    for row in valid {
        for i in 0..q_len {
            let q = offset + i;
            for (k, &ok) in row.iter().enumerate() {
                let future = k > q;
                let outside = window.is_some_and(|w| q >= k + w);
                let pad = if row[q] { !ok } else { k != q };
                data.push(future || outside || pad);
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [b, 1, q_len, kv]), device)
}

/// Block-diagonal causal mask for packed sequences: position i may attend to j only if j <= i and both
/// carry the same segment id. `segments` is `[batch][seq]`.
pub fn segment_mask<B: Backend>(segments: &[Vec<u32>], device: &B::Device) -> Tensor<B, 4, Bool> {
    let b = segments.len();
    let s = segments.first().map_or(0, |r| r.len());
    let mut data = Vec::with_capacity(b * s * s);
    for row in segments {
        for i in 0..s {
            for j in 0..s {
                data.push(j > i || row[j] != row[i]);
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [b, 1, s, s]), device)
}

/// `[1, 1, q_len, kv_len]`: what a sliding window of `window` positions excludes for the last `q_len`
/// of `kv_len` positions (future keys and keys `window` or more positions back), as transformers'
/// sliding-window mask does.
pub fn window_band<B: Backend>(
    q_len: usize,
    kv_len: usize,
    window: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let offset = kv_len - q_len;
    let data: Vec<bool> = (0..q_len)
        .flat_map(|i| (0..kv_len).map(move |k| k > offset + i || offset + i >= k + window))
        .collect();
    Tensor::from_data(TensorData::new(data, [1, 1, q_len, kv_len]), device)
}

/// Whether `mask` (`[batch, 1, q_len, kv_len]`, true = masked) masks exactly the future of each of the
/// last `q_len` positions and nothing else: what attention without a mask computes.
pub fn plain_causal<B: Backend>(mask: &Tensor<B, 4, Bool>) -> bool {
    let [b, h, q, kv] = mask.dims();
    if h != 1 || q > kv {
        return false;
    }
    let offset = kv - q;
    let data: Vec<bool> = (0..q)
        .flat_map(|i| (0..kv).map(move |k| k > offset + i))
        .collect();
    let causal =
        Tensor::<B, 4, Bool>::from_data(TensorData::new(data, [1, 1, q, kv]), &mask.device());
    let same = mask.clone().equal(causal.expand([b, 1, q, kv])).all();
    same.into_data().iter::<bool>().next().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    #[test]
    fn plain_causal_masks_are_told_from_padded_and_packed_ones() {
        let d = Default::default();
        let full = vec![vec![true; 5]; 2];
        assert!(plain_causal(&causal_padding_mask::<Cpu>(
            &full, 5, None, &d
        )));
        // The last 2 of 5 positions (a prefill after a cached prefix).
        assert!(plain_causal(&causal_padding_mask::<Cpu>(
            &full, 2, None, &d
        )));
        let padded = vec![vec![true; 5], vec![false, true, true, true, true]];
        assert!(!plain_causal(&causal_padding_mask::<Cpu>(
            &padded, 5, None, &d
        )));
        assert!(!plain_causal(&causal_padding_mask::<Cpu>(
            &full,
            5,
            Some(2),
            &d
        )));
        assert!(!plain_causal(&segment_mask::<Cpu>(
            &[vec![0, 0, 1, 1, 1]],
            &d
        )));
        assert!(plain_causal(&segment_mask::<Cpu>(&[vec![3; 4]], &d)));
    }
}
