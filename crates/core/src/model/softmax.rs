//! Softmax of one row in place, on the host, for the CPU backend's fused passes over attention scores
//! (scores.rs) and the LM head's logits (head.rs). Three passes over a row that sits in L1 (the
//! maximum; the exponentials and their sum; the normalisation), in AVX2 + FMA registers where the CPU
//! has them. The exponential is arithmetic only: `expf` is a library call per element, and a portable
//! loop with a branch per element stays scalar (it did: 7.4% of a 1 × 1024 SmolLM2 step went to a
//! scalar softmax, docs/benchmarks.md).

/// Lanes of the portable loops: the maximum and the sum accumulate in `LANES` independent partial
/// results, which the compiler can keep in vector registers (a single running sum is an ordered chain
/// it may not vectorise).
const LANES: usize = 8;

/// `x ← softmax(x)`; all zeros when every element is `-∞` (a row with every key masked). Returns the
/// row's maximum and `Σ exp(x − max)` before normalising (`None` for the all-masked row), from which
/// `log softmax(x)_i = x_i − max − ln Σ`.
///
/// The sum is accumulated in f64: which lane an element lands in depends on the row's length and on
/// where its elements start, so padding the same sequence differently (two workers' shares of a
/// batch) would round an f32 sum differently; in f64 the rounding is far below an f32 step.
pub(super) fn softmax(x: &mut [f32]) -> Option<(f32, f64)> {
    let max = max(x);
    if max == f32::NEG_INFINITY {
        x.fill(0.0);
        return None;
    }
    let sum = exp_sum(x, max);
    let inv = (1.0 / sum) as f32;
    scale(x, inv);
    Some((max, sum))
}

/// The largest element (`-∞` for an empty row or one of `-∞`s).
pub(super) fn max(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has the features this kernel is compiled for.
        return unsafe { avx2::max(x) };
    }
    max_lanes(x)
}

/// `x ← exp(x − shift)` for `shift ≥ max(x)`; returns the sum, accumulated in f64.
pub(super) fn exp_sum(x: &mut [f32], shift: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has the features this kernel is compiled for.
        return unsafe { avx2::exp_sum(x, shift) };
    }
    exp_sum_lanes(x, shift)
}

/// `x ← x · f`.
pub(super) fn scale(x: &mut [f32], f: f32) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has the features this kernel is compiled for.
        return unsafe { avx2::scale(x, f) };
    }
    x.iter_mut().for_each(|v| *v *= f);
}

/// Whether the CPU runs the AVX2 + FMA kernels.
#[cfg(target_arch = "x86_64")]
pub(super) fn avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

fn max_lanes(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            m[l] = if c[l] > m[l] { c[l] } else { m[l] };
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&m)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

fn exp_sum_lanes(x: &mut [f32], shift: f32) -> f64 {
    let mut sums = [0f64; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            c[l] = exp_nonpositive(c[l] - shift);
            sums[l] += c[l] as f64;
        }
    }
    let mut sum = 0f64;
    for v in chunks.into_remainder() {
        *v = exp_nonpositive(*v - shift);
        sum += *v as f64;
    }
    sum + sums.iter().sum::<f64>()
}

/// `eˣ` for `x ≤ 0` (`-∞` included) to within 2 ulp: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, Cephes'
/// degree-6 polynomial for `eʳ`, and `2ⁿ` written into the exponent bits. Below `-87.3` (where `eˣ`
/// leaves the normal floats) it is 0, as softmax wants for masked keys.
#[inline(always)]
pub(super) fn exp_nonpositive(x: f32) -> f32 {
    let xc = x.max(EXP_MIN);
    let shifted = xc * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = P[0];
    for c in &P[1..] {
        p = p * r + c;
    }
    let er = p * r * r + r + 1.0;
    let n = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let two_n = f32::from_bits(((n + 127) << 23) as u32);
    if x < EXP_MIN {
        0.0
    } else {
        er * two_n
    }
}

/// Below this `eˣ` is taken as 0 (`e⁻⁸⁷·³` is near the smallest normal f32).
const EXP_MIN: f32 = -87.3;
/// Adding 1.5·2²³ rounds to an integer, which then sits in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;
/// `ln 2` in two parts (Cephes), so `x − n·ln 2` loses no bits.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' polynomial for `(eʳ − 1 − r) / r²`, highest degree first (its 5.0000001e-1 is 0.5 in f32).
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{EXP_MIN, LN2_HI, LN2_LO, P, ROUND};

    /// [`super::exp_sum`] eight lanes at a time. The last `len mod 8` elements go through the same
    /// vector code, padded with `-∞`, so every element's exponential is the same arithmetic whatever
    /// its position in the row.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_sum(x: &mut [f32], shift: f32) -> f64 {
        let shift = _mm256_set1_ps(shift);
        let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 f32.
            let e = exp(_mm256_sub_ps(unsafe { _mm256_loadu_ps(c.as_ptr()) }, shift));
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), e) };
            lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
        }
        let rest = chunks.into_remainder();
        let mut pad = [f32::NEG_INFINITY; 8];
        pad[..rest.len()].copy_from_slice(rest);
        // SAFETY: `pad` holds 8 f32.
        let e = exp(_mm256_sub_ps(
            unsafe { _mm256_loadu_ps(pad.as_ptr()) },
            shift,
        ));
        unsafe { _mm256_storeu_ps(pad.as_mut_ptr(), e) };
        rest.copy_from_slice(&pad[..rest.len()]);
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
        let mut lanes = [0f64; 8];
        // SAFETY: `lanes` holds 8 f64.
        unsafe {
            _mm256_storeu_pd(lanes.as_mut_ptr(), lo);
            _mm256_storeu_pd(lanes.as_mut_ptr().add(4), hi);
        }
        lanes.iter().sum()
    }

    /// The largest element (`-∞` for an empty row or one of `-∞`s).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn max(x: &[f32]) -> f32 {
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 f32.
            m = _mm256_max_ps(m, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        }
        let mut lanes = [f32::NEG_INFINITY; 8];
        // SAFETY: `lanes` holds 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        chunks
            .remainder()
            .iter()
            .chain(&lanes)
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn scale(x: &mut [f32], f: f32) {
        let fv = _mm256_set1_ps(f);
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 f32.
            unsafe {
                _mm256_storeu_ps(
                    c.as_mut_ptr(),
                    _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), fv),
                )
            };
        }
        chunks.into_remainder().iter_mut().for_each(|v| *v *= f);
    }

    /// [`super::exp_nonpositive`] on eight lanes, with fused multiply-adds (so within an ulp of it,
    /// not equal to it).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp(x: __m256) -> __m256 {
        let xc = _mm256_max_ps(x, _mm256_set1_ps(EXP_MIN));
        let round = _mm256_set1_ps(ROUND);
        let shifted = _mm256_fmadd_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E), round);
        let n = _mm256_sub_ps(shifted, round);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(P[0]);
        for c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let one = _mm256_set1_ps(1.0);
        let er = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, one));
        let n = _mm256_sub_epi32(
            _mm256_castps_si256(shifted),
            _mm256_set1_epi32(ROUND.to_bits() as i32),
        );
        let two_n = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(n, _mm256_set1_epi32(127)),
            23,
        ));
        let below = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_MIN), _CMP_LT_OQ);
        _mm256_andnot_ps(below, _mm256_mul_ps(er, two_n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A softmax under test: the row in place, its maximum and sum (None when all masked).
    type Kernel = dyn Fn(&mut [f32]) -> Option<(f32, f64)>;

    /// `f` applied to `x` against the library exponential over [-90, 0].
    fn check_exp(f: impl Fn(&[f32]) -> Vec<f32>) {
        let x: Vec<f32> = (0..=200_000)
            .map(|i| -90.0 * i as f32 / 200_000.0)
            .collect();
        let mut worst = 0f32;
        for (&x, a) in x.iter().zip(f(&x)) {
            let b = x.exp();
            if x >= EXP_MIN {
                worst = worst.max((a - b).abs() / b);
            } else {
                assert_eq!(a, 0.0, "exp({x}) at the edge of the normal floats");
            }
        }
        assert!(worst < 3.0 * f32::EPSILON, "largest relative error {worst}");
        let ends = f(&[f32::NEG_INFINITY, 0.0]);
        assert_eq!(ends, [0.0, 1.0]);
    }

    #[test]
    fn exp_nonpositive_matches_the_library_exponential() {
        check_exp(|x| x.iter().map(|&v| exp_nonpositive(v)).collect());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_exponential_matches_the_library_exponential() {
        use std::arch::x86_64::{_mm256_loadu_ps, _mm256_storeu_ps};
        if !avx2_fma() {
            eprintln!("skipped: this CPU has no AVX2 + FMA");
            return;
        }
        check_exp(|x| {
            let mut out = vec![0f32; x.len()];
            for (i, o) in x.chunks(8).zip(out.chunks_mut(8)) {
                let mut pad = [0f32; 8];
                pad[..i.len()].copy_from_slice(i);
                // SAFETY: AVX2 + FMA checked above; `pad` holds 8 f32.
                unsafe {
                    let e = avx2::exp(_mm256_loadu_ps(pad.as_ptr()));
                    _mm256_storeu_ps(pad.as_mut_ptr(), e);
                }
                o.copy_from_slice(&pad[..o.len()]);
            }
            out
        });
    }

    /// Both kernels against an f64 softmax, on rows whose lengths are and are not multiples of 8,
    /// with masked (`-∞`) elements and an all-masked row.
    #[test]
    fn softmax_matches_an_f64_softmax() {
        for len in [1, 7, 8, 13, 64, 1023] {
            let row: Vec<f32> = (0..len)
                .map(|i| match i % 11 {
                    3 => f32::NEG_INFINITY,
                    k => (k as f32 - 5.0) * 2.3 + (i as f32 * 0.37).sin() * 9.0,
                })
                .collect();
            let max = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            let want: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp() / sum).collect();
            let lanes = |x: &mut [f32]| {
                let max = max_lanes(x);
                if max == f32::NEG_INFINITY {
                    x.fill(0.0);
                    return None;
                }
                let sum = exp_sum_lanes(x, max);
                x.iter_mut().for_each(|v| *v *= (1.0 / sum) as f32);
                Some((max, sum))
            };
            let mut kernels: Vec<(&str, &Kernel)> = vec![("lanes", &lanes)];
            #[cfg(target_arch = "x86_64")]
            if avx2_fma() {
                kernels.push(("avx2", &softmax));
            }
            for (name, kernel) in kernels {
                let mut x = row.clone();
                let (m, s) = kernel(&mut x).expect("some element is finite");
                assert_eq!(m as f64, max, "{name}, {len}: maximum");
                assert!(
                    (s - sum).abs() < 1e-6 * sum,
                    "{name}, {len}: sum {s} vs {sum}"
                );
                for (i, (&a, &b)) in x.iter().zip(&want).enumerate() {
                    assert!(
                        (a as f64 - b).abs() < 1e-6 * b.max(1e-30) + 1e-12,
                        "{name}, {len}: [{i}] {a} vs {b}"
                    );
                }
                let mut masked = vec![f32::NEG_INFINITY; len];
                assert!(kernel(&mut masked).is_none(), "{name}, {len}: all masked");
                assert!(
                    masked.iter().all(|&v| v == 0.0),
                    "{name}, {len}: all masked"
                );
            }
        }
    }
}
