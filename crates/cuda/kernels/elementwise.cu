// Element-wise kernels: bias (+ReLU) epilogues, ReLU, dropout, bias-gradient reductions and the
// NCHW <-> CNHW transposes used around the im2col GEMMs. All indices are 64-bit; every kernel is a
// grid-stride loop, so any grid size is correct.

typedef unsigned long long u64;

// y: (N, C, HW) in place: y += b[c], then ReLU when relu != 0. 32-bit index arithmetic (the
// host checks n*c*hw < 2^31; 64-bit division costs tens of instructions per element).
extern "C" __global__ void bias_act(float* y, const float* b, u64 n, u64 c, u64 hw, int relu) {
    unsigned total = (unsigned)(n * c * hw), cc = (unsigned)c, h = (unsigned)hw;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += gridDim.x * blockDim.x) {
        unsigned ch = (i / h) % cc;
        float v = y[i] + b[ch];
        y[i] = (relu && v < 0.0f) ? 0.0f : v;
    }
}

// t: (C, NB, HW) (the GEMM output of one sample chunk) -> y: (NB, C, HW) + b[c], ReLU if relu.
// y points at the chunk's first sample.
extern "C" __global__ void cnhw_to_nchw_bias_act(const float* t, const float* b, float* y, u64 nb,
                                                 u64 c, u64 hw, int relu) {
    unsigned total = (unsigned)(nb * c * hw), h = (unsigned)hw, cc = (unsigned)c;
    unsigned nbb = (unsigned)nb;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += gridDim.x * blockDim.x) {
        unsigned p = i % h;
        unsigned r = i / h;
        unsigned ch = r % cc;
        unsigned s = r / cc;
        float v = t[(ch * nbb + s) * h + p] + b[ch];
        y[i] = (relu && v < 0.0f) ? 0.0f : v;
    }
}

// dy: (NB, C, HW) -> t: (C, NB, HW). When relu != 0 the ReLU mask of the layer output y (same
// layout as dy) is applied: t = dy * (y > 0).
extern "C" __global__ void nchw_to_cnhw_mask(const float* dy, const float* y, float* t, u64 nb,
                                             u64 c, u64 hw, int relu) {
    unsigned total = (unsigned)(nb * c * hw), h = (unsigned)hw, cc = (unsigned)c;
    unsigned nbb = (unsigned)nb;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += gridDim.x * blockDim.x) {
        unsigned p = i % h;
        unsigned r = i / h;
        unsigned ch = r % cc;
        unsigned s = r / cc;
        float g = dy[i];
        if (relu && !(y[i] > 0.0f)) g = 0.0f;
        t[(ch * nbb + s) * h + p] = g;
    }
}

// y = max(x, 0); x, y: (n) (may alias).
extern "C" __global__ void relu_fwd(const float* x, float* y, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x) {
        float v = x[i];
        y[i] = v > 0.0f ? v : 0.0f;
    }
}

// In-place ReLU gradient: g = g where y > 0 else 0 (y is the ReLU output; y > 0 <=> x > 0).
extern "C" __global__ void relu_mask(const float* y, float* g, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x) {
        if (!(y[i] > 0.0f)) g[i] = 0.0f;
    }
}

// splitmix64 finaliser of (seed, index); the same function as alexnet-layers' hash_uniform.
__device__ __forceinline__ u64 mix_hash(u64 seed, u64 index) {
    u64 z = seed ^ (index * 0x9E3779B97F4A7C15ULL);
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// Inverted dropout, y = x * keep(i) / (1 - p). Element i is kept iff (hash >> 11) >= threshold,
// threshold = ceil(p * 2^53) (exactly "uniform53 >= p"). The backward uses the same mask: the
// kernel is its own gradient (x := dy, y := dx).
__device__ __forceinline__ void dropout_body(const float* x, float* y, u64 n, u64 seed,
                                             u64 threshold, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x) {
        bool keep = (mix_hash(seed, i) >> 11) >= threshold;
        y[i] = keep ? x[i] * scale : 0.0f;
    }
}

extern "C" __global__ void dropout_apply(const float* x, float* y, u64 n, u64 seed, u64 threshold,
                                         float scale) {
    dropout_body(x, y, n, seed, threshold, scale);
}

// The same with the seed read from device memory: a captured CUDA graph replays with each step's
// seed written there before its launch.
extern "C" __global__ void dropout_apply_at(const float* x, float* y, u64 n, const u64* seed,
                                            u64 threshold, float scale) {
    dropout_body(x, y, n, *seed, threshold, scale);
}

// One block per row r of m: (rows, cols): out[r] (+)= sum_j m[r, j]. blockDim.x is a power of two
// <= 1024. Deterministic (fixed reduction tree).
extern "C" __global__ void row_sum(const float* m, float* out, u64 cols, int accumulate) {
    __shared__ float buf[1024];
    u64 r = blockIdx.x;
    const float* row = m + r * cols;
    float acc = 0.0f;
    for (u64 j = threadIdx.x; j < cols; j += blockDim.x) acc += row[j];
    buf[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[r] = accumulate ? out[r] + buf[0] : buf[0];
}

// m: (rows, cols): out[j] = sum_r m[r, j] (the linear layer's bias gradient; rows = batch).
extern "C" __global__ void col_sum(const float* m, float* out, u64 rows, u64 cols) {
    for (u64 j = blockIdx.x * (u64)blockDim.x + threadIdx.x; j < cols;
         j += (u64)gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (u64 r = 0; r < rows; ++r) acc += m[r * cols + j];
        out[j] = acc;
    }
}

// One block per channel ch of g: (N, C, HW): db[ch] = sum over n and p of g[n, ch, p]
// (the convolution bias gradient; g is the per-tile partial sums, HW the tiles). The threads
// stride over the (n, p) pairs together, so a short plane (a few tiles) still keeps the whole
// block busy; (s, p) advance by blockDim.x without a division. blockDim.x is a power of two
// <= 1024. Deterministic (fixed order per thread, fixed reduction tree).
extern "C" __global__ void channel_sum(const float* g, float* db, u64 n, u64 c, u64 hw) {
    __shared__ float buf[1024];
    u64 ch = blockIdx.x;
    float acc = 0.0f;
    if (hw > 0) {
        u64 q = blockDim.x / hw, r = blockDim.x % hw;
        u64 s = threadIdx.x / hw, p = threadIdx.x % hw;
        while (s < n) {
            acc += g[(s * c + ch) * hw + p];
            s += q;
            p += r;
            if (p >= hw) {
                p -= hw;
                s += 1;
            }
        }
    }
    buf[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) db[ch] = buf[0];
}
