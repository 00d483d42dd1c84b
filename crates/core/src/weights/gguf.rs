//! GGUF files (llama.cpp's single-file format): a memory-mapped, validating reader for versions 2 and 3,
//! dequantization of the common ggml types to f32, and a writer.
//!
//! Layout (all little-endian): `"GGUF"`, `version: u32`, `n_tensors: u64`, `n_kv: u64`, then `n_kv`
//! metadata entries (`key: string, type: u32, value`), then `n_tensors` tensor infos
//! (`name: string, n_dims: u32, dims: [u64; n_dims], type: u32, offset: u64`), padding to
//! `general.alignment` (default 32), and the tensor data; each tensor's `offset` is relative to the start of
//! the data section. A string is `len: u64` + UTF-8 bytes; an array is `type: u32, count: u64` + elements.
//!
//! Dims are stored fastest-varying first (ggml's `ne[0]` is the row length), so a row-major (PyTorch/HF)
//! `[out, in]` matrix is stored with dims `[in, out]`; [`GgufTensorInfo::shape`] reverses them.
//!
//! Opening never panics and never trusts a count: every length is checked against the bytes that remain
//! before anything is allocated, and every tensor's byte range must lie inside the file without overlapping
//! another. Problems are reported as [`Error::Corrupt`] naming the file and what is wrong.

mod quant;
mod value;
mod writer;

pub use quant::{
    dequantize, dequantize_into, f16_bits_to_f32, f32_to_bf16_bits, f32_to_f16_bits, quantize_q8_0,
    GgmlType,
};
pub use value::GgufValue;
pub use writer::GgufWriter;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use value::type_id;

/// The 4 bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of each tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays accepted (real files use at most 2).
const MAX_ARRAY_DEPTH: u32 = 16;
/// The most entries reserved up front for a count read from the file. A count is checked against the bytes
/// left before anything is read, but each entry takes more memory than its smallest encoding (a 1-byte
/// array element becomes a 32-byte `GgufValue`), so reserving the full count of a corrupt multi-GB file
/// could ask for more memory than the machine has before the first element fails to parse; vectors grow
/// as entries actually parse instead.
const MAX_RESERVE: u64 = 4096;

fn reserve(count: u64) -> usize {
    count.min(MAX_RESERVE) as usize
}
const FORMAT: &str = "GGUF";

/// One tensor's entry in the file's tensor table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// As stored: `ne[0]` (the contiguous, fastest-varying dimension) first.
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Byte offset of the tensor's data from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Row-major shape (dims reversed): a tensor stored with dims `[in, out]` has shape `[out, in]`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect()
    }

    /// Number of elements (saturating; for a tensor of an opened file it is exact). For a known type the
    /// file holds that many elements' bytes; an unknown type's count is only what the header claims, so
    /// check [`GgmlType::can_dequantize`] before sizing a buffer for [`GgufFile::tensor_f32_into`].
    pub fn n_elements(&self) -> usize {
        self.dims.iter().fold(1usize, |n, &d| {
            n.saturating_mul(usize::try_from(d).unwrap_or(usize::MAX))
        })
    }

    /// Size of the tensor's data in bytes; `None` for an unknown type.
    pub fn n_bytes(&self) -> Option<usize> {
        let n = self.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))?;
        self.dtype
            .bytes_for(n)
            .and_then(|b| usize::try_from(b).ok())
    }
}

/// An open GGUF file: parsed header, metadata and tensor table over a read-only memory map of the file.
pub struct GgufFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, GgufValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and validates a GGUF v2/v3 file. The tensor data is not read, only mapped.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 24 {
            return Err(Error::corrupt(
                path,
                FORMAT,
                format!("file is {len} bytes, shorter than the 24-byte GGUF header"),
            ));
        }
        // SAFETY: the map is read-only and private to this struct. As with every memory-mapped reader,
        // another process truncating or rewriting the file while it is open is undefined behaviour; model
        // files are not modified in place.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let parsed = parse(&mmap).map_err(|msg| Error::corrupt(path, FORMAT, msg))?;
        let meta_index = parsed
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let tensor_index = parsed
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            meta_index,
            tensors: parsed.tensors,
            tensor_index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata entries, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A string value (`None` if absent or not a string).
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// An integer value that fits u64 (`None` if absent or not an integer).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// Any numeric value as f64 (`None` if absent or not numeric).
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }

    /// `general.architecture` ("llama", "qwen2"...), the prefix of the model's hyperparameter keys.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    fn info_or_missing(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.tensor_info(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_owned(),
        })
    }

    /// The raw bytes of a tensor (still quantized), borrowed from the memory map.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.info_or_missing(name)?;
        self.bytes_of(info)
    }

    fn bytes_of(&self, info: &GgufTensorInfo) -> Result<&[u8]> {
        let Some(n_bytes) = info.n_bytes() else {
            return Err(Error::DType {
                path: self.path.clone(),
                name: info.name.clone(),
                dtype: info.dtype.name(),
            });
        };
        // Validated by `open`; re-checked so a hand-edited info can never index out of bounds.
        let start = usize::try_from(self.data_offset.saturating_add(info.offset)).ok();
        start
            .and_then(|s| self.mmap.get(s..s.checked_add(n_bytes)?))
            .ok_or_else(|| {
                Error::corrupt(
                    &self.path,
                    FORMAT,
                    format!("tensor `{}` lies outside the file", info.name),
                )
            })
    }

    /// The tensor dequantized to f32, row-major in [`GgufTensorInfo::shape`] order.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (info, bytes) = self.dequantizable(name)?;
        dequantize(info.dtype, bytes, info.n_elements()).map_err(|msg| {
            Error::corrupt(&self.path, FORMAT, format!("tensor `{}`: {msg}", info.name))
        })
    }

    /// Like [`tensor_f32`](Self::tensor_f32) into a caller's buffer of exactly
    /// [`n_elements`](GgufTensorInfo::n_elements) floats (reusing a buffer saves the page faults of a
    /// fresh allocation, which dominate the cost for large tensors).
    pub fn tensor_f32_into(&self, name: &str, out: &mut [f32]) -> Result<()> {
        let (info, bytes) = self.dequantizable(name)?;
        if out.len() != info.n_elements() {
            return Err(Error::Shape {
                path: self.path.clone(),
                name: info.name.clone(),
                expected: vec![out.len()],
                actual: info.shape(),
            });
        }
        dequantize_into(info.dtype, bytes, out).map_err(|msg| {
            Error::corrupt(&self.path, FORMAT, format!("tensor `{}`: {msg}", info.name))
        })
    }

    fn dequantizable(&self, name: &str) -> Result<(&GgufTensorInfo, &[u8])> {
        let info = self.info_or_missing(name)?;
        if !info.dtype.can_dequantize() {
            return Err(Error::DType {
                path: self.path.clone(),
                name: info.name.clone(),
                dtype: info.dtype.name(),
            });
        }
        Ok((info, self.bytes_of(info)?))
    }
}

/// The parsed header of a GGUF file.
struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<GgufTensorInfo>,
}

/// A bounds-checked little-endian cursor. Errors are plain messages; [`GgufFile::open`] adds the path.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let rem = self.remaining();
        if n > rem {
            return Err(format!(
                "truncated: {n} bytes needed at offset {} but the file ends after {rem}",
                self.pos
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.u64()?;
        let rem = self.remaining();
        if len > rem as u64 {
            return Err(format!(
                "string length {len} at offset {} exceeds the {rem} bytes left in the file",
                self.pos - 8
            ));
        }
        let start = self.pos;
        let bytes = self.take(len as usize)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(format!("string at offset {start} is not valid UTF-8 ({e})")),
        }
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<GgufValue, String> {
        use type_id as t;
        Ok(match ty {
            t::U8 => GgufValue::U8(self.u8()?),
            t::I8 => GgufValue::I8(self.u8()? as i8),
            t::U16 => GgufValue::U16(self.u16()?),
            t::I16 => GgufValue::I16(self.u16()? as i16),
            t::U32 => GgufValue::U32(self.u32()?),
            t::I32 => GgufValue::I32(self.u32()? as i32),
            t::F32 => GgufValue::F32(f32::from_bits(self.u32()?)),
            t::U64 => GgufValue::U64(self.u64()?),
            t::I64 => GgufValue::I64(self.u64()? as i64),
            t::F64 => GgufValue::F64(f64::from_bits(self.u64()?)),
            t::BOOL => match self.u8()? {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(format!("bool value {b} is neither 0 nor 1")),
            },
            t::STRING => GgufValue::String(self.string()?),
            t::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"));
                }
                let elem = self.u32()?;
                let count = self.u64()?;
                let min = min_value_size(elem)
                    .ok_or_else(|| format!("array has unknown element type id {elem}"))?;
                let rem = self.remaining();
                if count.checked_mul(min).is_none_or(|need| need > rem as u64) {
                    return Err(format!(
                        "array of {count} {} elements needs at least {count}×{min} bytes but only {rem} \
                         remain",
                        value::type_name(elem)
                    ));
                }
                let mut items = Vec::with_capacity(reserve(count));
                for i in 0..count {
                    let v = self
                        .value(elem, depth + 1)
                        .map_err(|e| format!("array element {i}: {e}"))?;
                    items.push(v);
                }
                GgufValue::Array(items)
            }
            other => return Err(format!("unknown value type id {other}")),
        })
    }
}

/// The fewest bytes a value of this type can occupy (`None` for unknown types).
fn min_value_size(ty: u32) -> Option<u64> {
    use type_id as t;
    Some(match ty {
        t::U8 | t::I8 | t::BOOL => 1,
        t::U16 | t::I16 => 2,
        t::U32 | t::I32 | t::F32 => 4,
        t::U64 | t::I64 | t::F64 | t::STRING => 8,
        t::ARRAY => 12,
        _ => return None,
    })
}

fn parse(buf: &[u8]) -> Result<Parsed, String> {
    let mut r = Reader { buf, pos: 0 };
    let (version, n_tensors, n_kv) = header(&mut r)?;
    let metadata = read_metadata(&mut r, n_kv)?;
    let alignment = alignment_of(&metadata)?;
    let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(reserve(n_tensors));
    let mut seen_names = std::collections::HashSet::with_capacity(reserve(n_tensors));
    for i in 0..n_tensors {
        let info = tensor_info(&mut r).map_err(|e| format!("tensor info {i}: {e}"))?;
        if !seen_names.insert(info.name.clone()) {
            return Err(format!("duplicate tensor name `{}`", info.name));
        }
        tensors.push(info);
    }
    let data_offset = (r.pos as u64)
        .div_ceil(alignment)
        .checked_mul(alignment)
        .ok_or("data offset overflows")?;
    check_tensor_data(&tensors, data_offset, alignment, buf.len() as u64)?;
    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

/// Magic, version (2 or 3, little-endian), tensor count and metadata count, the counts checked
/// against what the rest of the file could hold.
fn header(r: &mut Reader<'_>) -> Result<(u32, u64, u64), String> {
    let magic = r.array::<4>()?;
    if magic != GGUF_MAGIC {
        return Err(format!(
            "not a GGUF file: starts with {:?} instead of \"GGUF\"",
            String::from_utf8_lossy(&magic)
        ));
    }
    let version = r.u32()?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(
                "GGUF version 1 is not supported (only versions 2 and 3); re-convert the model \
                        with a current llama.cpp"
                    .into(),
            )
        }
        v if matches!(v.swap_bytes(), 1..=3) => {
            return Err(format!(
                "big-endian GGUF (version {}) is not supported",
                v.swap_bytes()
            ))
        }
        v => return Err(format!("unsupported GGUF version {v} (supported: 2 and 3)")),
    }
    let n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    // Each metadata entry takes at least 13 bytes (key length, type, 1-byte value), each tensor info 24
    // (name length, n_dims, type, offset).
    let rem = r.remaining() as u64;
    if n_kv.checked_mul(13).is_none_or(|n| n > rem) {
        return Err(format!(
            "header claims {n_kv} metadata entries, more than the {rem} remaining bytes can hold"
        ));
    }
    if n_tensors.checked_mul(24).is_none_or(|n| n > rem) {
        return Err(format!(
            "header claims {n_tensors} tensors, more than the {rem} remaining bytes can hold"
        ));
    }
    Ok((version, n_tensors, n_kv))
}

/// `n_kv` metadata entries; a key may appear once.
fn read_metadata(r: &mut Reader<'_>, n_kv: u64) -> Result<Vec<(String, GgufValue)>, String> {
    let mut metadata: Vec<(String, GgufValue)> = Vec::with_capacity(reserve(n_kv));
    let mut seen_keys = std::collections::HashSet::with_capacity(reserve(n_kv));
    for i in 0..n_kv {
        let key = r
            .string()
            .map_err(|e| format!("metadata entry {i}: key: {e}"))?;
        let value = r
            .u32()
            .and_then(|ty| r.value(ty, 0))
            .map_err(|e| format!("metadata entry {i} (`{key}`): {e}"))?;
        if !seen_keys.insert(key.clone()) {
            return Err(format!("duplicate metadata key `{key}`"));
        }
        metadata.push((key, value));
    }
    Ok(metadata)
}

/// `general.alignment`, or the default; a power of two up to 2^30.
fn alignment_of(metadata: &[(String, GgufValue)]) -> Result<u64, String> {
    match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, v)) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 30 => Ok(a),
            _ => Err(format!(
                "general.alignment = {v} is not a power of two up to 2^30"
            )),
        },
    }
}

/// Every tensor must be a whole number of blocks, aligned, inside the file, and not overlap another.
fn check_tensor_data(
    tensors: &[GgufTensorInfo],
    data_offset: u64,
    alignment: u64,
    file_len: u64,
) -> Result<(), String> {
    let mut ranges: Vec<(u64, u64, usize)> = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        if let Some((start, end)) = tensor_range(t, data_offset, alignment, file_len)? {
            ranges.push((start, end, i));
        }
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        let ((_, a_end, a), (b_start, _, b)) = (w[0], w[1]);
        if b_start < a_end {
            return Err(format!(
                "tensors `{}` and `{}` overlap",
                tensors[a].name, tensors[b].name
            ));
        }
    }
    Ok(())
}

/// The bytes `start..end` of one tensor's data, checked; `None` for an empty tensor or one of a type
/// whose size is unknown (only its start is checked).
fn tensor_range(
    t: &GgufTensorInfo,
    data_offset: u64,
    alignment: u64,
    file_len: u64,
) -> Result<Option<(u64, u64)>, String> {
    let ctx = || format!("tensor `{}` ({}, dims {:?})", t.name, t.dtype, t.dims);
    let n = t
        .dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .filter(|&n| usize::try_from(n).is_ok())
        .ok_or_else(|| format!("{}: element count overflows", ctx()))?;
    if !t.offset.is_multiple_of(alignment) {
        return Err(format!(
            "{}: data offset {} is not a multiple of the alignment {alignment}",
            ctx(),
            t.offset
        ));
    }
    let start = data_offset
        .checked_add(t.offset)
        .ok_or_else(|| format!("{}: data offset {} overflows", ctx(), t.offset))?;
    let Some(bs) = t.dtype.block_size() else {
        if start > file_len {
            return Err(format!(
                "{}: data starts at byte {start}, past the end of the {file_len}-byte file",
                ctx()
            ));
        }
        return Ok(None);
    };
    let row = t.dims.first().copied().unwrap_or(1);
    if !row.is_multiple_of(bs as u64) {
        return Err(format!(
            "{}: row length {row} is not a multiple of the block size {bs}",
            ctx()
        ));
    }
    let size = t
        .dtype
        .bytes_for(n)
        .ok_or_else(|| format!("{}: byte size overflows", ctx()))?;
    let end = start
        .checked_add(size)
        .filter(|&e| e <= file_len)
        .ok_or_else(|| {
            format!(
                "{}: data (bytes {start}..{}) runs past the end of the {file_len}-byte file",
                ctx(),
                start as u128 + size as u128
            )
        })?;
    Ok((size > 0).then_some((start, end)))
}

fn tensor_info(r: &mut Reader<'_>) -> Result<GgufTensorInfo, String> {
    let name = r.string().map_err(|e| format!("name: {e}"))?;
    let with_name = |e: String| format!("`{name}`: {e}");
    let n_dims = r.u32().map_err(with_name)?;
    if n_dims > MAX_DIMS {
        return Err(with_name(format!(
            "{n_dims} dimensions (at most {MAX_DIMS} allowed)"
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        let d = r.u64().map_err(with_name)?;
        if d > i64::MAX as u64 {
            return Err(with_name(format!("dimension {d} is negative as int64")));
        }
        dims.push(d);
    }
    let dtype = GgmlType::from_id(r.u32().map_err(with_name)?);
    let offset = r.u64().map_err(with_name)?;
    Ok(GgufTensorInfo {
        name,
        dims,
        dtype,
        offset,
    })
}
