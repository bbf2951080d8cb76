// f32 <-> bf16 conversion (bf16 stored as its 16 raw bits), round to nearest even, NaN kept
// quiet. Written with bit operations so no CUDA header is needed.

typedef unsigned long long u64;

__device__ __forceinline__ unsigned short f32_to_bf16_bits(float f) {
    unsigned int x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x40u);
    unsigned int lsb = (x >> 16) & 1u;
    x += 0x7fffu + lsb;
    return (unsigned short)(x >> 16);
}

// x: (n) f32 -> y: (n) bf16 bits.
extern "C" __global__ void f32_to_bf16(const float* x, unsigned short* y, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x) {
        y[i] = f32_to_bf16_bits(x[i]);
    }
}

// x: (n) bf16 bits -> y: (n) f32.
extern "C" __global__ void bf16_to_f32(const unsigned short* x, float* y, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x) {
        y[i] = __uint_as_float(((unsigned int)x[i]) << 16);
    }
}

// NCHW (f32, the network's layout) <-> NHWC (f32 or bf16, the layout cuDNN's tensor-core kernels
// work in) for the NHWC convolution path (ops::layout). Per sample, a (C, HW) <-> (HW, C)
// transpose through a 32 x 33 shared tile, so that reads and writes are both coalesced.
// Grid (ceil(HW / 32), ceil(C / 32), N), block (32, 8); c * hw < 2^31 (checked by the host).

__device__ __forceinline__ void store_elem(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_elem(unsigned short* p, float v) {
    *p = f32_to_bf16_bits(v);
}
__device__ __forceinline__ float load_elem(const float* p) { return *p; }
__device__ __forceinline__ float load_elem(const unsigned short* p) {
    return __uint_as_float(((unsigned int)*p) << 16);
}

// x: (N, C, HW) f32 -> y: (N, HW, C).
template <typename T>
__device__ __forceinline__ void to_nhwc(const float* x, T* y, unsigned c, unsigned hw) {
    __shared__ float tile[32][33];
    u64 base = (u64)blockIdx.z * c * hw;
    unsigned p0 = blockIdx.x * 32, c0 = blockIdx.y * 32;
    for (unsigned k = threadIdx.y; k < 32; k += 8) {
        unsigned ch = c0 + k, p = p0 + threadIdx.x;
        if (ch < c && p < hw) tile[k][threadIdx.x] = x[base + ch * hw + p];
    }
    __syncthreads();
    for (unsigned k = threadIdx.y; k < 32; k += 8) {
        unsigned p = p0 + k, ch = c0 + threadIdx.x;
        if (ch < c && p < hw) store_elem(y + base + p * c + ch, tile[threadIdx.x][k]);
    }
}

// y: (N, HW, C) -> x: (N, C, HW) f32, + b[c] when b is not null, then ReLU when relu != 0.
template <typename T>
__device__ __forceinline__ void from_nhwc(const T* y, const float* b, float* x, unsigned c,
                                          unsigned hw, int relu) {
    __shared__ float tile[32][33];
    u64 base = (u64)blockIdx.z * c * hw;
    unsigned p0 = blockIdx.x * 32, c0 = blockIdx.y * 32;
    for (unsigned k = threadIdx.y; k < 32; k += 8) {
        unsigned p = p0 + k, ch = c0 + threadIdx.x;
        if (ch < c && p < hw) tile[k][threadIdx.x] = load_elem(y + base + p * c + ch);
    }
    __syncthreads();
    for (unsigned k = threadIdx.y; k < 32; k += 8) {
        unsigned ch = c0 + k, p = p0 + threadIdx.x;
        if (ch < c && p < hw) {
            float v = tile[threadIdx.x][k];
            if (b != 0) v += b[ch];
            if (relu && v < 0.0f) v = 0.0f;
            x[base + ch * hw + p] = v;
        }
    }
}

extern "C" __global__ void nchw_to_nhwc_f32(const float* x, float* y, unsigned c, unsigned hw) {
    to_nhwc(x, y, c, hw);
}

extern "C" __global__ void nchw_to_nhwc_bf16(const float* x, unsigned short* y, unsigned c,
                                             unsigned hw) {
    to_nhwc(x, y, c, hw);
}

extern "C" __global__ void nhwc_to_nchw_f32(const float* y, const float* b, float* x, unsigned c,
                                            unsigned hw, int relu) {
    from_nhwc(y, b, x, c, hw, relu);
}

extern "C" __global__ void nhwc_to_nchw_bf16(const unsigned short* y, const float* b, float* x,
                                             unsigned c, unsigned hw, int relu) {
    from_nhwc(y, b, x, c, hw, relu);
}

// The output gradient of a convolution for cuDNN's backward, with the bias gradient's partial
// sums: g = dy * (y > 0) (dy itself where y is null: no fused ReLU), written to out as
// (N, HW, C) of T when NHWC, else as (N, C, HW) f32 (not written when out is null), and
// part: (N, C, ceil(HW / 32)), each 32-pixel tile's per-channel sum of g in pixel order (the
// bias gradient is then channel_sum over part). Same grid and block as the transposes above.
template <typename T, bool NHWC>
__device__ __forceinline__ void mask_sum(const float* dy, const float* y, T* out, float* part,
                                         unsigned c, unsigned hw) {
    __shared__ float tile[32][33];
    u64 base = (u64)blockIdx.z * c * hw;
    unsigned p0 = blockIdx.x * 32, c0 = blockIdx.y * 32;
    for (unsigned k = threadIdx.y; k < 32; k += 8) {
        unsigned ch = c0 + k, p = p0 + threadIdx.x;
        float v = 0.0f;
        if (ch < c && p < hw) {
            u64 i = base + (u64)ch * hw + p;
            v = dy[i];
            if (y != 0 && !(y[i] > 0.0f)) v = 0.0f;
            if (!NHWC && out != 0) store_elem(out + i, v);
        }
        tile[k][threadIdx.x] = v;
    }
    __syncthreads();
    if (threadIdx.y == 0) {
        unsigned ch = c0 + threadIdx.x;
        float s = 0.0f;
        for (unsigned j = 0; j < 32; ++j) s += tile[threadIdx.x][j];
        if (ch < c) part[((u64)blockIdx.z * c + ch) * gridDim.x + blockIdx.x] = s;
    }
    if (NHWC) {
        for (unsigned k = threadIdx.y; k < 32; k += 8) {
            unsigned p = p0 + k, ch = c0 + threadIdx.x;
            if (ch < c && p < hw) store_elem(out + base + (u64)p * c + ch, tile[threadIdx.x][k]);
        }
    }
}

extern "C" __global__ void relu_mask_sum_nchw(const float* dy, const float* y, float* out,
                                              float* part, unsigned c, unsigned hw) {
    mask_sum<float, false>(dy, y, out, part, c, hw);
}

extern "C" __global__ void relu_mask_sum_nhwc_f32(const float* dy, const float* y, float* out,
                                                  float* part, unsigned c, unsigned hw) {
    mask_sum<float, true>(dy, y, out, part, c, hw);
}

extern "C" __global__ void relu_mask_sum_nhwc_bf16(const float* dy, const float* y,
                                                   unsigned short* out, float* part, unsigned c,
                                                   unsigned hw) {
    mask_sum<unsigned short, true>(dy, y, out, part, c, hw);
}
