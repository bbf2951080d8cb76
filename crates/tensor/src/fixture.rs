//! Parity fixtures (`tests/fixtures/parity/*.safetensors`, schema in that folder's README):
//! the inputs of one op, its float64-computed references, and the op's params as JSON metadata.

use crate::io::{read_safetensors, TensorFile};
use crate::{Tensor, TensorError};
use std::path::{Path, PathBuf};

/// One parity fixture.
#[derive(Debug)]
pub struct Fixture {
    pub path: PathBuf,
    /// `op` metadata: conv2d, relu, lrn, maxpool, linear, softmax_cross_entropy, sgd_step,
    /// pca_lighting, model.
    pub op: String,
    /// `case` metadata (the file stem when absent).
    pub case: String,
    /// `params` metadata, parsed.
    pub params: serde_json::Value,
    /// Relative L2 tolerance (`tolerance_rel_l2`, 1e-4 when absent).
    pub tolerance: f64,
    pub file: TensorFile,
}

impl Fixture {
    /// Reads a fixture file.
    pub fn load(path: &Path) -> Result<Fixture, TensorError> {
        let file = read_safetensors(path)?;
        let err = |d: String| TensorError::File {
            path: path.display().to_string(),
            detail: d,
        };
        let op = file
            .metadata
            .get("op")
            .cloned()
            .ok_or_else(|| err("no `op` metadata".into()))?;
        let case = file.metadata.get("case").cloned().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let params = match file.metadata.get("params") {
            Some(p) => serde_json::from_str(p)
                .map_err(|e| err(format!("`params` metadata is not JSON: {e}")))?,
            None => serde_json::Value::Object(Default::default()),
        };
        let tolerance = match file.metadata.get("tolerance_rel_l2") {
            Some(t) => t
                .parse()
                .map_err(|_| err(format!("bad tolerance_rel_l2 {t:?}")))?,
            None => 1e-4,
        };
        Ok(Fixture {
            path: path.to_path_buf(),
            op,
            case,
            params,
            tolerance,
            file,
        })
    }

    /// The f32 tensor `name`, or an error naming the file.
    pub fn tensor(&self, name: &str) -> Result<&Tensor, TensorError> {
        self.file.f32s.get(name).ok_or_else(|| TensorError::File {
            path: self.path.display().to_string(),
            detail: format!("missing tensor `{name}`"),
        })
    }

    /// The i64 tensor `name` (labels).
    pub fn ints(&self, name: &str) -> Result<&[i64], TensorError> {
        self.file
            .i64s
            .get(name)
            .map(|(_, v)| v.as_slice())
            .ok_or_else(|| TensorError::File {
                path: self.path.display().to_string(),
                detail: format!("missing int64 tensor `{name}`"),
            })
    }

    /// A numeric param (`params[key]`), accepting JSON numbers or numeric strings.
    pub fn param_f64(&self, key: &str) -> Result<f64, TensorError> {
        let v = self.params.get(key);
        v.and_then(|v| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| TensorError::File {
            path: self.path.display().to_string(),
            detail: format!("missing numeric param `{key}`"),
        })
    }

    /// An integer param.
    pub fn param_usize(&self, key: &str) -> Result<usize, TensorError> {
        Ok(self.param_f64(key)? as usize)
    }
}
