// Local response normalisation across channels (paper convention: alpha multiplies the PLAIN
// sum of squares over the clipped window of `size` channels) and overlapping max-pooling
// (no padding, floor mode, gradient to the first maximum in row-major window order).

typedef unsigned long long u64;

struct LrnParams {
    unsigned int n, c;  // batch, channels
    unsigned int hw;    // H * W
    unsigned int half;  // floor(size / 2)
    float alpha, beta, k;
    int relu_input;     // apply max(x, 0) to the input first (fused ReLU)
};

struct PoolGeom {
    unsigned int planes;  // N * C
    unsigned int h, w;    // input plane
    unsigned int k, stride;
    unsigned int ho, wo;  // output plane
    unsigned int pad_;    // keeps the struct a multiple of 8 bytes
};

__device__ __forceinline__ float lrn_in(const float* x, u64 i, int relu) {
    float v = x[i];
    return (relu && v < 0.0f) ? 0.0f : v;
}

// D = k + alpha * sum_{j in [ch-half, ch+half] clipped} a_j^2 at (n, ., p).
__device__ __forceinline__ float lrn_denom(const float* x, u64 n, int ch, u64 p, LrnParams q) {
    int lo = ch - (int)q.half; if (lo < 0) lo = 0;
    int hi = ch + (int)q.half; if (hi > (int)q.c - 1) hi = (int)q.c - 1;
    float s = 0.0f;
    for (int j = lo; j <= hi; ++j) {
        float a = lrn_in(x, (n * q.c + j) * q.hw + p, q.relu_input);
        s += a * a;
    }
    return q.k + q.alpha * s;
}

// x, y: (N, C, H, W): y = a / D^beta.
extern "C" __global__ void lrn_fwd(const float* x, float* y, LrnParams q) {
    u64 total = (u64)q.n * q.c * q.hw;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        u64 p = i % q.hw;
        int ch = (int)((i / q.hw) % q.c);
        u64 n = i / ((u64)q.hw * q.c);
        float d = lrn_denom(x, n, ch, p, q);
        y[i] = lrn_in(x, i, q.relu_input) * powf(d, -q.beta);
    }
}

// x, dy, dx: (N, C, H, W). With D_j the denominators and windows symmetric:
// dx_i = dy_i D_i^-beta - 2 alpha beta a_i sum_{j in W(i)} dy_j a_j D_j^(-beta-1).
// With relu_input the ReLU gradient is applied too (dx is then the gradient of the ReLU input).
extern "C" __global__ void lrn_bwd(const float* x, const float* dy, float* dx, LrnParams q) {
    u64 total = (u64)q.n * q.c * q.hw;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        u64 p = i % q.hw;
        int ch = (int)((i / q.hw) % q.c);
        u64 n = i / ((u64)q.hw * q.c);
        int lo = ch - (int)q.half; if (lo < 0) lo = 0;
        int hi = ch + (int)q.half; if (hi > (int)q.c - 1) hi = (int)q.c - 1;
        float acc = 0.0f;
        for (int j = lo; j <= hi; ++j) {
            u64 ij = (n * q.c + j) * q.hw + p;
            float dj = lrn_denom(x, n, j, p, q);
            acc += dy[ij] * lrn_in(x, ij, q.relu_input) * powf(dj, -q.beta - 1.0f);
        }
        float a = lrn_in(x, i, q.relu_input);
        float di = lrn_denom(x, n, ch, p, q);
        float g = dy[i] * powf(di, -q.beta) - 2.0f * q.alpha * q.beta * a * acc;
        if (q.relu_input && !(x[i] > 0.0f)) g = 0.0f;
        dx[i] = g;
    }
}

// x: (planes, H, W) -> y: (planes, HO, WO), arg: (planes, HO, WO) flat index h*W + w of the
// window's first maximum.
extern "C" __global__ void maxpool_fwd(const float* x, float* y, int* arg, PoolGeom g) {
    u64 total = (u64)g.planes * g.ho * g.wo;
    for (u64 o = blockIdx.x * (u64)blockDim.x + threadIdx.x; o < total;
         o += (u64)gridDim.x * blockDim.x) {
        unsigned j = (unsigned)(o % g.wo);
        unsigned i = (unsigned)((o / g.wo) % g.ho);
        u64 plane = o / ((u64)g.wo * g.ho);
        const float* xp = x + plane * g.h * g.w;
        unsigned h0 = i * g.stride, w0 = j * g.stride;
        int best = (int)(h0 * g.w + w0);
        float m = xp[best];
        for (unsigned u = 0; u < g.k; ++u)
            for (unsigned v = 0; v < g.k; ++v) {
                int idx = (int)((h0 + u) * g.w + w0 + v);
                float val = xp[idx];
                if (val > m) { m = val; best = idx; }
            }
        y[o] = m;
        if (arg != 0) arg[o] = best;
    }
}

// Gather form (deterministic): dx[plane, h, w] = sum of dy over the windows that cover (h, w)
// and whose argmax is (h, w). dy, arg: (planes, HO, WO) -> dx: (planes, H, W) (overwritten).
extern "C" __global__ void maxpool_bwd(const float* dy, const int* arg, float* dx, PoolGeom g) {
    u64 total = (u64)g.planes * g.h * g.w;
    for (u64 t = blockIdx.x * (u64)blockDim.x + threadIdx.x; t < total;
         t += (u64)gridDim.x * blockDim.x) {
        unsigned w = (unsigned)(t % g.w);
        unsigned h = (unsigned)((t / g.w) % g.h);
        u64 plane = t / ((u64)g.w * g.h);
        int me = (int)(h * g.w + w);
        unsigned i_lo = h >= g.k ? (h - g.k) / g.stride + 1 : 0;
        unsigned i_hi = h / g.stride; if (i_hi > g.ho - 1) i_hi = g.ho - 1;
        unsigned j_lo = w >= g.k ? (w - g.k) / g.stride + 1 : 0;
        unsigned j_hi = w / g.stride; if (j_hi > g.wo - 1) j_hi = g.wo - 1;
        float acc = 0.0f;
        for (unsigned i = i_lo; i <= i_hi; ++i)
            for (unsigned j = j_lo; j <= j_hi; ++j) {
                u64 o = (plane * g.ho + i) * g.wo + j;
                if (arg[o] == me) acc += dy[o];
            }
        dx[t] = acc;
    }
}

// Fused (ReLU +) LRN + max-pool forward: the LRN output is never stored. x: (N, C, H, W) ->
// y, arg: (N, C, HO, WO); arg indexes the LRN output plane (as maxpool_fwd), so the backward is
// maxpool_bwd into an LRN-output-shaped buffer followed by lrn_bwd.
extern "C" __global__ void lrn_pool_fwd(const float* x, float* y, int* arg, LrnParams q,
                                        PoolGeom g) {
    u64 total = (u64)g.planes * g.ho * g.wo;
    for (u64 o = blockIdx.x * (u64)blockDim.x + threadIdx.x; o < total;
         o += (u64)gridDim.x * blockDim.x) {
        unsigned j = (unsigned)(o % g.wo);
        unsigned i = (unsigned)((o / g.wo) % g.ho);
        u64 plane = o / ((u64)g.wo * g.ho);
        int ch = (int)(plane % q.c);
        u64 n = plane / q.c;
        unsigned h0 = i * g.stride, w0 = j * g.stride;
        int best = -1;
        float m = 0.0f;
        for (unsigned u = 0; u < g.k; ++u)
            for (unsigned v = 0; v < g.k; ++v) {
                int idx = (int)((h0 + u) * g.w + w0 + v);
                float d = lrn_denom(x, n, ch, (u64)idx, q);
                float val = lrn_in(x, plane * q.hw + idx, q.relu_input) * powf(d, -q.beta);
                if (best < 0 || val > m) { m = val; best = idx; }
            }
        y[o] = m;
        if (arg != 0) arg[o] = best;
    }
}
