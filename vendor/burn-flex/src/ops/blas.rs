//! burnish patch 5: large f32 matrix products through OpenBLAS, loaded at run time.
//!
//! On the 2-core AMD EPYC (Zen 3, AVX2) where burnish's CPU speed is measured, OpenBLAS's `sgemm` ran
//! a LoRA step's projections and LM head faster than the `gemm` crate (docs/benchmarks.md). Nothing is
//! linked at build time, so the pure-Rust build stays the default everywhere: the first large product
//! looks for the shared library and, when it is absent or turned off, every product keeps going
//! through `gemm` as upstream does.
//!
//! `BURNISH_BLAS` chooses: unset or `auto` tries `libopenblas.so.0` (Debian's `libopenblas0`),
//! `libopenblas.so` and `libopenblas.dylib`; `off` never loads one; any other value is the path of a
//! library to load, and failing to load it is reported on stderr once and falls back to `gemm`.
//! Only OpenBLAS is accepted (its `openblas_set_num_threads` must be there): it is set to one thread,
//! and a product is split over rayon's threads, so `RAYON_NUM_THREADS` bounds the CPU work.

use std::sync::OnceLock;

/// `cblas_sgemm(layout, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type Sgemm = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);
type SetThreads = unsafe extern "C" fn(i32);

/// Products summing fewer than this many terms (`k`), or with an output side under [`MIN_SIDE`], stay
/// on `gemm`. OpenBLAS's `sgemm` ran them slower, in GFLOP/s on both cores, OpenBLAS against `gemm`:
/// LoRA's rank-16 factors 22-94 against 53-136; attention's scores over 64-wide heads 42-95 against
/// 50-106. It ran the rest faster: the projections 112-156 against 72-148. Measured on the 2-core
/// Zen 3 of docs/benchmarks.md (its first table).
const MIN_TERMS: usize = 128;
const MIN_SIDE: usize = 64;

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

struct Blas {
    /// Kept so the library stays mapped while `sgemm` points into it.
    _lib: libloading::Library,
    sgemm: Sgemm,
    name: String,
}

static BLAS: OnceLock<Option<Blas>> = OnceLock::new();

fn load() -> Option<Blas> {
    let choice = std::env::var("BURNISH_BLAS").unwrap_or_default();
    let candidates: Vec<&str> = match choice.as_str() {
        "off" => return None,
        "" | "auto" => vec!["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"],
        path => vec![path],
    };
    for name in &candidates {
        // SAFETY: loading OpenBLAS runs its initialisers, which only set up its thread pool.
        let Ok(lib) = (unsafe { libloading::Library::new(name) }) else {
            continue;
        };
        // SAFETY: the symbols are looked up with the signatures OpenBLAS's cblas.h declares.
        let symbols = unsafe {
            let sgemm = lib.get::<Sgemm>(b"cblas_sgemm\0").map(|s| *s);
            let threads = lib
                .get::<SetThreads>(b"openblas_set_num_threads\0")
                .map(|s| *s);
            sgemm.and_then(|s| threads.map(|t| (s, t)))
        };
        match symbols {
            Ok((sgemm, set_threads)) => {
                // Products are split over rayon's threads instead (see `sgemm`).
                // SAFETY: called once, before any product runs.
                unsafe { set_threads(1) };
                return Some(Blas {
                    _lib: lib,
                    sgemm,
                    name: (*name).to_string(),
                });
            }
            Err(e) => eprintln!("burnish: {name} is not OpenBLAS ({e}); matrix products use gemm"),
        }
    }
    if !matches!(choice.as_str(), "" | "auto") {
        eprintln!("burnish: BURNISH_BLAS={choice} could not be loaded; matrix products use gemm");
    }
    None
}

fn blas() -> Option<&'static Blas> {
    BLAS.get_or_init(load).as_ref()
}

/// The library large f32 products run on, if one was loaded (loading it now if not yet tried).
pub fn blas_library() -> Option<&'static str> {
    blas().map(|b| b.name.as_str())
}

/// One operand for cblas: its transpose flag and leading dimension, if its strides are those of a
/// row-major matrix or of a transposed one (cblas takes no other layouts).
fn operand(rows: usize, cols: usize, rs: isize, cs: isize) -> Option<(i32, i32)> {
    let ld = |s: isize, min: usize| (s >= min.max(1) as isize).then(|| i32::try_from(s).ok())?;
    if cs == 1 || cols == 1 {
        ld(if rows == 1 { cols as isize } else { rs }, cols).map(|l| (NO_TRANS, l))
    } else if rs == 1 || rows == 1 {
        ld(cs, rows).map(|l| (TRANS, l))
    } else {
        None
    }
}

/// `out[m, n] = lhs[m, k] · rhs[k, n]` through OpenBLAS, `out` contiguous row-major. Returns false
/// (doing nothing) when the product is under [`MIN_TERMS`] or [`MIN_SIDE`], no library is loaded,
/// the operands' layouts are not ones cblas takes, or a size does not fit cblas's `int`; the caller
/// then uses `gemm`.
///
/// # Safety
/// The pointers must address matrices of the given shapes and element strides, `out` writable.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    out: *mut f32,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
) -> bool {
    if k < MIN_TERMS || m.min(n) < MIN_SIDE {
        return false;
    }
    let Some(blas) = blas() else { return false };
    let (Some((ta, lda)), Some((tb, ldb))) =
        (operand(m, k, lhs_rs, lhs_cs), operand(k, n, rhs_rs, rhs_cs))
    else {
        return false;
    };
    if i32::try_from(m.max(n).max(k)).is_err() {
        return false;
    }
    // Split the longer of the output's sides over rayon's threads, each part one single-threaded
    // `sgemm` (OpenBLAS's own pool would spin after every product, taking the cores from the
    // element-wise work that follows: 8% of a step at 4 × 256). Every output element still sums its
    // `k` products in OpenBLAS's order, whatever the split.
    let parts = rayon::current_num_threads().max(1);
    let (split_rows, len) = if m >= n { (true, m) } else { (false, n) };
    let chunk = len.div_ceil(parts).next_multiple_of(16);
    let (out, lhs, rhs) = (out as usize, lhs as usize, rhs as usize);
    let run = |start: usize| {
        let size = chunk.min(len - start);
        let (rows, cols) = if split_rows { (size, n) } else { (m, size) };
        let (a, b, c) = if split_rows {
            (
                offset(lhs, start as isize * lhs_rs),
                rhs,
                out + start * n * 4,
            )
        } else {
            (lhs, offset(rhs, start as isize * rhs_cs), out + start * 4)
        };
        // SAFETY: the caller's contract; each part writes its own rows or columns of `out`.
        unsafe {
            (blas.sgemm)(
                ROW_MAJOR,
                ta,
                tb,
                rows as i32,
                cols as i32,
                k as i32,
                1.0,
                a as *const f32,
                lda,
                b as *const f32,
                ldb,
                0.0,
                c as *mut f32,
                n as i32,
            )
        };
    };
    use rayon::prelude::*;
    (0..len)
        .step_by(chunk)
        .collect::<Vec<_>>()
        .into_par_iter()
        .for_each(run);
    true
}

/// A pointer (as an address) moved by `elems` f32 elements.
fn offset(addr: usize, elems: isize) -> usize {
    (addr as isize + elems * 4) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operand_layouts() {
        // Row-major [3, 4]; its transpose's view [4, 3] with strides (1, 4); a column vector.
        assert_eq!(operand(3, 4, 4, 1), Some((NO_TRANS, 4)));
        assert_eq!(operand(4, 3, 1, 4), Some((TRANS, 4)));
        assert_eq!(operand(3, 1, 1, 1), Some((NO_TRANS, 1)));
        // A slice of rows of a wider matrix keeps its leading dimension.
        assert_eq!(operand(3, 4, 10, 1), Some((NO_TRANS, 10)));
        // Strides cblas cannot express.
        assert_eq!(operand(3, 4, 8, 2), None);
        assert_eq!(operand(3, 4, 2, 1), None);
    }
}
