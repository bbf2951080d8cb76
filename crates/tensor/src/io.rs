//! safetensors reading and writing (checkpoints, fixtures). Tensor names and layouts follow
//! PyTorch conventions, so `safetensors.torch.load_file` reads what we write.

use crate::{Tensor, TensorError};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The contents of a safetensors file: f32 tensors, i64 tensors and the metadata strings.
#[derive(Debug, Default)]
pub struct TensorFile {
    pub f32s: BTreeMap<String, Tensor>,
    pub i64s: BTreeMap<String, (Vec<usize>, Vec<i64>)>,
    pub metadata: HashMap<String, String>,
}

fn file_err(path: &Path, detail: impl std::fmt::Display) -> TensorError {
    TensorError::File {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// Reads every F32 and I64 tensor of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<TensorFile, TensorError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    parse_safetensors(&bytes).map_err(|d| file_err(path, d))
}

fn parse_safetensors(bytes: &[u8]) -> Result<TensorFile, String> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a valid safetensors file ({e})"))?;
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid safetensors file ({e})"))?;
    let mut out = TensorFile {
        metadata: meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        ..Default::default()
    };
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        match view.dtype() {
            Dtype::F32 => {
                let v: Vec<f32> = data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let t = Tensor::from_vec(&shape, v).map_err(|e| format!("tensor {name}: {e}"))?;
                out.f32s.insert(name, t);
            }
            Dtype::I64 => {
                let v: Vec<i64> = data
                    .chunks_exact(8)
                    .map(|c| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(c);
                        i64::from_le_bytes(b)
                    })
                    .collect();
                out.i64s.insert(name, (shape, v));
            }
            other => return Err(format!("tensor {name} has unsupported dtype {other:?}")),
        }
    }
    Ok(out)
}

/// Serialises named f32 tensors (in the given order) and metadata to safetensors bytes.
pub fn safetensors_bytes(
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: &HashMap<String, String>,
) -> Result<Vec<u8>, TensorError> {
    let bufs: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), buf) in tensors.iter().zip(&bufs) {
        let v =
            TensorView::new(Dtype::F32, shape.clone(), buf).map_err(|e| TensorError::Shape {
                op: "safetensors_bytes",
                detail: format!("{name}: {e}"),
            })?;
        views.push((name.clone(), v));
    }
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata.clone())
    };
    safetensors::serialize(views, meta).map_err(|e| TensorError::Shape {
        op: "safetensors_bytes",
        detail: e.to_string(),
    })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TensorError> {
    use std::io::Write;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_err(path, format!("cannot write: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_file() {
        let dir = std::env::temp_dir().join(format!("alexnet-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.safetensors");
        let w = [1.0f32, -2.5, 3.25, 0.0, 5.0, 6.0];
        let mut meta = HashMap::new();
        meta.insert("k".to_string(), "v".to_string());
        let bytes = safetensors_bytes(&[("w".into(), vec![2, 3], &w[..])], &meta).unwrap();
        write_atomic(&p, &bytes).unwrap();
        let f = read_safetensors(&p).unwrap();
        assert_eq!(f.f32s["w"].shape(), &[2, 3]);
        assert_eq!(f.f32s["w"].data(), &w);
        assert_eq!(f.metadata["k"], "v");
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let e = read_safetensors(&p).unwrap_err().to_string();
        assert!(
            e.contains("a.safetensors") && e.contains("not a valid safetensors"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
