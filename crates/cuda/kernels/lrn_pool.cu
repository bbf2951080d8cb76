// Local response normalisation across channels (paper convention: alpha multiplies the PLAIN
// sum of squares over the clipped window of `size` channels) and overlapping max-pooling
// (no padding, floor mode, gradient to the first maximum in row-major window order).
// Index arithmetic is 32-bit (the host checks that every tensor has < 2^31 elements): 64-bit
// division costs tens of instructions and dominated these memory-bound kernels.

typedef unsigned int u32;

// n / d as a multiply-high and a shift, exact for n < 2^31 (ops::FastDiv computes m and shift).
struct FastDiv {
    unsigned int m, shift;
};

__device__ __forceinline__ unsigned int fdiv(unsigned int n, FastDiv f) {
    return (__umulhi(n, f.m) + n) >> f.shift;
}

struct LrnParams {
    unsigned int n, c;  // batch, channels
    unsigned int hw;    // H * W
    unsigned int half;  // floor(size / 2)
    float alpha, beta, k;
    int relu_input;     // apply max(x, 0) to the input first (fused ReLU)
    FastDiv div_hw, div_c;  // division by hw and c
};

struct PoolGeom {
    unsigned int planes;  // N * C
    unsigned int h, w;    // input plane
    unsigned int k, stride;
    unsigned int ho, wo;  // output plane
    unsigned int pad_;    // keeps the struct a multiple of 8 bytes
    FastDiv div_w, div_h, div_stride;
};

__device__ __forceinline__ float lrn_in(const float* x, u32 i, int relu) {
    float v = x[i];
    return (relu && v < 0.0f) ? 0.0f : v;
}

// D = k + alpha * sum_{j in [ch-half, ch+half] clipped} a_j^2 at (n, ., p); `base` = n*C*HW + p.
__device__ __forceinline__ float lrn_denom(const float* x, u32 base, int ch, LrnParams q) {
    int lo = ch - (int)q.half; if (lo < 0) lo = 0;
    int hi = ch + (int)q.half; if (hi > (int)q.c - 1) hi = (int)q.c - 1;
    float s = 0.0f;
    for (int j = lo; j <= hi; ++j) {
        float a = lrn_in(x, base + (u32)j * q.hw, q.relu_input);
        s += a * a;
    }
    return q.k + q.alpha * s;
}

#define GRID_STRIDE(i, total) \
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < (total); i += gridDim.x * blockDim.x)

// Element i of (N, C, HW): its channel and base = n*C*HW + p.
__device__ __forceinline__ u32 lrn_elem(u32 i, LrnParams q, int* ch) {
    u32 nc = fdiv(i, q.div_hw);
    u32 p = i - nc * q.hw;
    *ch = (int)(nc - fdiv(nc, q.div_c) * q.c);
    return (nc - *ch) * q.hw + p;
}

// One element of each LRN kernel: i = base + ch * HW is the element, base = n*C*HW + p.

// y_i = a_i / D_i^beta.
__device__ __forceinline__ void lrn_fwd_at(const float* x, float* y, u32 i, u32 base, int ch,
                                           LrnParams q) {
    float d = lrn_denom(x, base, ch, q);
    y[i] = lrn_in(x, i, q.relu_input) * powf(d, -q.beta);
}

// Backward pass 1 (see lrn_bwd_prep): t_i = dy_i a_i s_i / D_i, g_i: dy_i -> u_i = dy_i s_i.
__device__ __forceinline__ void lrn_prep_at(const float* x, float* g, float* t, u32 i, u32 base,
                                            int ch, LrnParams q) {
    float d = lrn_denom(x, base, ch, q);
    float s = powf(d, -q.beta);
    float dy = g[i];
    t[i] = dy * lrn_in(x, i, q.relu_input) * s / d;
    g[i] = dy * s;
}

// Backward pass 2 (see lrn_bwd_finish): g_i: u_i -> u_i - 2 alpha beta a_i sum_{j in W(i)} t_j.
__device__ __forceinline__ void lrn_finish_at(const float* x, const float* t, float* g, u32 i,
                                              u32 base, int ch, LrnParams q) {
    int lo = ch - (int)q.half; if (lo < 0) lo = 0;
    int hi = ch + (int)q.half; if (hi > (int)q.c - 1) hi = (int)q.c - 1;
    float acc = 0.0f;
    for (int j = lo; j <= hi; ++j) acc += t[base + (u32)j * q.hw];
    float v = g[i] - 2.0f * q.alpha * q.beta * lrn_in(x, i, q.relu_input) * acc;
    if (q.relu_input && !(x[i] > 0.0f)) v = 0.0f;
    g[i] = v;
}

// x, y: (N, C, H, W): y = a / D^beta.
extern "C" __global__ void lrn_fwd(const float* x, float* y, LrnParams q) {
    u32 total = q.n * q.c * q.hw;
    GRID_STRIDE(i, total) {
        int ch;
        u32 base = lrn_elem(i, q, &ch);
        lrn_fwd_at(x, y, i, base, ch, q);
    }
}

// x, dy, dx: (N, C, H, W). With D_j the denominators and windows symmetric:
// dx_i = dy_i D_i^-beta - 2 alpha beta a_i sum_{j in W(i)} dy_j a_j D_j^(-beta-1).
// With relu_input the ReLU gradient is applied too (dx is then the gradient of the ReLU input).
// The one-kernel reference form (the network uses the two-pass lrn_bwd_prep/finish below).
extern "C" __global__ void lrn_bwd(const float* x, const float* dy, float* dx, LrnParams q) {
    u32 total = q.n * q.c * q.hw;
    GRID_STRIDE(i, total) {
        int ch;
        u32 base = lrn_elem(i, q, &ch);
        int lo = ch - (int)q.half; if (lo < 0) lo = 0;
        int hi = ch + (int)q.half; if (hi > (int)q.c - 1) hi = (int)q.c - 1;
        float acc = 0.0f;
        for (int j = lo; j <= hi; ++j) {
            u32 ij = base + (u32)j * q.hw;
            float dj = lrn_denom(x, base, j, q);
            acc += dy[ij] * lrn_in(x, ij, q.relu_input) * powf(dj, -q.beta - 1.0f);
        }
        float a = lrn_in(x, i, q.relu_input);
        float di = lrn_denom(x, base, ch, q);
        float g = dy[i] * powf(di, -q.beta) - 2.0f * q.alpha * q.beta * a * acc;
        if (q.relu_input && !(x[i] > 0.0f)) g = 0.0f;
        dx[i] = g;
    }
}

// Two-pass LRN backward (one power per element instead of one per window term), in place.
// Pass 1: with s_i = D_i^-beta, t_i = dy_i a_i s_i / D_i (into t) and u_i = dy_i s_i (over dy).
// x, g, t: (N, C, H, W); g holds dy on entry and u on exit.
extern "C" __global__ void lrn_bwd_prep(const float* x, float* g, float* t, LrnParams q) {
    u32 total = q.n * q.c * q.hw;
    GRID_STRIDE(i, total) {
        int ch;
        u32 base = lrn_elem(i, q, &ch);
        lrn_prep_at(x, g, t, i, base, ch, q);
    }
}

// Pass 2: dx_i = u_i - 2 alpha beta a_i sum_{j in W(i)} t_j (then the ReLU mask when the ReLU
// is fused). x, t: (N, C, H, W); g holds u on entry and dx on exit.
extern "C" __global__ void lrn_bwd_finish(const float* x, const float* t, float* g, LrnParams q) {
    u32 total = q.n * q.c * q.hw;
    GRID_STRIDE(i, total) {
        int ch;
        u32 base = lrn_elem(i, q, &ch);
        lrn_finish_at(x, t, g, i, base, ch, q);
    }
}

// ---- Column form: one thread per (sample, pixel, chunk of channels) ----------------------
// The per-element kernels above read each input 2 * half + 1 times (once per window holding it)
// and the backward goes through memory twice (t, then the window sums of t). Here a thread walks
// the channels of one pixel, `chunk` channels from c0, with the window's values in registers:
// each input is loaded once (plus a halo of 2 * half channels at the chunk's ends), and the
// backward is one pass. Threads of a warp take neighbouring pixels, so every load is coalesced.
// The arithmetic follows the CPU reference (crates/layers/src/lrn.rs) operation by operation,
// with the same summation order (zeros for channels outside [0, C) add nothing, exactly) and no
// FMA contraction (__fmul_rn / __fadd_rn): with beta = 0.75 (square roots and a division,
// correctly rounded on the GPU) the results are bit-identical to the CPU's.
// Supported for half <= 2 (sizes up to 5: the paper's); the host uses the per-element kernels
// otherwise.

struct LrnCols {
    unsigned int chunk;   // channels per thread
    unsigned int chunks;  // ceil(C / chunk)
    FastDiv div_chunks;   // division by chunks
};

// Thread t -> (base = n*C*HW + p, first channel c0, end channel c1) of its column chunk.
__device__ __forceinline__ u32 lrn_col(u32 t, LrnParams q, LrnCols g, u32* c0, u32* c1, u32* n,
                                      u32* p) {
    u32 r = fdiv(t, q.div_hw);  // n * chunks + chunk
    *p = t - r * q.hw;
    *n = fdiv(r, g.div_chunks);
    u32 ck = r - *n * g.chunks;
    *c0 = ck * g.chunk;
    *c1 = *c0 + g.chunk < q.c ? *c0 + g.chunk : q.c;
    return *n * q.c * q.hw + *p;
}

// a_j (after the optional ReLU) at channel j of the column, 0 outside [0, C).
__device__ __forceinline__ float lrn_col_in(const float* x, u32 base, int j, LrnParams q) {
    return (j >= 0 && j < (int)q.c) ? lrn_in(x, base + (u32)j * q.hw, q.relu_input) : 0.0f;
}

// The LRN window of one pixel walking the channels: a and a^2 of channels ch - H .. ch + H in
// registers. start(c0) loads c0 - H .. c0 + H - 1; step(ch) loads ch + H and returns the LRN
// output at ch: a / (k + alpha * window sum of a^2)^beta.
template <int H>
struct LrnWindow {
    float a[2 * H + 1], sq[2 * H + 1];

    __device__ __forceinline__ void start(const float* x, u32 base, int c0, LrnParams q) {
#pragma unroll
        for (int k = 0; k < 2 * H; ++k) {
            a[k] = lrn_col_in(x, base, c0 - H + k, q);
            sq[k] = __fmul_rn(a[k], a[k]);
        }
    }

    // Loads channel j into the window's last slot (the window is then j - 2H .. j).
    __device__ __forceinline__ void push(const float* x, u32 base, int j, LrnParams q) {
        a[2 * H] = lrn_col_in(x, base, j, q);
        sq[2 * H] = __fmul_rn(a[2 * H], a[2 * H]);
    }

    // k + alpha * (window sum of a^2), summed in channel order from 0 as the CPU does.
    __device__ __forceinline__ float denom(LrnParams q) const {
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k <= 2 * H; ++k) s = __fadd_rn(s, sq[k]);
        return __fadd_rn(q.k, __fmul_rn(q.alpha, s));
    }

    // Drops the first channel of the window.
    __device__ __forceinline__ void shift() {
#pragma unroll
        for (int k = 0; k < 2 * H; ++k) {
            a[k] = a[k + 1];
            sq[k] = sq[k + 1];
        }
    }

    __device__ __forceinline__ float step(const float* x, u32 base, int ch, LrnParams q) {
        push(x, base, ch + H, q);
        float d = denom(q);
        float v = a[H];
        float out = q.beta == 0.75f ? v / __fmul_rn(sqrtf(d), sqrtf(sqrtf(d)))
                                    : v * powf(d, -q.beta);
        shift();
        return out;
    }
};

// y = LRN(x) over the column chunk [c0, c1).
template <int H>
__device__ __forceinline__ void lrn_fwd_col(const float* x, float* y, u32 base, int c0, int c1,
                                            LrnParams q) {
    LrnWindow<H> win;
    win.start(x, base, c0, q);
    for (int ch = c0; ch < c1; ++ch) y[base + (u32)ch * q.hw] = win.step(x, base, ch, q);
}

// The incoming gradient of the LRN output at channel j of the column (base = n*C*HW + p).
struct DyPlain {
    const float* dy;
    __device__ __forceinline__ float at(u32 base, int j, u32 hw) const {
        return dy[base + (u32)j * hw];
    }
};

// dx over the column chunk: with s_j = k + alpha * window sum,
// t_j = s_j^-beta, r_j = dy_j a_j t_j / s_j:
// dx_c = dy_c t_c - 2 alpha beta a_c sum_{j in W(c)} r_j (then the ReLU mask when fused).
// A lead channel L runs H ahead of the output channel c = L - H: r_L needs a up to L + H.
template <int H, typename Dy>
__device__ __forceinline__ void lrn_bwd_col(const float* x, Dy dyp, float* dx, u32 base, int c0,
                                            int c1, LrnParams q) {
    // 2 alpha beta rounded once from the exact product, as the CPU computes it (in f64).
    float coef = (float)(2.0 * (double)q.alpha * (double)q.beta);
    LrnWindow<H> win;  // channels L - H .. L + H
    float r[2 * H + 1];  // r_j, channels c - H .. c + H (= L - 2H .. L)
    float u[H + 1];      // dy_j t_j, channels c .. L
    win.start(x, base, c0 - H, q);
#pragma unroll
    for (int k = 0; k < 2 * H; ++k) r[k] = 0.0f;
#pragma unroll
    for (int k = 0; k < H; ++k) u[k] = 0.0f;
    for (int lead = c0 - H; lead < c1 + H; ++lead) {
        win.push(x, base, lead + H, q);
        float rl = 0.0f, ul = 0.0f;
        if (lead >= 0 && lead < (int)q.c) {
            float s = win.denom(q);
            float dy = dyp.at(base, lead, q.hw);
            float al = win.a[H];
            if (q.beta == 0.75f) {
                // s^-0.75 = 1 / (sqrt(s) sqrt(sqrt(s))), s^-1.75 = (s^-0.75)^3 sqrt(s).
                float qs = sqrtf(s);
                float t = 1.0f / __fmul_rn(qs, sqrtf(qs));
                rl = __fmul_rn(__fmul_rn(dy, al), __fmul_rn(__fmul_rn(__fmul_rn(t, t), t), qs));
                ul = __fmul_rn(dy, t);
            } else {
                float t = powf(s, -q.beta);
                rl = __fmul_rn(__fmul_rn(dy, al), t / s);
                ul = __fmul_rn(dy, t);
            }
        }
        r[2 * H] = rl;
        u[H] = ul;
        int c = lead - H;
        if (c >= c0) {
            float acc = 0.0f;
#pragma unroll
            for (int k = 0; k <= 2 * H; ++k) acc = __fadd_rn(acc, r[k]);
            float ac = win.a[0];  // channel c = lead - H
            float v = __fsub_rn(u[0], __fmul_rn(__fmul_rn(coef, ac), acc));
            if (q.relu_input && !(ac > 0.0f)) v = 0.0f;
            dx[base + (u32)c * q.hw] = v;
        }
        win.shift();
#pragma unroll
        for (int k = 0; k < 2 * H; ++k) r[k] = r[k + 1];
#pragma unroll
        for (int k = 0; k < H; ++k) u[k] = u[k + 1];
    }
}

// x, y: (N, C, H, W); threads over (N, chunks, HW). q.half <= 2.
extern "C" __global__ void lrn_fwd_cols(const float* x, float* y, LrnParams q, LrnCols g) {
    u32 total = q.n * g.chunks * q.hw;
    GRID_STRIDE(t, total) {
        u32 c0, c1, n, p;
        u32 base = lrn_col(t, q, g, &c0, &c1, &n, &p);
        switch (q.half) {
            case 0: lrn_fwd_col<0>(x, y, base, (int)c0, (int)c1, q); break;
            case 1: lrn_fwd_col<1>(x, y, base, (int)c0, (int)c1, q); break;
            case 2: lrn_fwd_col<2>(x, y, base, (int)c0, (int)c1, q); break;
            default: break;
        }
    }
}

// x, dy, dx: (N, C, H, W) (dx distinct from dy: chunks read their neighbours' dy as halo).
// Threads over (N, chunks, HW).
extern "C" __global__ void lrn_bwd_cols(const float* x, const float* dy, float* dx, LrnParams q,
                                        LrnCols gc) {
    u32 total = q.n * gc.chunks * q.hw;
    GRID_STRIDE(t, total) {
        u32 c0, c1, n, p;
        u32 base = lrn_col(t, q, gc, &c0, &c1, &n, &p);
        DyPlain src{dy};
        switch (q.half) {
            case 0: lrn_bwd_col<0>(x, src, dx, base, (int)c0, (int)c1, q); break;
            case 1: lrn_bwd_col<1>(x, src, dx, base, (int)c0, (int)c1, q); break;
            case 2: lrn_bwd_col<2>(x, src, dx, base, (int)c0, (int)c1, q); break;
            default: break;
        }
    }
}

// x: (planes, H, W) -> y: (planes, HO, WO), arg: (planes, HO, WO) flat index h*W + w of the
// window's first maximum.
extern "C" __global__ void maxpool_fwd(const float* x, float* y, int* arg, PoolGeom g) {
    u32 total = g.planes * g.ho * g.wo;
    GRID_STRIDE(o, total) {
        u32 j = o % g.wo;
        u32 r = o / g.wo;
        u32 i = r % g.ho;
        u32 plane = r / g.ho;
        const float* xp = x + plane * g.h * g.w;
        u32 h0 = i * g.stride, w0 = j * g.stride;
        int best = (int)(h0 * g.w + w0);
        float m = xp[best];
        for (u32 u = 0; u < g.k; ++u)
            for (u32 v = 0; v < g.k; ++v) {
                int idx = (int)((h0 + u) * g.w + w0 + v);
                float val = xp[idx];
                if (val > m) { m = val; best = idx; }
            }
        y[o] = m;
        if (arg != 0) arg[o] = best;
    }
}

// dx[plane, h, w] of the gather form below: the sum of dy over the windows (i, j) in
// [i_lo, i_hi] x [j_lo, j_hi] whose argmax is (h, w), in row-major window order.
__device__ __forceinline__ float maxpool_gather(const float* dy, const int* arg, PoolGeom g,
                                                u32 plane, u32 h, u32 w, u32 i_lo, u32 i_hi,
                                                u32 j_lo, u32 j_hi) {
    int me = (int)(h * g.w + w);
    u32 base = plane * g.ho * g.wo;
    float acc = 0.0f;
    for (u32 i = i_lo; i <= i_hi; ++i)
        for (u32 j = j_lo; j <= j_hi; ++j) {
            u32 o = base + i * g.wo + j;
            if (arg[o] == me) acc += dy[o];
        }
    return acc;
}

// The windows [i_lo, i_hi] x [j_lo, j_hi] covering input pixel (h, w) (empty when i_lo > i_hi:
// a row or column no window reaches), with fast division.
struct PoolCover {
    u32 i_lo, i_hi, j_lo, j_hi;
};

__device__ __forceinline__ PoolCover pool_cover(PoolGeom g, u32 h, u32 w) {
    PoolCover c;
    c.i_lo = h >= g.k ? fdiv(h - g.k, g.div_stride) + 1 : 0;
    c.i_hi = fdiv(h, g.div_stride); if (c.i_hi > g.ho - 1) c.i_hi = g.ho - 1;
    c.j_lo = w >= g.k ? fdiv(w - g.k, g.div_stride) + 1 : 0;
    c.j_hi = fdiv(w, g.div_stride); if (c.j_hi > g.wo - 1) c.j_hi = g.wo - 1;
    return c;
}

// Gather form (deterministic): dx[plane, h, w] = sum of dy over the windows that cover (h, w)
// and whose argmax is (h, w), in row-major window order. dy, arg: (planes, HO, WO) -> dx:
// (planes, H, W) (overwritten). Every division is a FastDiv: with plain divisions (the
// reference below) this kernel was bound by integer instructions, not memory.
extern "C" __global__ void maxpool_bwd(const float* dy, const int* arg, float* dx, PoolGeom g) {
    u32 total = g.planes * g.h * g.w;
    GRID_STRIDE(t, total) {
        u32 r = fdiv(t, g.div_w);
        u32 w = t - r * g.w;
        u32 plane = fdiv(r, g.div_h);
        u32 h = r - plane * g.h;
        PoolCover cv = pool_cover(g, h, w);
        dx[t] = maxpool_gather(dy, arg, g, plane, h, w, cv.i_lo, cv.i_hi, cv.j_lo, cv.j_hi);
    }
}

// maxpool_bwd with plain integer division for the index decomposition and window ranges (the
// reference gpu-check compares against).
extern "C" __global__ void maxpool_bwd_ref(const float* dy, const int* arg, float* dx,
                                           PoolGeom g) {
    u32 total = g.planes * g.h * g.w;
    GRID_STRIDE(t, total) {
        u32 w = t % g.w;
        u32 r = t / g.w;
        u32 h = r % g.h;
        u32 plane = r / g.h;
        u32 i_lo = h >= g.k ? (h - g.k) / g.stride + 1 : 0;
        u32 i_hi = h / g.stride; if (i_hi > g.ho - 1) i_hi = g.ho - 1;
        u32 j_lo = w >= g.k ? (w - g.k) / g.stride + 1 : 0;
        u32 j_hi = w / g.stride; if (j_hi > g.wo - 1) j_hi = g.wo - 1;
        dx[t] = maxpool_gather(dy, arg, g, plane, h, w, i_lo, i_hi, j_lo, j_hi);
    }
}

// ---- Max-pool backward fused into the column LRN backward ----------------------------------
// The network's LRN + pool stage: the LRN output's gradient at (n, j, h, w) is the pool's
// backward there, gathered from the (at most four) windows covering the pixel, exactly as
// maxpool_bwd computes it; the column LRN backward takes it channel by channel, so the full-size
// intermediate gradient is never written or read. The pixel's window ranges are computed once.
struct DyPool {
    const float* dy;  // (N*C, HO, WO), the pool output's gradient
    const int* arg;   // (N*C, HO, WO)
    PoolGeom g;
    u32 plane0;       // n * C
    u32 h, w;
    PoolCover cv;  // the windows covering (h, w)
    __device__ __forceinline__ float at(u32, int j, u32) const {
        return maxpool_gather(dy, arg, g, plane0 + (u32)j, h, w, cv.i_lo, cv.i_hi, cv.j_lo,
                              cv.j_hi);
    }
};

// x, dx: (N, C, H, W); pdy, arg: (N*C, HO, WO) of the pool over the LRN output (g.planes = N*C,
// g.h * g.w = q.hw). Threads over (N, chunks, HW). q.half <= 2.
extern "C" __global__ void lrn_pool_bwd_cols(const float* x, const float* pdy, const int* arg,
                                             float* dx, LrnParams q, LrnCols gc, PoolGeom g) {
    u32 total = q.n * gc.chunks * q.hw;
    GRID_STRIDE(t, total) {
        u32 c0, c1, n, p;
        u32 base = lrn_col(t, q, gc, &c0, &c1, &n, &p);
        DyPool src;
        src.dy = pdy;
        src.arg = arg;
        src.g = g;
        src.plane0 = n * q.c;
        src.h = fdiv(p, g.div_w);
        src.w = p - src.h * g.w;
        src.cv = pool_cover(g, src.h, src.w);
        switch (q.half) {
            case 0: lrn_bwd_col<0>(x, src, dx, base, (int)c0, (int)c1, q); break;
            case 1: lrn_bwd_col<1>(x, src, dx, base, (int)c0, (int)c1, q); break;
            case 2: lrn_bwd_col<2>(x, src, dx, base, (int)c0, (int)c1, q); break;
            default: break;
        }
    }
}

// ---- LRN + max-pool forward in one kernel -------------------------------------------------
// A block takes one sample, a chunk of channels and a tile of to_y x to_x pool outputs, whose
// windows cover ti_y x ti_x input pixels (ti = (to - 1) * stride + k; ti_y * ti_x <= blockDim.x
// and <= 1024, checked by the host, which makes tiles wide: rows of up to 32 pixels keep the
// loads coalesced). Each thread owns one input pixel of the tile and walks the chunk's channels
// with the LRN window in registers, as the column kernels do; per channel the block's LRN values
// go through shared memory to the pool: max and argmax (first maximum, row-major), exactly as
// maxpool_fwd computes them. The LRN output is never stored (the backward recomputes it from x).
// Tiles overlap by k - stride pixels, computed twice. Grid (tiles, chunks, N).
// x: (N, C, H, W) -> y, arg: (N*C, HO, WO).
struct PoolTile {
    unsigned int to_y, to_x;  // pool outputs per tile
    unsigned int threads;     // the block size the tile was made for (the launch's)
    unsigned int pad_;
};

template <int H>
__device__ __forceinline__ void lrn_pool_fwd_tile(const float* x, float* y, int* arg, LrnParams q,
                                                  LrnCols gc, PoolGeom g, PoolTile pt,
                                                  float* tile) {
    u32 ti_y = (pt.to_y - 1) * g.stride + g.k, ti_x = (pt.to_x - 1) * g.stride + g.k;
    u32 tiles_x = (g.wo + pt.to_x - 1) / pt.to_x;
    u32 by = blockIdx.x / tiles_x, bx = blockIdx.x - by * tiles_x;
    u32 n = blockIdx.z;
    int c0 = (int)(blockIdx.y * gc.chunk);
    int c1 = c0 + (int)gc.chunk < (int)q.c ? c0 + (int)gc.chunk : (int)q.c;
    // This thread's input pixel (ih, iw) of the plane, if any.
    u32 t = threadIdx.x;
    u32 py = t / ti_x, px = t - (t / ti_x) * ti_x;
    u32 ih = by * pt.to_y * g.stride + py, iw = bx * pt.to_x * g.stride + px;
    bool pixel = py < ti_y && ih < g.h && iw < g.w;
    u32 base = n * q.c * q.hw + (pixel ? ih * g.w + iw : 0);
    // This thread's pool output (oy, ox), if any, and its window's corner in the tile.
    u32 ty = t / pt.to_x, tx = t - (t / pt.to_x) * pt.to_x;
    u32 oy = by * pt.to_y + ty, ox = bx * pt.to_x + tx;
    bool out = ty < pt.to_y && oy < g.ho && ox < g.wo;
    LrnWindow<H> win;
    if (pixel) win.start(x, base, c0, q);
    for (int ch = c0; ch < c1; ++ch) {
        if (pixel) tile[py * ti_x + px] = win.step(x, base, ch, q);
        __syncthreads();
        if (out) {
            u32 wy = ty * g.stride, wx = tx * g.stride;  // window corner in the tile
            u32 h0 = oy * g.stride, w0 = ox * g.stride;  // ... and in the plane
            int best = (int)(h0 * g.w + w0);
            float m = tile[wy * ti_x + wx];
            for (u32 u = 0; u < g.k; ++u)
                for (u32 v = 0; v < g.k; ++v) {
                    float val = tile[(wy + u) * ti_x + wx + v];
                    if (val > m) { m = val; best = (int)((h0 + u) * g.w + w0 + v); }
                }
            u32 o = ((n * q.c + (u32)ch) * g.ho + oy) * g.wo + ox;
            y[o] = m;
            arg[o] = best;
        }
        __syncthreads();
    }
}

extern "C" __global__ void lrn_pool_fwd_cols(const float* x, float* y, int* arg, LrnParams q,
                                             LrnCols gc, PoolGeom g, PoolTile pt) {
    __shared__ float tile[1024];
    switch (q.half) {
        case 0: lrn_pool_fwd_tile<0>(x, y, arg, q, gc, g, pt, tile); break;
        case 1: lrn_pool_fwd_tile<1>(x, y, arg, q, gc, g, pt, tile); break;
        case 2: lrn_pool_fwd_tile<2>(x, y, arg, q, gc, g, pt, tile); break;
        default: break;
    }
}
