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

// Space-to-depth form of a strided convolution (stride S, kernel K, padding P): with KS =
// ceil(K / S), HS = HO + KS - 1 and WS = WO + KS - 1, the convolution equals a stride-1,
// unpadded KS x KS convolution of
//   xs[s, (c*S + a)*S + b, I, J] = xpad[s, c, I*S + a, J*S + b]     (NB, C*S*S, HS, WS)
// with the weights
//   ws[o, (c*S + a)*S + b, U, V] = w[o, c, U*S + a, V*S + b], 0 where U*S + a >= K or
//   V*S + b >= K                                                      (O, Cg*S*S, KS, KS).
// (xpad: x with P zeros on each side, and zeros beyond.) The channel order keeps each group's
// channels contiguous, so groups carry over. The geometry is the original convolution's.

// x: (NB, C, H, W) -> xs: (NB, C*S*S, HS, WS).
extern "C" __global__ void s2d_input(const float* x, float* xs, ConvGeom g) {
    unsigned S = g.stride, ks = (g.k + S - 1) / S;
    unsigned hs = g.ho + ks - 1, wsz = g.wo + ks - 1, cs = g.c * S * S;
    unsigned total = g.nb * cs * hs * wsz;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        unsigned jj = idx % wsz;
        unsigned r = idx / wsz;
        unsigned ii = r % hs;
        r /= hs;
        unsigned cc = r % cs;
        unsigned s = r / cs;
        unsigned b = cc % S, a = (cc / S) % S, ch = cc / (S * S);
        int hh = (int)(ii * S + a) - (int)g.pad;
        int ww = (int)(jj * S + b) - (int)g.pad;
        float val = 0.0f;
        if (hh >= 0 && hh < (int)g.h && ww >= 0 && ww < (int)g.w)
            val = x[((s * g.c + ch) * g.h + hh) * g.w + ww];
        xs[idx] = val;
    }
}

// The adjoint of s2d_input (a gather, each dx element has at most one source):
// dxs: (NB, C*S*S, HS, WS) -> dx: (NB, C, H, W) (overwritten; pixels no output reads get 0).
extern "C" __global__ void s2d_input_grad(const float* dxs, float* dx, ConvGeom g) {
    unsigned S = g.stride, ks = (g.k + S - 1) / S;
    unsigned hs = g.ho + ks - 1, wsz = g.wo + ks - 1, cs = g.c * S * S;
    unsigned total = g.nb * g.c * g.h * g.w;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        unsigned w = idx % g.w;
        unsigned r = idx / g.w;
        unsigned h = r % g.h;
        r /= g.h;
        unsigned ch = r % g.c;
        unsigned s = r / g.c;
        unsigned hp = h + g.pad, wp = w + g.pad;
        unsigned ii = hp / S, jj = wp / S;
        float val = 0.0f;
        if (ii < hs && jj < wsz) {
            unsigned cc = (ch * S + hp % S) * S + wp % S;
            val = dxs[((s * cs + cc) * hs + ii) * wsz + jj];
        }
        dx[idx] = val;
    }
}

// Weights into space-to-depth form. Here g.nb is O and g.c the input channels of one group
// (Cg): w: (O, Cg, K, K) -> ws: (O, Cg*S*S, KS, KS).
extern "C" __global__ void s2d_weight(const float* w, float* ws, ConvGeom g) {
    unsigned S = g.stride, k = g.k, ks = (k + S - 1) / S, cs = g.c * S * S;
    unsigned total = g.nb * cs * ks * ks;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        unsigned vv = idx % ks;
        unsigned r = idx / ks;
        unsigned uu = r % ks;
        r /= ks;
        unsigned cc = r % cs;
        unsigned o = r / cs;
        unsigned b = cc % S, a = (cc / S) % S, ch = cc / (S * S);
        unsigned u = uu * S + a, v = vv * S + b;
        ws[idx] = (u < k && v < k) ? w[((o * g.c + ch) * k + u) * k + v] : 0.0f;
    }
}

// The weight gradient back from space-to-depth form (the entries of the zero padding are
// dropped): dws: (O, Cg*S*S, KS, KS) -> dw: (O, Cg, K, K) (overwritten). g as in s2d_weight.
extern "C" __global__ void s2d_weight_grad(const float* dws, float* dw, ConvGeom g) {
    unsigned S = g.stride, k = g.k, ks = (k + S - 1) / S, cs = g.c * S * S;
    unsigned total = g.nb * g.c * k * k;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        unsigned v = idx % k;
        unsigned r = idx / k;
        unsigned u = r % k;
        r /= k;
        unsigned ch = r % g.c;
        unsigned o = r / g.c;
        unsigned cc = (ch * S + u % S) * S + v % S;
        dw[idx] = dws[((o * cs + cc) * ks + u / S) * ks + v / S];
    }
}
