//! Launch of `kernels/augment.cu`: u8 HWC images -> f32 NCHW crops with flip, PCA lighting and
//! mean subtraction in one kernel; one crop per image for training, several per image (the
//! evaluation views) through each sample's `src`.

use super::{check_len, u32_of};
use crate::error::CudaError;
use crate::gpu::{grid_for, Gpu};
use crate::kernels::KernelFile;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

/// `AugmentParams` of kernels/augment.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentParams {
    pub n: u32,
    pub src_h: u32,
    pub src_w: u32,
    pub crop: u32,
    pub mean_h: u32,
    pub mean_w: u32,
    pub scale: f32,
    /// Images in the source batch (samples pick theirs by `src`).
    pub records: u32,
}

// SAFETY: `#[repr(C)]` of u32/f32 fields, identical to the C struct `AugmentParams`.
unsafe impl DeviceRepr for AugmentParams {}

/// Per-sample augmentation (`AugmentSample` of kernels/augment.cu): crop origin in the stored
/// image (`ox`, `oy`) and in the mean image (`mox`, `moy`), horizontal flip, the PCA-lighting
/// delta `eigvec @ (alpha * eigval)` added to every pixel, and the index of the source image
/// in the batch (`src`: the sample's own index for training, `sample / views` for evaluation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AugmentSample {
    pub ox: u32,
    pub oy: u32,
    pub mox: u32,
    pub moy: u32,
    pub flip: u32,
    pub delta: [f32; 3],
    pub src: u32,
}

// SAFETY: `#[repr(C)]` of u32/f32 fields, identical to the C struct `AugmentSample`.
unsafe impl DeviceRepr for AugmentSample {}

impl AugmentParams {
    /// Checks every sample's crop against the image and mean sizes, and its source image against
    /// `records`.
    pub fn validate(&self, samples: &[AugmentSample]) -> Result<(), CudaError> {
        if samples.len() != self.n as usize {
            return Err(CudaError::shape(
                "augment",
                format!("{} samples for n = {}", samples.len(), self.n),
            ));
        }
        // The kernel indexes its output with 32-bit arithmetic.
        super::idx32(
            "augment",
            "n * 3 * crop^2",
            self.n as usize * 3 * self.crop as usize * self.crop as usize,
        )?;
        for (i, s) in samples.iter().enumerate() {
            if s.src >= self.records {
                return Err(CudaError::invalid(
                    "augment",
                    format!("sample {i}: image {} of {}", s.src, self.records),
                ));
            }
            let fits = |o: u32, side: u32| o as u64 + self.crop as u64 <= side as u64;
            if !(fits(s.ox, self.src_w) && fits(s.oy, self.src_h)) {
                return Err(CudaError::invalid(
                    "augment",
                    format!(
                        "sample {i}: crop {} at ({}, {}) outside {}x{}",
                        self.crop, s.ox, s.oy, self.src_w, self.src_h
                    ),
                ));
            }
            if !(fits(s.mox, self.mean_w) && fits(s.moy, self.mean_h)) {
                return Err(CudaError::invalid(
                    "augment",
                    format!(
                        "sample {i}: mean crop at ({}, {}) outside {}x{}",
                        s.mox, s.moy, self.mean_w, self.mean_h
                    ),
                ));
            }
        }
        Ok(())
    }

    /// [`AugmentParams::validate`] and the lengths of the images and the mean image; returns
    /// the output's length, n * 3 * crop^2.
    fn check(
        &self,
        samples: &[AugmentSample],
        src_len: usize,
        mean_len: usize,
    ) -> Result<usize, CudaError> {
        self.validate(samples)?;
        let image = self.src_h as usize * self.src_w as usize * 3;
        check_len("augment", "images", src_len, self.records as usize * image)?;
        let mean = self.mean_h as usize * self.mean_w as usize * 3;
        check_len("augment", "mean", mean_len, mean)?;
        Ok(self.n as usize * 3 * self.crop as usize * self.crop as usize)
    }

    /// Parameters for `n` crops of `src` x `src` images cropped to `crop` (one per image:
    /// `records` = `n`; set `records` for several), mean image `mean` x `mean`.
    pub fn square(n: usize, src: usize, crop: usize, mean: usize) -> Result<Self, CudaError> {
        let u = |what, v| u32_of("augment", what, v);
        Ok(AugmentParams {
            n: u("n", n)?,
            src_h: u("src", src)?,
            src_w: u("src", src)?,
            crop: u("crop", crop)?,
            mean_h: u("mean", mean)?,
            mean_w: u("mean", mean)?,
            scale: 1.0,
            records: u("n", n)?,
        })
    }
}

/// src: (RECORDS, SRC_H, SRC_W, 3) u8, mean: (MEAN_H, MEAN_W, 3) f32, samples: (N) (host,
/// validated and uploaded here) -> x: (N, 3, CROP, CROP) f32.
pub fn augment_u8(
    gpu: &Gpu,
    src: &CudaView<u8>,
    mean: &CudaView<f32>,
    samples: &[AugmentSample],
    x: &mut CudaViewMut<f32>,
    p: AugmentParams,
) -> Result<(), CudaError> {
    let out = p.check(samples, src.len(), mean.len())?;
    check_len("augment", "x", x.len(), out)?;
    let Some(cfg) = grid_for(out as u64) else {
        return Ok(());
    };
    let f = gpu.function(KernelFile::Augment, "augment_u8")?;
    let samples = gpu.upload(samples)?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(src).arg(mean).arg(&samples).arg(x).arg(&p);
    // SAFETY: types match `augment_u8(const u8*, const float*, const AugmentSample*, float*,
    // AugmentParams)`; buffer sizes are checked and every crop is validated above against the
    // image and mean sizes.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("augment_u8"))
        .map(|_| ())
}

/// [`augment_u8`] on the kernel emulator ([`crate::emu`]), host buffers standing in for the
/// device's: validated and checked as the device launch is, over `cfg` (the launch's own grid
/// when `None`). The output gets a tail of `guard` NaNs, which the kernel must leave as they
/// are (an error otherwise), and is returned without it. For tests on machines without a GPU.
pub fn augment_u8_emulated(
    e: &crate::emu::Emu,
    (src, mean, samples): (&[u8], &[f32], &[AugmentSample]),
    p: AugmentParams,
    cfg: Option<cudarc::driver::LaunchConfig>,
    guard: usize,
) -> Result<Vec<f32>, CudaError> {
    use crate::emu::arg;
    let out = p.check(samples, src.len(), mean.len())?;
    let Some(cfg) = cfg.or_else(|| grid_for(out as u64)) else {
        return Ok(Vec::new());
    };
    let mut x = vec![f32::NAN; out + guard];
    let (sp, mp, qp, xp) = (
        src.as_ptr(),
        mean.as_ptr(),
        samples.as_ptr(),
        x.as_mut_ptr(),
    );
    // SAFETY: src holds p.records images and mean the mean image (checked), samples holds p.n
    // entries whose crops fit their image (one of p.records) and the mean image (validated), x
    // holds n*3*crop^2 floats and the guard; the kernel indexes below those.
    unsafe {
        e.launch(
            "augment_u8",
            &cfg,
            &[arg(&sp), arg(&mp), arg(&qp), arg(&xp), arg(&p)],
        )?;
    }
    if !x[out..].iter().all(|v| v.is_nan()) {
        return Err(CudaError::invalid(
            "augment (emulated)",
            "wrote past the output",
        ));
    }
    x.truncate(out);
    Ok(x)
}
