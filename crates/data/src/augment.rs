//! Augmentation primitives: PCA lighting (Krizhevsky et al. 2012, section 4.1) and the
//! crop + flip + mean subtraction that turns an S x S x 3 u8 HWC record into a 3 x c x c f32
//! CHW patch.

/// `delta = eigvec @ (alpha * eigval)`: `delta[c] = sum_j eigvec[c][j] * alpha[j] * eigval[j]`
/// (eigenvectors are the COLUMNS of `eigvec`).
pub fn pca_delta(eigvec: &[[f32; 3]; 3], eigval: &[f32; 3], alpha: &[f32; 3]) -> [f32; 3] {
    [0, 1, 2].map(|c| {
        (0..3)
            .map(|j| eigvec[c][j] as f64 * alpha[j] as f64 * eigval[j] as f64)
            .sum::<f64>() as f32
    })
}

/// PCA lighting on an HWC image (`image_hwc.len()` = H*W*3): adds `delta[c]` to every pixel of
/// channel c, no clamping. Returns `delta` (see [`pca_delta`]).
pub fn pca_lighting(
    image_hwc: &mut [f32],
    eigvec: &[[f32; 3]; 3],
    eigval: &[f32; 3],
    alpha: &[f32; 3],
) -> [f32; 3] {
    let delta = pca_delta(eigvec, eigval, alpha);
    for px in image_hwc.chunks_exact_mut(3) {
        px[0] += delta[0];
        px[1] += delta[1];
        px[2] += delta[2];
    }
    delta
}

/// Where to cut a patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patch {
    /// Row of the patch's top-left corner in the S x S record.
    pub top: usize,
    /// Column of the patch's top-left corner.
    pub left: usize,
    /// Mirror the patch horizontally.
    pub flip: bool,
}

/// Writes one patch as CHW f32 into `out` (`3*c*c`):
/// `out[ch][y][x] = img[top+y][left+x'][ch] + delta[ch] - mean[top+y][left+x'][ch]`
/// with `x' = c-1-x` when flipped, else `x`.
/// `img` is S*S*3 u8 HWC, `mean` S*S*3 f32 HWC. Offsets must satisfy `top+c <= s`, `left+c <= s`.
pub fn patch_to_chw(
    img: &[u8],
    mean: &[f32],
    s: usize,
    c: usize,
    p: Patch,
    delta: [f32; 3],
    out: &mut [f32],
) {
    let plane = c * c;
    let (r_out, rest) = out.split_at_mut(plane);
    let (g_out, b_out) = rest.split_at_mut(plane);
    for y in 0..c {
        let row = ((p.top + y) * s + p.left) * 3;
        let src = &img[row..row + 3 * c];
        let mrow = &mean[row..row + 3 * c];
        let (ro, go, bo) = (
            &mut r_out[y * c..y * c + c],
            &mut g_out[y * c..y * c + c],
            &mut b_out[y * c..y * c + c],
        );
        for x in 0..c {
            let sx = if p.flip { c - 1 - x } else { x };
            let k = 3 * sx;
            ro[x] = src[k] as f32 + delta[0] - mrow[k];
            go[x] = src[k + 1] as f32 + delta[1] - mrow[k + 1];
            bo[x] = src[k + 2] as f32 + delta[2] - mrow[k + 2];
        }
    }
}
