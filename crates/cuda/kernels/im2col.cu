// im2col / col2im for convolution as GEMM (cross-correlation, zero padding, groups).
// col layout: (C * K * K, NB * HO * WO), row (c*K + u)*K + v, column s*HO*WO + i*WO + j, so the
// rows of group g are the contiguous block [g*(C/G)*K*K, (g+1)*(C/G)*K*K).

typedef unsigned long long u64;

struct ConvGeom {
    unsigned int nb;      // samples in this chunk
    unsigned int c;       // input channels (all groups)
    unsigned int h, w;    // input spatial size
    unsigned int k;       // kernel side
    unsigned int stride;
    unsigned int pad;
    unsigned int ho, wo;  // output spatial size
};

// x: (NB, C, H, W) (the chunk's first sample) -> col: (C*K*K, NB*HO*WO).
extern "C" __global__ void im2col(const float* x, float* col, ConvGeom g) {
    // 32-bit index arithmetic: the host checks that col and x have < 2^31 elements.
    unsigned hw = g.ho * g.wo;
    unsigned cols = g.nb * hw;
    unsigned total = g.c * g.k * g.k * cols;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        unsigned p = idx % cols;
        unsigned row = idx / cols;
        unsigned v = row % g.k;
        unsigned u = (row / g.k) % g.k;
        unsigned ch = row / (g.k * g.k);
        unsigned s = p / hw;
        unsigned q = p % hw;
        int i = (int)(q / g.wo), j = (int)(q % g.wo);
        int hh = i * (int)g.stride + (int)u - (int)g.pad;
        int ww = j * (int)g.stride + (int)v - (int)g.pad;
        float val = 0.0f;
        if (hh >= 0 && hh < (int)g.h && ww >= 0 && ww < (int)g.w)
            val = x[((s * g.c + ch) * g.h + hh) * g.w + ww];
        col[idx] = val;
    }
}

// Gather form of col2im (deterministic, no atomics): dx[s, c, h, w] = sum over (u, v, i, j) with
// i*stride + u - pad = h and j*stride + v - pad = w of dcol[(c*K+u)*K+v, s*HO*WO + i*WO + j].
// dcol: (C*K*K, NB*HO*WO) -> dx: (NB, C, H, W) (overwritten).
extern "C" __global__ void col2im(const float* dcol, float* dx, ConvGeom g) {
    unsigned hw = g.ho * g.wo;
    unsigned cols = g.nb * hw;
    unsigned total = g.nb * g.c * g.h * g.w;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        int w = (int)(idx % g.w);
        unsigned r = idx / g.w;
        int h = (int)(r % g.h);
        r /= g.h;
        unsigned ch = r % g.c;
        unsigned s = r / g.c;
        float acc = 0.0f;
        for (unsigned u = 0; u < g.k; ++u) {
            int th = h + (int)g.pad - (int)u;
            if (th < 0 || th % (int)g.stride != 0) continue;
            int i = th / (int)g.stride;
            if (i >= (int)g.ho) continue;
            for (unsigned v = 0; v < g.k; ++v) {
                int tw = w + (int)g.pad - (int)v;
                if (tw < 0 || tw % (int)g.stride != 0) continue;
                int j = tw / (int)g.stride;
                if (j >= (int)g.wo) continue;
                unsigned row = (ch * g.k + u) * g.k + v;
                acc += dcol[row * cols + s * hw + (unsigned)i * g.wo + j];
            }
        }
        dx[idx] = acc;
    }
}
