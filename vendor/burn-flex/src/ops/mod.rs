//! Backend operations implementations.

use alloc::borrow::Cow;
use burn_backend::DType;
use burn_std::{bf16, f16};

use crate::FlexTensor;

/// The `DType` that matches `isize` on the current platform.
#[cfg(target_pointer_width = "64")]
pub(crate) const INDEX_DTYPE: DType = DType::I64;
/// The `DType` that matches `isize` on the current platform.
#[cfg(target_pointer_width = "32")]
pub(crate) const INDEX_DTYPE: DType = DType::I32;

/// Minimum total element count for rayon fan-out on per-row or per-chunk loops.
/// Below this, task-dispatch overhead dominates the per-unit work.
#[cfg(feature = "rayon")]
pub(crate) const PARALLEL_THRESHOLD: usize = 256 * 1024;

/// burnish patch: element-wise loops over contiguous slices run on rayon's threads from this many
/// elements on (flex ran them on one thread, leaving the second core idle between matmuls).
pub(crate) const ELEMENTWISE_PARALLEL_FROM: usize = 128 * 1024;

/// burnish patch: the chunk length that splits `n` elements once per thread (a multiple of 64, so
/// chunks keep the SIMD loops' alignment), or `n` when the loop should stay on this thread.
fn elementwise_chunk(n: usize) -> usize {
    #[cfg(feature = "rayon")]
    if n >= ELEMENTWISE_PARALLEL_FROM {
        let threads = rayon::current_num_threads().max(1);
        return n.div_ceil(threads).next_multiple_of(64);
    }
    n.max(1)
}

/// burnish patch: `f` over chunks of `dst`, in parallel for large slices.
pub(crate) fn par_chunks_mut<A: Send>(dst: &mut [A], f: impl Fn(&mut [A]) + Sync + Send) {
    let chunk = elementwise_chunk(dst.len());
    #[cfg(feature = "rayon")]
    if chunk < dst.len() {
        use rayon::prelude::*;
        dst.par_chunks_mut(chunk).for_each(f);
        return;
    }
    f(dst)
}

/// burnish patch: `f` over matching chunks of `dst` and `src` (same length), in parallel for large
/// slices.
pub(crate) fn par_zip_chunks_mut<A: Send, B: Sync>(
    dst: &mut [A],
    src: &[B],
    f: impl Fn(&mut [A], &[B]) + Sync + Send,
) {
    debug_assert_eq!(dst.len(), src.len());
    let chunk = elementwise_chunk(dst.len());
    #[cfg(feature = "rayon")]
    if chunk < dst.len() {
        use rayon::prelude::*;
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| f(d, s));
        return;
    }
    f(dst, src)
}

/// burnish patch: `src` mapped element by element into a new vector, in parallel for large slices.
pub(crate) fn par_map<A: Sync, B: Send>(src: &[A], f: impl Fn(&A) -> B + Sync + Send) -> alloc::vec::Vec<B> {
    #[cfg(feature = "rayon")]
    if src.len() >= ELEMENTWISE_PARALLEL_FROM {
        use rayon::prelude::*;
        let mut out = alloc::vec::Vec::with_capacity(src.len());
        src.par_iter().map(f).collect_into_vec(&mut out);
        return out;
    }
    src.iter().map(f).collect()
}

/// burnish patch: `f(a[i], b[i])` into a new vector (same lengths), in parallel for large slices.
pub(crate) fn par_map2<A: Copy + Sync, B: Copy + Sync, C: Send>(
    a: &[A],
    b: &[B],
    f: &(impl Fn(A, B) -> C + Sync + Send),
) -> alloc::vec::Vec<C> {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(feature = "rayon")]
    if a.len() >= ELEMENTWISE_PARALLEL_FROM {
        use rayon::prelude::*;
        let mut out = alloc::vec::Vec::with_capacity(a.len());
        a.par_iter()
            .zip(b.par_iter())
            .map(|(&x, &y)| f(x, y))
            .collect_into_vec(&mut out);
        return out;
    }
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

/// Wrapper for raw mutable pointers that can be sent across rayon threads.
///
/// # Safety
///
/// The caller must ensure:
/// - The pointer remains valid for the lifetime of all uses
/// - No two threads write to the same offset
/// - No references to the underlying data exist during writes
#[cfg(feature = "rayon")]
pub(crate) struct SendMutPtr<T>(*mut T);

#[cfg(feature = "rayon")]
unsafe impl<T> Send for SendMutPtr<T> {}
#[cfg(feature = "rayon")]
unsafe impl<T> Sync for SendMutPtr<T> {}

#[cfg(feature = "rayon")]
impl<T> SendMutPtr<T> {
    pub(crate) fn new(ptr: *mut T) -> Self {
        Self(ptr)
    }

    /// Write `val` at the given element offset.
    ///
    /// # Safety
    /// Offset must be in bounds and no other thread may write to the same offset.
    pub(crate) unsafe fn write(&self, offset: usize, val: T) {
        unsafe { self.0.add(offset).write(val) }
    }

    /// Returns the raw pointer offset by `offset` elements.
    ///
    /// # Safety
    /// Offset must be in bounds.
    pub(crate) unsafe fn ptr_add(&self, offset: usize) -> *mut T {
        unsafe { self.0.add(offset) }
    }
}

/// Read a float tensor's storage as f32 values, regardless of source dtype.
/// Returns a borrowed slice for F32 (zero-copy) and an owned Vec for other
/// float dtypes (F64, F16, BF16).
///
/// Returns elements in underlying buffer order. Callers needing logical
/// iteration order must call `to_contiguous()` first.
///
/// # Panics
/// Panics if the tensor's dtype is not one of F32, F64, F16, or BF16.
pub(crate) fn float_storage_as_f32(tensor: &FlexTensor) -> Cow<'_, [f32]> {
    match tensor.dtype() {
        DType::F32 => Cow::Borrowed(tensor.storage::<f32>()),
        DType::F64 => Cow::Owned(tensor.storage::<f64>().iter().map(|&x| x as f32).collect()),
        DType::F16 => Cow::Owned(
            tensor
                .storage::<f16>()
                .iter()
                .map(|x| f32::from(*x))
                .collect(),
        ),
        DType::BF16 => Cow::Owned(
            tensor
                .storage::<bf16>()
                .iter()
                .map(|x| f32::from(*x))
                .collect(),
        ),
        other => panic!("float_storage_as_f32: unsupported dtype {:?}", other),
    }
}

pub mod activation;
pub mod attention;
pub mod binary;
#[cfg(feature = "blas")]
pub mod blas;
mod bool;
pub mod cat;
pub mod comparison;
#[macro_use]
mod conv_common;
pub mod conv;
pub mod conv_transpose;
pub mod cumulative;
pub mod deform_conv;
pub mod expand;
pub mod fft;
pub mod flip;
mod float;
pub mod gather_scatter;
pub mod grid_sample;
mod int;
pub mod interpolate;
pub mod mask;
pub mod matmul;
mod module;
pub mod pool;
mod qtensor;
pub mod reduce;
pub mod repeat_dim;
pub mod slice;
pub mod sort;
mod transaction;
pub mod unary;
pub mod unfold;
