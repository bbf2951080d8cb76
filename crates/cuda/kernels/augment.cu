// Input preparation in one kernel: u8 HWC images -> f32 NCHW crops with horizontal flip,
// PCA-lighting delta (per sample, per channel) and per-pixel mean-image subtraction. Training
// takes one crop per staged image; evaluation several (the paper's ten patches) of each.

typedef unsigned long long u64;

struct AugmentParams {
    unsigned int n;           // samples
    unsigned int src_h, src_w;  // stored image size (u8 HWC, 3 channels)
    unsigned int crop;        // output side
    unsigned int mean_h, mean_w;  // mean image size (f32 HWC)
    float scale;              // output multiplier (1 keeps the 0..255 scale)
    unsigned int records;     // staged images (every sample's src is below it)
};

// Per sample: crop origin in the stored image, crop origin in the mean image, flip flag, the
// PCA-lighting delta (eigvec @ (alpha * eigval)) added to every pixel, and which staged image.
struct AugmentSample {
    unsigned int ox, oy;
    unsigned int mox, moy;
    unsigned int flip;
    float delta[3];
    unsigned int src;
};

// src: (RECORDS, SRC_H, SRC_W, 3) u8, mean: (MEAN_H, MEAN_W, 3) f32 -> x: (N, 3, CROP, CROP):
// x[n,c,i,j] = (src[r, oy+i, ox+jj, c] + delta[c] - mean[moy+i, mox+jj, c]) * scale with
// r = samples[n].src, jj = flip ? CROP-1-j : j (the flip mirrors the crop; the mean is taken at
// the same source).
extern "C" __global__ void augment_u8(const unsigned char* src, const float* mean,
                                      const AugmentSample* samples, float* x, AugmentParams p) {
    // 32-bit index arithmetic: the host checks n * 3 * crop^2 < 2^31.
    unsigned total = p.n * 3u * p.crop * p.crop;
    for (unsigned t = blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += gridDim.x * blockDim.x) {
        unsigned j = t % p.crop;
        unsigned r = t / p.crop;
        unsigned i = r % p.crop;
        r /= p.crop;
        unsigned c = r % 3u;
        u64 n = r / 3u;
        AugmentSample s = samples[n];
        unsigned jj = s.flip ? p.crop - 1 - j : j;
        u64 si = (((u64)s.src * p.src_h + s.oy + i) * p.src_w + s.ox + jj) * 3 + c;
        u64 mi = (((u64)s.moy + i) * p.mean_w + s.mox + jj) * 3 + c;
        x[t] = ((float)src[si] + s.delta[c] - mean[mi]) * p.scale;
    }
}
