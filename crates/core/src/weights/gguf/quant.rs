//! ggml tensor types: block layouts, dequantization (bit-exact with ggml's reference `dequantize_row_*`
//! and gguf-py's numpy `gguf.quants.dequantize`) and the few quantizers the writer needs.
//!
//! Every kernel does its float arithmetic in the same order as the reference (`(d * scale) * q - (dmin * m)`
//! evaluated left to right in f32, no fused multiply-add), so results match bit for bit.

use half::f16;

/// A ggml tensor element type, by its GGUF type id. Ids this crate does not know are kept as `Unknown(id)`
/// so a file with one exotic tensor still opens and lists; reading that tensor is an error.
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
    /// A type id this crate does not know (or one ggml has retired, such as the old Q4_2 = 4).
    Unknown(u32),
}

/// Elements per super-block of the k-quants.
const QK_K: usize = 256;

impl GgmlType {
    /// The type for a GGUF type id (`Unknown(id)` for ids not listed here).
    pub fn from_id(id: u32) -> GgmlType {
        use GgmlType::*;
        match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            40 => NVFP4,
            41 => Q1_0,
            other => Unknown(other),
        }
    }

    /// The GGUF type id.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            IQ2_XXS => 16,
            IQ2_XS => 17,
            IQ3_XXS => 18,
            IQ1_S => 19,
            IQ4_NL => 20,
            IQ3_S => 21,
            IQ2_S => 22,
            IQ4_XS => 23,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            IQ1_M => 29,
            BF16 => 30,
            TQ1_0 => 34,
            TQ2_0 => 35,
            MXFP4 => 39,
            NVFP4 => 40,
            Q1_0 => 41,
            Unknown(id) => id,
        }
    }

    /// ggml's name for the type ("Q4_K"), or "unknown type id N".
    pub fn name(self) -> String {
        match self {
            GgmlType::Unknown(id) => format!("unknown ggml type id {id}"),
            known => format!("{known:?}"),
        }
    }

    /// `(elements per block, bytes per block)`; `None` for unknown ids.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        use GgmlType::*;
        Some(match self {
            F32 => (1, 4),
            F16 => (1, 2),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2_K => (QK_K, 84),
            Q3_K => (QK_K, 110),
            Q4_K => (QK_K, 144),
            Q5_K => (QK_K, 176),
            Q6_K => (QK_K, 210),
            Q8_K => (QK_K, 292),
            IQ2_XXS => (QK_K, 66),
            IQ2_XS => (QK_K, 74),
            IQ3_XXS => (QK_K, 98),
            IQ1_S => (QK_K, 50),
            IQ4_NL => (32, 18),
            IQ3_S => (QK_K, 110),
            IQ2_S => (QK_K, 82),
            IQ4_XS => (QK_K, 136),
            I8 => (1, 1),
            I16 => (1, 2),
            I32 => (1, 4),
            I64 => (1, 8),
            F64 => (1, 8),
            IQ1_M => (QK_K, 56),
            BF16 => (1, 2),
            TQ1_0 => (QK_K, 54),
            TQ2_0 => (QK_K, 66),
            MXFP4 => (32, 17),
            NVFP4 => (64, 36),
            Q1_0 => (128, 18),
            Unknown(_) => return None,
        })
    }

    /// Elements per block (`None` for unknown ids).
    pub fn block_size(self) -> Option<usize> {
        self.block_layout().map(|(n, _)| n)
    }

    /// Bytes per block (`None` for unknown ids).
    pub fn type_size(self) -> Option<usize> {
        self.block_layout().map(|(_, b)| b)
    }

    /// Bytes needed for `n` elements: `None` if the type is unknown, `n` is not a whole number of blocks,
    /// or the size overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (bs, ts) = self.block_layout()?;
        let (bs, ts) = (bs as u64, ts as u64);
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(ts)
    }

    /// Whether [`dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        kernel(self).is_some()
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GgmlType::Unknown(id) => write!(f, "unknown ggml type id {id}"),
            known => write!(f, "{known:?}"),
        }
    }
}

/// Dequantizes `n` elements of `dtype` from `bytes` (exactly `n / block_size * type_size` bytes).
pub fn dequantize(dtype: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    // Validate before allocating `n` floats.
    check_sizes(dtype, bytes.len(), n)?;
    let mut out = vec![0f32; n];
    dequantize_into(dtype, bytes, &mut out)?;
    Ok(out)
}

/// Dequantizes `bytes` of `dtype` into `out` (`out.len()` elements), splitting large tensors across the
/// available cores.
pub fn dequantize_into(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let (bs, ts) = check_sizes(dtype, bytes.len(), out.len())?;
    let kernel = kernel(dtype).ok_or_else(|| format!("dequantizing {dtype} is not supported"))?;
    let n_blocks = out.len() / bs;
    // Below ~1M elements a thread costs more than it saves.
    let threads = if out.len() >= (1 << 20) {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8)
    } else {
        1
    };
    if threads <= 1 || n_blocks < threads {
        kernel(bytes, out);
        return Ok(());
    }
    let blocks_per_chunk = n_blocks.div_ceil(threads);
    std::thread::scope(|s| {
        for (b, o) in bytes
            .chunks(blocks_per_chunk * ts)
            .zip(out.chunks_mut(blocks_per_chunk * bs))
        {
            s.spawn(move || kernel(b, o));
        }
    });
    Ok(())
}

fn check_sizes(dtype: GgmlType, n_bytes: usize, n: usize) -> Result<(usize, usize), String> {
    let (bs, ts) = dtype
        .block_layout()
        .ok_or_else(|| format!("cannot dequantize {dtype}"))?;
    if !n.is_multiple_of(bs) {
        return Err(format!(
            "{n} elements is not a whole number of {dtype} blocks of {bs}"
        ));
    }
    let need = (n / bs)
        .checked_mul(ts)
        .ok_or_else(|| format!("{n} elements of {dtype} overflow the address space"))?;
    if need != n_bytes {
        return Err(format!(
            "{n} elements of {dtype} need {need} bytes, got {n_bytes}"
        ));
    }
    Ok((bs, ts))
}

/// A kernel dequantizes whole blocks: `bytes.len() / type_size == out.len() / block_size`.
type Kernel = fn(&[u8], &mut [f32]);

fn kernel(dtype: GgmlType) -> Option<Kernel> {
    use GgmlType::*;
    Some(match dtype {
        F32 => deq_f32,
        F16 => deq_f16,
        BF16 => deq_bf16,
        F64 => deq_f64,
        I8 => deq_i8,
        I16 => deq_i16,
        I32 => deq_i32,
        I64 => deq_i64,
        Q4_0 => deq_q4_0,
        Q4_1 => deq_q4_1,
        Q5_0 => deq_q5_0,
        Q5_1 => deq_q5_1,
        Q8_0 => deq_q8_0,
        Q2_K => deq_q2_k,
        Q3_K => deq_q3_k,
        Q4_K => deq_q4_k,
        Q5_K => deq_q5_k,
        Q6_K => deq_q6_k,
        IQ4_NL => deq_iq4_nl,
        IQ4_XS => deq_iq4_xs,
        TQ1_0 => deq_tq1_0,
        TQ2_0 => deq_tq2_0,
        MXFP4 => deq_mxfp4,
        _ => return None,
    })
}

/// f16 bits → f32, exact, branch-free enough to vectorize. NaN payloads are kept as they are (numpy's
/// `astype(float32)`; x86 F16C would also set the quiet bit of a signalling NaN).
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    // All three cases computed unconditionally and selected, so loops vectorize.
    // Normal: rebias the exponent from 15 to 127.
    let normal = (em << 13) + ((127 - 15) << 23);
    // Inf / NaN: exponent all ones, mantissa (payload) kept.
    let inf_nan = normal + ((127 - 15) << 23);
    // Zero / subnormal: mantissa * 2^-24, exact in f32.
    let subnormal = ((em as i32 as f32) * f32::from_bits(0x3380_0000)).to_bits();
    let is_inf_nan = ((em >= 0x7c00) as u32).wrapping_neg();
    let is_subnormal = ((em < 0x0400) as u32).wrapping_neg();
    let bits = (inf_nan & is_inf_nan)
        | (subnormal & is_subnormal)
        | (normal & !(is_inf_nan | is_subnormal));
    f32::from_bits(sign | bits)
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

fn deq_f32(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

fn deq_f16(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

fn deq_bf16(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
    }
}

fn deq_f64(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        *o = f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32;
    }
}

fn deq_i8(bytes: &[u8], out: &mut [f32]) {
    for (o, &b) in out.iter_mut().zip(bytes) {
        *o = b as i8 as f32;
    }
}

fn deq_i16(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = i16::from_le_bytes([b[0], b[1]]) as f32;
    }
}

fn deq_i32(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32;
    }
}

fn deq_i64(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        *o = i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32;
    }
}

/// Q8_0: `d: f16, qs: [i8; 32]`; `x = q * d`.
fn deq_q8_0(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        for (o, &q) in y.iter_mut().zip(&b[2..34]) {
            *o = (q as i8 as f32) * d;
        }
    }
}

/// Q4_0: `d: f16, qs: [u8; 16]`; low nibbles are elements 0..16, high nibbles 16..32; `x = (q - 8) * d`.
fn deq_q4_0(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q = b[2 + j];
            lo[j] = (((q & 0x0F) as i32 - 8) as f32) * d;
            hi[j] = (((q >> 4) as i32 - 8) as f32) * d;
        }
    }
}

/// Q4_1: `d: f16, m: f16, qs: [u8; 16]`; `x = q * d + m`.
fn deq_q4_1(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q = b[4 + j];
            lo[j] = ((q & 0x0F) as f32) * d + m;
            hi[j] = ((q >> 4) as f32) * d + m;
        }
    }
}

/// Q5_0: `d: f16, qh: u32, qs: [u8; 16]`; bit j of qh is bit 4 of element j; `x = (q - 16) * d`.
fn deq_q5_0(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(22).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q = b[6 + j];
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            lo[j] = ((((q & 0x0F) as u32 | h0) as i32 - 16) as f32) * d;
            hi[j] = ((((q >> 4) as u32 | h1) as i32 - 16) as f32) * d;
        }
    }
}

/// Q5_1: `d: f16, m: f16, qh: u32, qs: [u8; 16]`; `x = q * d + m`.
fn deq_q5_1(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(24).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q = b[8 + j];
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            lo[j] = (((q & 0x0F) as u32 | h0) as f32) * d + m;
            hi[j] = (((q >> 4) as u32 | h1) as f32) * d + m;
        }
    }
}

/// Q2_K (84 bytes): `scales: [u8; 16]` (low nibble scale, high nibble min), `qs: [u8; 64]` (2 bits),
/// `d: f16, dmin: f16`.
fn deq_q2_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(84).zip(out.chunks_exact_mut(QK_K)) {
        let scales = &b[0..16];
        let qs = &b[16..80];
        let d = f16_at(b, 80);
        let dmin = f16_at(b, 82);
        // Sub-block s (16 elements) of half h = s / 8 uses qs[32h + 16(s%2) ..][..16] >> 2((s%8)/2).
        for (s, ys) in y.chunks_exact_mut(16).enumerate() {
            let sc = scales[s];
            let dl = d * ((sc & 0x0F) as f32);
            let ml = dmin * ((sc >> 4) as f32);
            let q = &qs[32 * (s / 8) + 16 * (s % 2)..][..16];
            let shift = 2 * ((s % 8) / 2);
            for (o, &qb) in ys.iter_mut().zip(q) {
                *o = dl * (((qb >> shift) & 3) as f32) - ml;
            }
        }
    }
}

/// Q3_K (110 bytes): `hmask: [u8; 32]`, `qs: [u8; 64]` (low 2 bits), `scales: [u8; 12]` (16 6-bit signed
/// scales, offset 32), `d: f16`. The high bit *clear* means subtract 4.
fn deq_q3_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(110).zip(out.chunks_exact_mut(QK_K)) {
        let hmask = &b[0..32];
        let qs = &b[32..96];
        let sb = &b[96..108];
        let d = f16_at(b, 108);
        for (s, ys) in y.chunks_exact_mut(16).enumerate() {
            let low = if s < 8 { sb[s] & 0x0F } else { sb[s - 8] >> 4 };
            let high = (sb[8 + s % 4] >> (2 * (s / 4))) & 3;
            let scale = (low | (high << 4)) as i32 - 32;
            let dl = d * (scale as f32);
            // Sub-block s: half h = s / 8, j = (s % 8) / 2 (shift 2j, hmask bit 4h + j), l0 = 16(s % 2).
            let h = s / 8;
            let j = (s % 8) / 2;
            let l0 = 16 * (s % 2);
            let q = &qs[32 * h + l0..][..16];
            let hm = &hmask[l0..][..16];
            let bit = 4 * h + j;
            for ((o, &qb), &hb) in ys.iter_mut().zip(q).zip(hm) {
                let lo = ((qb >> (2 * j)) & 3) as i32;
                let sub = if (hb >> bit) & 1 == 1 { 0 } else { 4 };
                *o = dl * ((lo - sub) as f32);
            }
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K super-block (`get_scale_min_k4`).
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K (144 bytes): `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`. Each 64 elements use 32 bytes of
/// qs: low nibbles are the first 32 (sub-block 2i), high nibbles the next 32 (sub-block 2i+1).
fn deq_q4_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(144).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let scales = &b[4..16];
        let qs = &b[16..144];
        for (i, y64) in y.chunks_exact_mut(64).enumerate() {
            let (sc1, m1) = scale_min_k4(2 * i, scales);
            let (sc2, m2) = scale_min_k4(2 * i + 1, scales);
            let d1 = d * sc1 as f32;
            let m1 = dmin * m1 as f32;
            let d2 = d * sc2 as f32;
            let m2 = dmin * m2 as f32;
            let q = &qs[32 * i..][..32];
            let (lo, hi) = y64.split_at_mut(32);
            for l in 0..32 {
                lo[l] = d1 * ((q[l] & 0x0F) as f32) - m1;
                hi[l] = d2 * ((q[l] >> 4) as f32) - m2;
            }
        }
    }
}

/// Q5_K (176 bytes): `d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`. Like Q4_K plus a fifth
/// bit: for 64-element group i, bit 2i of qh[l] for the low half, bit 2i+1 for the high half.
fn deq_q5_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(176).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let scales = &b[4..16];
        let qh = &b[16..48];
        let qs = &b[48..176];
        for (i, y64) in y.chunks_exact_mut(64).enumerate() {
            let (sc1, m1) = scale_min_k4(2 * i, scales);
            let (sc2, m2) = scale_min_k4(2 * i + 1, scales);
            let d1 = d * sc1 as f32;
            let m1 = dmin * m1 as f32;
            let d2 = d * sc2 as f32;
            let m2 = dmin * m2 as f32;
            let q = &qs[32 * i..][..32];
            let (lo, hi) = y64.split_at_mut(32);
            for l in 0..32 {
                let h1 = ((qh[l] >> (2 * i)) & 1) << 4;
                let h2 = ((qh[l] >> (2 * i + 1)) & 1) << 4;
                lo[l] = d1 * (((q[l] & 0x0F) | h1) as f32) - m1;
                hi[l] = d2 * (((q[l] >> 4) | h2) as f32) - m2;
            }
        }
    }
}

/// Q6_K (210 bytes): `ql: [u8; 128]` (low 4 bits), `qh: [u8; 64]` (high 2 bits), `scales: [i8; 16]`,
/// `d: f16`. Each 128 elements use 64 bytes of ql and 32 of qh.
fn deq_q6_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(210).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 208);
        for (h, y128) in y.chunks_exact_mut(128).enumerate() {
            let ql = &b[64 * h..][..64];
            let qh = &b[128 + 32 * h..][..32];
            let sc = &b[192 + 8 * h..][..8];
            // (d * scale) first, as both references do.
            let ds: [f32; 8] = std::array::from_fn(|k| d * (sc[k] as i8 as f32));
            let (y0, rest) = y128.split_at_mut(32);
            let (y1, rest) = rest.split_at_mut(32);
            let (y2, y3) = rest.split_at_mut(32);
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y0[l] = ds[is] * q1 as f32;
                y1[l] = ds[is + 2] * q2 as f32;
                y2[l] = ds[is + 4] * q3 as f32;
                y3[l] = ds[is + 6] * q4 as f32;
            }
        }
    }
}

const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// IQ4_NL: `d: f16, qs: [u8; 16]`; nibbles index a fixed non-linear table.
fn deq_iq4_nl(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q = b[2 + j];
            lo[j] = d * KVALUES_IQ4NL[(q & 0x0F) as usize] as f32;
            hi[j] = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
        }
    }
}

/// IQ4_XS (136 bytes): `d: f16, scales_h: u16, scales_l: [u8; 4], qs: [u8; 128]`; eight 32-element
/// sub-blocks with 6-bit scales (offset 32) over the IQ4_NL table.
fn deq_iq4_xs(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(136).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 0);
        let scales_h = u16::from_le_bytes([b[2], b[3]]);
        let scales_l = &b[4..8];
        for (ib, y32) in y.chunks_exact_mut(32).enumerate() {
            let ls = ((scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F) as i32
                | ((((scales_h >> (2 * ib)) & 3) as i32) << 4);
            let dl = d * ((ls - 32) as f32);
            let q = &b[8 + 16 * ib..][..16];
            let (lo, hi) = y32.split_at_mut(16);
            for j in 0..16 {
                lo[j] = dl * KVALUES_IQ4NL[(q[j] & 0x0F) as usize] as f32;
                hi[j] = dl * KVALUES_IQ4NL[(q[j] >> 4) as usize] as f32;
            }
        }
    }
}

/// TQ1_0 (54 bytes): `qs: [u8; 48], qh: [u8; 4], d: f16`; base-3 digits (ternary -1/0/1) packed five per
/// byte as a fixed-point fraction; digit k of byte b is `((b * 3^k mod 256) * 3) >> 8`.
fn deq_tq1_0(bytes: &[u8], out: &mut [f32]) {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let digit = |b: u8, k: usize| ((((b.wrapping_mul(POW3[k])) as u16 * 3) >> 8) as i32 - 1) as f32;
    for (b, y) in bytes.chunks_exact(54).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 52);
        // Elements 0..160: 5 digits of qs[0..32]; 160..240: 5 digits of qs[32..48]; 240..256: 4 of qh.
        for k in 0..5 {
            for l in 0..32 {
                y[32 * k + l] = d * digit(b[l], k);
            }
            for l in 0..16 {
                y[160 + 16 * k + l] = d * digit(b[32 + l], k);
            }
        }
        for k in 0..4 {
            for l in 0..4 {
                y[240 + 4 * k + l] = d * digit(b[48 + l], k);
            }
        }
    }
}

/// TQ2_0 (66 bytes): `qs: [u8; 64], d: f16`; 2-bit values minus 1, four per byte (shift 2k for the k-th
/// group of 32 within each 128 elements).
fn deq_tq2_0(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(66).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 64);
        for (i, ys) in y.chunks_exact_mut(32).enumerate() {
            let q = &b[32 * (i / 4)..][..32];
            let shift = 2 * (i % 4);
            for (o, &qb) in ys.iter_mut().zip(q) {
                *o = d * ((((qb >> shift) & 3) as i32 - 1) as f32);
            }
        }
    }
}

const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// MXFP4 (17 bytes): `e: u8` (E8M0 scale, halved), `qs: [u8; 16]` (E2M1 values, doubled).
fn deq_mxfp4(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(17).zip(out.chunks_exact_mut(32)) {
        let e = b[0] as u32;
        // ggml_e8m0_to_fp32_half
        let d = f32::from_bits(if e < 2 {
            0x0020_0000 << e
        } else {
            (e - 1) << 23
        });
        let (lo, hi) = y.split_at_mut(16);
        for j in 0..16 {
            let q = b[1 + j];
            lo[j] = d * KVALUES_MXFP4[(q & 0x0F) as usize] as f32;
            hi[j] = d * KVALUES_MXFP4[(q >> 4) as usize] as f32;
        }
    }
}

/// Quantizes `x` to Q8_0 exactly as ggml's `quantize_row_q8_0_ref` (and gguf-py): per 32-element block
/// `d = amax / 127`, `q = round(x * (1 / d))` (half away from zero), `d` stored as f16.
///
/// `x.len()` must be a multiple of 32; a trailing partial block is padded with zeros.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let n_blocks = x.len().div_ceil(32);
    let mut out = Vec::with_capacity(n_blocks * 34);
    for block in x.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for j in 0..32 {
            let v = block.get(j).copied().unwrap_or(0.0);
            out.push((v * id).round() as i8 as u8);
        }
    }
    out
}

/// f32 → f16 bits, round to nearest even (ggml's `GGML_FP32_TO_FP16`, numpy's `astype(float16)`).
pub fn f32_to_f16_bits(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// f32 → bf16 bits exactly as ggml's `ggml_compute_fp32_to_bf16` and gguf-py: round to nearest even,
/// NaNs made quiet.
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    // No overflow: the largest non-NaN pattern is 0xff80_0000.
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn f16_conversion_is_exact() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = f16_bits_to_f32(h);
            if want.is_nan() {
                assert!(got.is_nan());
                assert_eq!(
                    got.to_bits() & 0x803f_ffff,
                    ((h as u32 & 0x8000) << 16) | ((h as u32 & 0x1ff) << 13)
                );
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn ids_round_trip() {
        for id in 0..64 {
            assert_eq!(GgmlType::from_id(id).id(), id);
        }
        assert_eq!(GgmlType::from_id(4), GgmlType::Unknown(4));
        assert_eq!(GgmlType::Q4_K.to_string(), "Q4_K");
    }

    #[test]
    fn q4_0_nibble_order() {
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16b(0.5));
        b[2] = 0x9F; // element 0: 15 - 8 = 7, element 16: 9 - 8 = 1
        let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(y[0], 3.5);
        assert_eq!(y[16], 0.5);
        assert_eq!(y[1], -4.0);
    }

    #[test]
    fn q5_0_high_bits() {
        let mut b = vec![0u8; 22];
        b[..2].copy_from_slice(&f16b(1.0));
        // qh bit 0 -> element 0, bit 16 -> element 16.
        b[2..6].copy_from_slice(&(1u32 | (1 << 16) | (1 << 31)).to_le_bytes());
        let y = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
        assert_eq!(y[0], 0.0); // 16 - 16
        assert_eq!(y[16], 0.0);
        assert_eq!(y[31], 0.0);
        assert_eq!(y[1], -16.0);
    }

    #[test]
    fn q4_k_scale_packing() {
        // Sub-block 5 takes its 6-bit scale from scales[9] low nibble + scales[1] top 2 bits, its min from
        // scales[9] high nibble + scales[5] top 2 bits.
        let mut b = vec![0u8; 144];
        b[..2].copy_from_slice(&f16b(1.0));
        b[2..4].copy_from_slice(&f16b(1.0));
        let s = &mut b[4..16];
        s[1] = 0b11_000000; // sc5 high bits = 3
        s[5] = 0b10_000000; // m5 high bits = 2
        s[9] = 0x52; // sc5 low = 2, m5 low = 5
        let (sc, m) = scale_min_k4(5, s);
        assert_eq!(sc, 2 | (3 << 4));
        assert_eq!(m, 5 | (2 << 4));
        // Element 160 = group 2 (bytes 64..96), high nibble -> sub-block 5.
        b[16 + 64] = 0x30;
        let y = dequantize(GgmlType::Q4_K, &b, 256).unwrap();
        assert_eq!(y[160], 50.0 * 3.0 - 37.0);
        assert_eq!(y[128], 0.0); // sub-block 4: scale and min 0
    }

    #[test]
    fn q6_k_layout() {
        let mut b = vec![0u8; 210];
        b[208..210].copy_from_slice(&f16b(1.0));
        for s in 0..16 {
            b[192 + s] = 1;
        }
        // Element 128 + 64 + 3 (second half, q3 of l = 3): ql[64 + 3] high nibble, qh[32 + 3] bits 4..6.
        b[64 + 3] = 0xA0;
        b[128 + 32 + 3] = 0b0010_0000;
        let y = dequantize(GgmlType::Q6_K, &b, 256).unwrap();
        assert_eq!(y[128 + 64 + 3], ((0xA | (2 << 4)) - 32) as f32);
        assert_eq!(y[0], -32.0);
    }

    #[test]
    fn q8_0_quantize_matches_rounding() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) * 0.37).collect();
        let q = quantize_q8_0(&x);
        assert_eq!(q.len(), 68);
        let y = dequantize(GgmlType::Q8_0, &q, 64).unwrap();
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= 31.5 * 0.37 * (1.0 / 254.0 + 1.0 / 1000.0));
        }
        // The block max maps to exactly +-127.
        assert_eq!(q[2] as i8, -127);
        assert_eq!(quantize_q8_0(&[0.0; 32])[2..], [0u8; 32]);
    }

    #[test]
    fn bf16_rounding() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        // Ties to even: 1 + 2^-8 lies halfway between bf16 1.0 and 1.0078125.
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16_bits(f32::NAN) & 0x7fc0, 0x7fc0);
    }

    #[test]
    fn size_errors() {
        assert!(dequantize(GgmlType::Q8_0, &[0; 34], 31).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[0; 33], 32).is_err());
        assert!(dequantize(GgmlType::IQ2_XXS, &[0; 66], 256).is_err());
        assert!(dequantize(GgmlType::Unknown(99), &[], 0).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[], usize::MAX - 31).is_err());
    }
}
