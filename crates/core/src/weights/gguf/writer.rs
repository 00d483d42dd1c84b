//! Writing GGUF v3 files.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::quant::{f32_to_bf16_bits, f32_to_f16_bits, quantize_q8_0, GgmlType};
use super::value::{type_id, GgufValue};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::error::{Error, Result};

/// Builds a GGUF v3 file: metadata plus tensors converted to F32, F16, BF16 or Q8_0 (or raw bytes of any
/// known type), then [`write`](GgufWriter::write)s it atomically.
///
/// ```no_run
/// use burnish_core::weights::gguf::{GgmlType, GgufWriter};
/// let mut w = GgufWriter::new();
/// w.add_metadata("general.architecture", "llama");
/// w.add_tensor("token_embd.weight", &[2, 32], &[0.5; 64], GgmlType::Q8_0)?;
/// w.write("model.gguf")?;
/// # Ok::<(), burnish_core::Error>(())
/// ```
///
/// Tensors are converted when added and held in memory (one copy in the target type) until written.
/// The data alignment is 32 unless `general.alignment` (a `U32` power of two) is set.
#[derive(Debug, Default, Clone)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
}

#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    /// ggml order (`ne[0]` first).
    dims: Vec<u64>,
    dtype: GgmlType,
    data: Vec<u8>,
}

/// Pseudo-path that errors raised before a file is named refer to.
const WRITER: &str = "GgufWriter";

fn invalid(msg: String) -> Error {
    Error::Io {
        path: PathBuf::from(WRITER),
        source: io::Error::new(io::ErrorKind::InvalidInput, msg),
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata key (replacing an earlier value for the same key; file order is first insertion).
    pub fn add_metadata(
        &mut self,
        key: impl Into<String>,
        value: impl Into<GgufValue>,
    ) -> &mut Self {
        let key = key.into();
        let value = value.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor given in row-major order with its row-major (PyTorch) `shape`, converted to `target`:
    /// F32, F16, BF16 (round to nearest even, as ggml) or Q8_0 (ggml's reference quantizer; the last
    /// dimension must be a multiple of 32).
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        data: &[f32],
        target: GgmlType,
    ) -> Result<()> {
        let name = name.into();
        let dims = self.check_new(&name, shape)?;
        let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if n != Some(data.len()) {
            return Err(invalid(format!(
                "tensor `{name}`: {} values for shape {shape:?}",
                data.len()
            )));
        }
        let bytes = match target {
            GgmlType::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            GgmlType::F16 => data
                .iter()
                .flat_map(|&v| f32_to_f16_bits(v).to_le_bytes())
                .collect(),
            GgmlType::BF16 => data
                .iter()
                .flat_map(|&v| f32_to_bf16_bits(v).to_le_bytes())
                .collect(),
            GgmlType::Q8_0 => {
                let row = dims.first().copied().unwrap_or(1);
                if row % 32 != 0 {
                    return Err(invalid(format!(
                        "tensor `{name}`: Q8_0 needs a last dimension that is a multiple of 32, shape is \
                         {shape:?}"
                    )));
                }
                quantize_q8_0(data)
            }
            other => {
                return Err(Error::DType {
                    path: PathBuf::from(WRITER),
                    name,
                    dtype: format!("{other} (the writer converts to F32, F16, BF16 or Q8_0)"),
                })
            }
        };
        self.tensors.push(PendingTensor {
            name,
            dims,
            dtype: target,
            data: bytes,
        });
        Ok(())
    }

    /// Adds a tensor from raw bytes already in `dtype`'s on-disk layout (e.g. Q4_K blocks copied from another
    /// file). For a known type the byte length must match the shape; bytes of an unknown type are written
    /// as given.
    pub fn add_tensor_bytes(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        dtype: GgmlType,
        bytes: Vec<u8>,
    ) -> Result<()> {
        let name = name.into();
        let dims = self.check_new(&name, shape)?;
        if let Some(bs) = dtype.block_size() {
            let row = dims.first().copied().unwrap_or(1);
            let n = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
            let need = n.and_then(|n| dtype.bytes_for(n));
            if row % bs as u64 != 0 || need != Some(bytes.len() as u64) {
                return Err(invalid(format!(
                    "tensor `{name}`: {} bytes do not hold a {dtype} tensor of shape {shape:?} (rows must \
                     be whole blocks of {bs})",
                    bytes.len()
                )));
            }
        }
        self.tensors.push(PendingTensor {
            name,
            dims,
            dtype,
            data: bytes,
        });
        Ok(())
    }

    fn check_new(&self, name: &str, shape: &[usize]) -> Result<Vec<u64>> {
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(invalid(format!("tensor `{name}` added twice")));
        }
        if shape.len() > MAX_DIMS as usize {
            return Err(invalid(format!(
                "tensor `{name}`: shape {shape:?} has more than {MAX_DIMS} dimensions"
            )));
        }
        Ok(shape.iter().rev().map(|&d| d as u64).collect())
    }

    /// Writes the file atomically: to a temporary file in the same directory, synced, then renamed over
    /// `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| {
                Error::io(
                    path,
                    io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
                )
            })?
            .to_string_lossy();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = dir.join(format!(".{file_name}.{}.{nanos}.tmp", std::process::id()));
        let result = (|| -> io::Result<()> {
            let file = std::fs::File::create(&tmp)?;
            let mut w = io::BufWriter::with_capacity(1 << 20, file);
            self.write_to(&mut w)?;
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(path, e));
        }
        Ok(())
    }

    /// Serializes the whole file to `w` (not atomically; see [`write`](GgufWriter::write)).
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        let alignment = match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, GgufValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => {
                return Err(bad(format!(
                    "general.alignment must be a U32 power of two, got {v:?}"
                )))
            }
        };
        for (k, v) in &self.metadata {
            check_homogeneous(v).map_err(|e| bad(format!("metadata `{k}`: {e}")))?;
        }

        w.write_all(&GGUF_MAGIC)?;
        w.write_all(&3u32.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
        let mut pos: u64 = 24;
        for (k, v) in &self.metadata {
            pos += write_string(w, k)?;
            w.write_all(&v.type_id().to_le_bytes())?;
            pos += 4 + write_value(w, v)?;
        }
        let mut offset: u64 = 0;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            offsets.push(offset);
            pos += write_string(w, &t.name)?;
            w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&t.dtype.id().to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            pos += 4 + 8 * t.dims.len() as u64 + 4 + 8;
            offset += align_up(t.data.len() as u64, alignment);
        }
        write_padding(w, pos, alignment)?;
        for t in &self.tensors {
            w.write_all(&t.data)?;
            write_padding(w, t.data.len() as u64, alignment)?;
        }
        w.flush()
    }
}

fn align_up(n: u64, alignment: u64) -> u64 {
    n.div_ceil(alignment) * alignment
}

fn write_padding(w: &mut impl Write, pos: u64, alignment: u64) -> io::Result<()> {
    let pad = (align_up(pos, alignment) - pos) as usize;
    const ZEROS: [u8; 64] = [0; 64];
    let mut left = pad;
    while left > 0 {
        let n = left.min(ZEROS.len());
        w.write_all(&ZEROS[..n])?;
        left -= n;
    }
    Ok(())
}

/// Writes a GGUF string; returns the bytes written.
fn write_string(w: &mut impl Write, s: &str) -> io::Result<u64> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())?;
    Ok(8 + s.len() as u64)
}

/// Writes a value's payload (without its type id); returns the bytes written.
fn write_value(w: &mut impl Write, v: &GgufValue) -> io::Result<u64> {
    Ok(match v {
        GgufValue::U8(x) => w.write_all(&x.to_le_bytes()).map(|_| 1)?,
        GgufValue::I8(x) => w.write_all(&x.to_le_bytes()).map(|_| 1)?,
        GgufValue::U16(x) => w.write_all(&x.to_le_bytes()).map(|_| 2)?,
        GgufValue::I16(x) => w.write_all(&x.to_le_bytes()).map(|_| 2)?,
        GgufValue::U32(x) => w.write_all(&x.to_le_bytes()).map(|_| 4)?,
        GgufValue::I32(x) => w.write_all(&x.to_le_bytes()).map(|_| 4)?,
        GgufValue::F32(x) => w.write_all(&x.to_le_bytes()).map(|_| 4)?,
        GgufValue::U64(x) => w.write_all(&x.to_le_bytes()).map(|_| 8)?,
        GgufValue::I64(x) => w.write_all(&x.to_le_bytes()).map(|_| 8)?,
        GgufValue::F64(x) => w.write_all(&x.to_le_bytes()).map(|_| 8)?,
        GgufValue::Bool(x) => w.write_all(&[*x as u8]).map(|_| 1)?,
        GgufValue::String(s) => write_string(w, s)?,
        GgufValue::Array(items) => {
            // An empty array has no element to take the type from; uint8 is as good as any.
            let elem = items.first().map_or(type_id::U8, GgufValue::type_id);
            w.write_all(&elem.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            let mut n = 12;
            // Nested arrays carry their own element type and count, which `write_value` writes.
            for item in items {
                n += write_value(w, item)?;
            }
            n
        }
    })
}

/// GGUF arrays have one element type; nested arrays may each have their own.
fn check_homogeneous(v: &GgufValue) -> Result<(), String> {
    if let GgufValue::Array(items) = v {
        if let Some(first) = items.first() {
            for item in items {
                if item.type_id() != first.type_id() {
                    return Err(format!(
                        "array mixes {} and {} elements",
                        first.type_name(),
                        item.type_name()
                    ));
                }
                check_homogeneous(item)?;
            }
        }
    }
    Ok(())
}
