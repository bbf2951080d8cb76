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
