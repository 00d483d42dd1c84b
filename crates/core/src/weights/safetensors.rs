use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use super::{HostTensor, WeightSource};
use crate::error::{Error, Result};

/// A HF model directory: `model.safetensors`, or shards listed in `model.safetensors.index.json`.
pub struct SafetensorsDir {
    dir: PathBuf,
    shards: Vec<(PathBuf, Mmap)>,
    /// tensor name → shard index
    index: BTreeMap<String, usize>,
}

impl SafetensorsDir {
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| Error::Json {
                    path: index_path.clone(),
                    source,
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Config {
                    path: index_path.clone(),
                    msg: "missing `weight_map`".into(),
                })?;
            // Each shard must be a file inside the model directory: a name such as "/" or "../x" (or a
            // non-string) is a broken index, named as such rather than opened wherever it points.
            let mut files: Vec<&str> = Vec::new();
            for (tensor, f) in map {
                let inside = f.as_str().filter(|f| {
                    let p = Path::new(f);
                    p.components().next().is_some()
                        && p.components()
                            .all(|c| matches!(c, std::path::Component::Normal(_)))
                });
                files.push(inside.ok_or_else(|| Error::Config {
                    path: index_path.clone(),
                    msg: format!(
                        "`weight_map`: tensor `{tensor}` is in shard {f}, which is not a file name \
                         inside the model directory"
                    ),
                })?);
            }
            files.sort_unstable();
            files.dedup();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else {
            return Err(Error::NotFound {
                path: single,
                hint: " (nor model.safetensors.index.json)".into(),
            });
        };
        Self::from_files(dir, files)
    }

    /// One safetensors file (e.g. a PEFT `adapter_model.safetensors`).
    pub fn open_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::NotFound {
                path: path.to_path_buf(),
                hint: String::new(),
            });
        }
        Self::from_files(path.to_path_buf(), vec![path.to_path_buf()])
    }

    fn from_files(dir: PathBuf, files: Vec<PathBuf>) -> Result<Self> {
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        for path in files {
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the file is opened read-only; burnish never writes a file it has mapped.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| corrupt(&path, &mmap, &e))?;
            for name in st.names() {
                index.insert(name.to_string(), shards.len());
            }
            shards.push((path, mmap));
        }
        Ok(Self { dir, shards, index })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|(p, _)| p.as_path())
    }

    /// dtype name of a tensor as stored.
    pub fn dtype(&self, name: &str) -> Option<String> {
        let &i = self.index.get(name)?;
        let st = SafeTensors::deserialize(&self.shards[i].1).ok()?;
        st.tensor(name).ok().map(|t| format!("{:?}", t.dtype()))
    }
}

/// The error for a file the safetensors crate refuses: for a problem with one tensor's entry (offsets past
/// the end of the file, a gap or overlap, a size that does not match the shape) the message names the
/// tensor, which the crate's own message does not always do.
fn corrupt(path: &Path, buf: &[u8], e: &SafeTensorError) -> Error {
    let msg = match e {
        SafeTensorError::InvalidOffset(_)
        | SafeTensorError::MetadataIncompleteBuffer
        | SafeTensorError::TensorInvalidInfo
        | SafeTensorError::ValidationOverflow
        | SafeTensorError::MisalignedSlice => tensor_problem(buf),
        _ => None,
    };
    Error::corrupt(path, "safetensors", msg.unwrap_or_else(|| e.to_string()))
}

/// Finds the first tensor whose entry is wrong, checking what `SafeTensors::deserialize` checks, in the
/// same order (by data offset); `None` if the header does not even parse (the crate's message says why).
fn tensor_problem(buf: &[u8]) -> Option<String> {
    let n = usize::try_from(u64::from_le_bytes(buf.get(..8)?.try_into().ok()?)).ok()?;
    let header = buf.get(8..n.checked_add(8)?)?;
    let data_len = buf.len() - 8 - n;
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let mut tensors = Vec::new();
    for (name, v) in map {
        if name != "__metadata__" {
            let info: TensorInfo = serde_json::from_value(v).ok()?;
            tensors.push((name, info));
        }
    }
    // Past the end first: it is the likeliest problem (a truncated download) and the one to name.
    for (name, info) in &tensors {
        let (s, e) = info.data_offsets;
        if s.max(e) > data_len {
            return Some(format!(
                "tensor `{name}`: data offsets [{s}, {e}] point past the end of the file (its data section \
                 after the header is {data_len} bytes; truncated download?)"
            ));
        }
    }
    tensors.sort_by_key(|(_, info)| info.data_offsets);
    let mut end = 0;
    for (name, info) in &tensors {
        let (s, e) = info.data_offsets;
        if e < s {
            return Some(format!(
                "tensor `{name}`: data offsets [{s}, {e}] end before they start"
            ));
        }
        if s != end {
            return Some(format!(
                "tensor `{name}`: data starts at byte {s} of the data section, but the tensor before it \
                 ends at {end} (tensors must be contiguous, without gaps or overlaps)"
            ));
        }
        let bits = info
            .shape
            .iter()
            .try_fold(info.dtype.bitsize(), |n, &d| n.checked_mul(d));
        match bits {
            None => return Some(format!("tensor `{name}`: shape {:?} overflows", info.shape)),
            Some(b) if b % 8 != 0 => {
                return Some(format!(
                    "tensor `{name}`: shape {:?} of {:?} is not a whole number of bytes",
                    info.shape, info.dtype
                ))
            }
            Some(b) if b / 8 != e - s => {
                return Some(format!(
                    "tensor `{name}`: shape {:?} of {:?} needs {} bytes but data offsets [{s}, {e}] hold {}",
                    info.shape,
                    info.dtype,
                    b / 8,
                    e - s
                ))
            }
            Some(_) => {}
        }
        end = e;
    }
    if end != data_len {
        return Some(match tensors.last() {
            Some((name, _)) => format!(
                "tensor `{name}` (the last) ends at byte {end} of the data section, but the file has \
                 {data_len} bytes of data after the header"
            ),
            None => format!(
                "the header lists no tensors, but the file has {data_len} bytes of data after it"
            ),
        });
    }
    None
}

/// Writes `tensors` (name, shape, little-endian bytes, all of `dtype`) as one safetensors file, atomically.
pub fn write_safetensors(
    path: &Path,
    dtype: Dtype,
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    metadata: &[(&str, &str)],
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes).map_err(|e| {
                    Error::corrupt(path, "safetensors", format!("tensor `{name}`: {e}"))
                })?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::corrupt(path, "safetensors", e.to_string()))?;
    crate::io::write_atomic(path, &bytes)
}

impl WeightSource for SafetensorsDir {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn tensor(&self, name: &str) -> Result<Option<HostTensor>> {
        let Some(&i) = self.index.get(name) else {
            return Ok(None);
        };
        let (path, mmap) = &self.shards[i];
        let st = SafeTensors::deserialize(mmap).map_err(|e| corrupt(path, mmap, &e))?;
        let view = st
            .tensor(name)
            .map_err(|e| Error::corrupt(path, "safetensors", format!("tensor `{name}`: {e}")))?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::DType {
                    path: path.clone(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok(Some(HostTensor {
            shape: view.shape().to_vec(),
            data,
        }))
    }
}
