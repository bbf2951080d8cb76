//! A contiguous, row-major f32 tensor over `ndarray`.

use crate::TensorError;
use ndarray::{ArrayD, IxDyn};

/// A contiguous row-major f32 tensor. Activations are NCHW.
///
/// The storage is an `ndarray::ArrayD<f32>` that is always in standard (C) layout, so
/// [`Tensor::data`] is the whole buffer as one slice; layers work on those slices directly.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    array: ArrayD<f32>,
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            array: ArrayD::zeros(IxDyn(shape)),
        }
    }

    /// Wraps `data` (row-major) with `shape`; errors if the element counts differ.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Self, TensorError> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(TensorError::Size {
                op: "Tensor::from_vec",
                shape: shape.to_vec(),
                expected,
                got: data.len(),
            });
        }
        let array = ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| TensorError::Shape {
            op: "Tensor::from_vec",
            detail: e.to_string(),
        })?;
        Ok(Tensor { array })
    }

    /// The shape, outermost dimension first.
    pub fn shape(&self) -> &[usize] {
        self.array.shape()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.array.len()
    }

    /// True when the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.array.is_empty()
    }

    /// The whole buffer, row-major.
    pub fn data(&self) -> &[f32] {
        // Invariant: every constructor builds a standard-layout array, and no method exposes a
        // way to permute its axes, so the array is always contiguous.
        self.array.as_slice().expect("Tensor is always contiguous")
    }

    /// The whole buffer, row-major, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        // Invariant: see `data`.
        self.array
            .as_slice_mut()
            .expect("Tensor is always contiguous")
    }

    /// Consumes the tensor, returning its row-major buffer.
    pub fn into_vec(self) -> Vec<f32> {
        let (v, offset) = self.array.into_raw_vec_and_offset();
        debug_assert!(offset.unwrap_or(0) == 0);
        v
    }

    /// The underlying ndarray view.
    pub fn view(&self) -> ndarray::ArrayViewD<'_, f32> {
        self.array.view()
    }

    /// Returns the same data with a new shape of equal element count.
    pub fn reshape(self, shape: &[usize]) -> Result<Self, TensorError> {
        let v = self.into_vec();
        Tensor::from_vec(shape, v)
    }
}

/// Relative L2 error `||a - b|| / ||b||`, accumulated in f64 (the fixtures' tolerance metric).
/// For an all-zero reference the absolute norm of the difference is returned.
pub fn rel_l2(out: &[f32], reference: &[f32]) -> f64 {
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (&a, &b) in out.iter().zip(reference) {
        let d = a as f64 - b as f64;
        num += d * d;
        den += (b as f64) * (b as f64);
    }
    if out.len() != reference.len() {
        return f64::INFINITY;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vec_checks_size() {
        let e = Tensor::from_vec(&[2, 3], vec![0.0; 5]).unwrap_err();
        assert!(e.to_string().contains("needs 6 elements, got 5"), "{e}");
        let t = Tensor::from_vec(&[2, 3], (0..6).map(|i| i as f32).collect()).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.data()[4], 4.0);
        let t = t.reshape(&[3, 2]).unwrap();
        assert_eq!(t.shape(), &[3, 2]);
    }

    #[test]
    fn rel_l2_small_case() {
        // ||(1,2)-(1,1)|| / ||(1,1)|| = 1/sqrt(2)
        let r = rel_l2(&[1.0, 2.0], &[1.0, 1.0]);
        assert!((r - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert!(rel_l2(&[1.0], &[1.0, 2.0]).is_infinite());
    }
}
