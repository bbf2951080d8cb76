// Winograd convolution F(m x m, r x r) for stride-1 layers (Lavin & Gray 2016), the transforms
// around the batched GEMMs of ops/winograd.rs. With a = m + r - 1, the Toom-Cook matrices of
// `WinoMats` (alexnet_tensor::toom_cook, the CPU's too) and a chunk of nb samples whose output
// planes are cut into th x tw tiles of m x m (P = nb th tw tiles):
//   forward    V = B^T d B (per input channel and tile), M[xi] = U[xi] V[xi] (GEMMs),
//              y = A^T M A + bias (ReLU), U = G g G^T per filter;
//   backward   dM = A dy A^T, dU[xi] += dM[xi] V[xi]^T and dV[xi] = U[xi]^T dM[xi] (GEMMs),
//              dg = G^T dU G, and dd = B dV B^T added into the overlapping input patches
//              (gathered per input pixel in a fixed order: deterministic, no atomics).
// Layouts (g = group, xi = position in the a x a grid, c' / o' = channel within the group,
// p = (sample, ti, tj), rows of p padded to ps): U, dU [g][xi][o'][c']; V, dV [g][xi][c'][p]; M, dM [g][xi][o'][p];
// dd [c][n][ti a + i][tj a + j]. x, y, dx are NCHW chunks; dy arrives as (O, nb, HO, WO), the
// ReLU mask already applied (the layout of the im2col path's gradient transpose).
// The kernels dispatch on (m, r) to fully unrolled instances: m in {2, 4}, r in {3, 5}.

typedef unsigned int u32;

// `WinoMats` of ops/winograd.rs: row-major f32 matrices of F(m, r), a <= 8.
struct WinoMats {
    float at[6 * 8];  // A^T (m, a)
    float g[8 * 5];   // G (a, r)
    float bt[8 * 8];  // B^T (a, a)
};

// `WinoGeom` of ops/winograd.rs.
struct WinoGeom {
    u32 nb, c, h, w;      // input chunk (nb, C, H, W)
    u32 o, ho, wo, pad;   // output chunk (nb, O, HO, WO); zero padding of the input
    u32 m, r, a, groups;  // F(m x m, r x r), a = m + r - 1
    u32 th, tw, p, ps;    // tiles per column / row of an output plane; p = nb th tw tiles,
                          // ps: their row stride in V, dV, M, dM (p rounded up to 8)
};

#define GRID_STRIDE(i, total) \
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < (total); i += gridDim.x * blockDim.x)

// Tile p of the chunk: sample n, tile row ti and column tj.
__device__ __forceinline__ void wino_tile(u32 p, WinoGeom q, u32* n, u32* ti, u32* tj) {
    u32 t = q.th * q.tw;
    *n = p / t;
    u32 r = p - *n * t;
    *ti = r / q.tw;
    *tj = r - *ti * q.tw;
}

// out (R1 x C2) = L (R1 x K1) in (K1 x K2) Rt^T (K2 x C2), with L[i][k] = l[i * ls + k * lk]
// and Rt[j][l] = rt[j * rs + l * rk]: the two-sided transforms, rows first.
template <int R1, int K1, int K2, int C2>
__device__ __forceinline__ void two_sided(const float* l, int ls, int lk, const float* in,
                                          const float* rt, int rs, int rk, float* out) {
    float t[R1 * K2];
#pragma unroll
    for (int i = 0; i < R1; ++i) {
#pragma unroll
        for (int j = 0; j < K2; ++j) {
            float s = 0.0f;
#pragma unroll
            for (int k = 0; k < K1; ++k) s += l[i * ls + k * lk] * in[k * K2 + j];
            t[i * K2 + j] = s;
        }
    }
#pragma unroll
    for (int i = 0; i < R1; ++i) {
#pragma unroll
        for (int j = 0; j < C2; ++j) {
            float s = 0.0f;
#pragma unroll
            for (int k = 0; k < K2; ++k) s += t[i * K2 + k] * rt[j * rs + k * rk];
            out[i * C2 + j] = s;
        }
    }
}

// Runs `body<M, R>(args...)` for the (m, r) of the geometry.
#define WINO_DISPATCH(body, q, ...)                                   \
    do {                                                              \
        if ((q).m == 2 && (q).r == 3) body<2, 3>(__VA_ARGS__);        \
        else if ((q).m == 4 && (q).r == 3) body<4, 3>(__VA_ARGS__);   \
        else if ((q).m == 2 && (q).r == 5) body<2, 5>(__VA_ARGS__);   \
        else if ((q).m == 4 && (q).r == 5) body<4, 5>(__VA_ARGS__);   \
    } while (0)

// Where a thread's a^2 transformed values live: element xi at base + xi * stride.
struct Slot {
    u32 base, stride;
};

// Thread i of a per-filter launch (i = o (C/g) + c'): its place in U / dU [g][xi][o'][c'].
__device__ __forceinline__ Slot filter_slot(u32 i, u32 a2, WinoGeom q) {
    u32 cg = q.c / q.groups, og = q.o / q.groups;
    u32 o = i / cg, cc = i - o * cg;
    u32 gi = o / og, oo = o - gi * og;
    Slot s = {(gi * a2 * og + oo) * cg + cc, og * cg};
    return s;
}

// Thread i of a per-(channel, tile) launch (i = ch P + p) over channels `per` to a group: its
// channel, tile and place in V / dV [g][xi][c'][p] (per = C/g) or M / dM [g][xi][o'][p]
// (per = O/g).
__device__ __forceinline__ Slot tile_slot(u32 i, u32 per, u32 a2, WinoGeom q, u32* ch, u32* n,
                                          u32* ti, u32* tj) {
    *ch = i / q.p;
    u32 p = i - *ch * q.p;
    u32 gi = *ch / per, cc = *ch - gi * per;
    wino_tile(p, q, n, ti, tj);
    Slot s = {(gi * a2 * per + cc) * q.ps + p, per * q.ps};
    return s;
}

template <int N>
__device__ __forceinline__ void load(const float* src, Slot s, float* d) {
#pragma unroll
    for (int xi = 0; xi < N; ++xi) d[xi] = src[s.base + xi * s.stride];
}

template <int N>
__device__ __forceinline__ void store(float* dst, Slot s, const float* d) {
#pragma unroll
    for (int xi = 0; xi < N; ++xi) dst[s.base + xi * s.stride] = d[xi];
}

// U = G g G^T: w (O, C/g, r, r) -> u [g][xi][o'][c'], one thread per (o, c').
template <int M, int R>
__device__ __forceinline__ void filter_fwd(const float* w, float* u, WinoGeom q,
                                           const WinoMats& t) {
    constexpr int A = M + R - 1;
    GRID_STRIDE(i, q.o * (q.c / q.groups)) {
        float f[R * R], uu[A * A];
#pragma unroll
        for (int e = 0; e < R * R; ++e) f[e] = w[i * (R * R) + e];
        // U (A x A) = G (A x R) f (R x R) G^T
        two_sided<A, R, R, A>(t.g, R, 1, f, t.g, R, 1, uu);
        store<A * A>(u, filter_slot(i, A * A, q), uu);
    }
}

// dg = G^T dU G: du [g][xi][o'][c'] -> dw (O, C/g, r, r) (overwritten), one thread per (o, c').
template <int M, int R>
__device__ __forceinline__ void filter_bwd(const float* du, float* dw, WinoGeom q,
                                           const WinoMats& t) {
    constexpr int A = M + R - 1;
    GRID_STRIDE(i, q.o * (q.c / q.groups)) {
        float d[A * A], f[R * R];
        load<A * A>(du, filter_slot(i, A * A, q), d);
        // dg (R x R) = G^T (R x A) dU (A x A) G
        two_sided<R, A, A, R>(t.g, 1, R, d, t.g, 1, R, f);
#pragma unroll
        for (int e = 0; e < R * R; ++e) dw[i * (R * R) + e] = f[e];
    }
}

// V = B^T d B: x (nb, C, H, W) -> v [g][xi][c'][p], one thread per (c, p).
template <int M, int R>
__device__ __forceinline__ void input_fwd(const float* x, float* v, WinoGeom q,
                                          const WinoMats& t) {
    constexpr int A = M + R - 1;
    GRID_STRIDE(i, q.c * q.p) {
        u32 c, n, ti, tj;
        Slot s = tile_slot(i, q.c / q.groups, A * A, q, &c, &n, &ti, &tj);
        const float* xp = x + (n * q.c + c) * q.h * q.w;
        int y0 = (int)(ti * M) - (int)q.pad, x0 = (int)(tj * M) - (int)q.pad;
        float d[A * A], vv[A * A];
#pragma unroll
        for (int k = 0; k < A; ++k) {
            int yy = y0 + k;
            bool row = yy >= 0 && yy < (int)q.h;
#pragma unroll
            for (int l = 0; l < A; ++l) {
                int xx = x0 + l;
                d[k * A + l] = (row && xx >= 0 && xx < (int)q.w) ? xp[yy * (int)q.w + xx] : 0.0f;
            }
        }
        // V (A x A) = B^T d B
        two_sided<A, A, A, A>(t.bt, A, 1, d, t.bt, A, 1, vv);
        store<A * A>(v, s, vv);
    }
}

// y = A^T M A + bias (ReLU): mm [g][xi][o'][p] -> y (nb, O, HO, WO), one thread per (o, p).
template <int M, int R>
__device__ __forceinline__ void output_fwd(const float* mm, const float* bias, float* y,
                                           WinoGeom q, const WinoMats& t, int relu) {
    constexpr int A = M + R - 1;
    GRID_STRIDE(i, q.o * q.p) {
        u32 o, n, ti, tj;
        Slot s = tile_slot(i, q.o / q.groups, A * A, q, &o, &n, &ti, &tj);
        float d[A * A], yy[M * M];
        load<A * A>(mm, s, d);
        // Y (M x M) = A^T d A
        two_sided<M, A, A, M>(t.at, A, 1, d, t.at, A, 1, yy);
        float b = bias[o];
        float* yp = y + (n * q.o + o) * q.ho * q.wo;
#pragma unroll
        for (int k = 0; k < M; ++k) {
            u32 r0 = ti * M + k;
#pragma unroll
            for (int l = 0; l < M; ++l) {
                u32 c0 = tj * M + l;
                if (r0 < q.ho && c0 < q.wo) {
                    float val = yy[k * M + l] + b;
                    yp[r0 * q.wo + c0] = (relu && val < 0.0f) ? 0.0f : val;
                }
            }
        }
    }
}

// dM = A dy A^T: dy (O, nb, HO, WO) -> dm [g][xi][o'][p], one thread per (o, p); the tile's
// outputs beyond the plane contribute zeros.
template <int M, int R>
__device__ __forceinline__ void output_bwd(const float* dy, float* dm, WinoGeom q,
                                           const WinoMats& t) {
    constexpr int A = M + R - 1;
    GRID_STRIDE(i, q.o * q.p) {
        u32 o, n, ti, tj;
        Slot s = tile_slot(i, q.o / q.groups, A * A, q, &o, &n, &ti, &tj);
        const float* dp = dy + (o * q.nb + n) * q.ho * q.wo;
        float d[M * M], mm[A * A];
#pragma unroll
        for (int k = 0; k < M; ++k) {
            u32 r0 = ti * M + k;
#pragma unroll
            for (int l = 0; l < M; ++l) {
                u32 c0 = tj * M + l;
                d[k * M + l] = (r0 < q.ho && c0 < q.wo) ? dp[r0 * q.wo + c0] : 0.0f;
            }
        }
        // dM (A x A) = A (A x M) d (M x M) A^T: A[i][k] = at[k * A + i]
        two_sided<A, M, M, A>(t.at, 1, A, d, t.at, 1, A, mm);
        store<A * A>(dm, s, mm);
    }
}

// dd = B dV B^T: dv [g][xi][c'][p] -> dd [c][n][ti a + i][tj a + j], one thread per (c, p).
template <int M, int R>
__device__ __forceinline__ void input_bwd_tiles(const float* dv, float* dd, WinoGeom q,
                                                const WinoMats& t) {
    constexpr int A = M + R - 1;
    GRID_STRIDE(i, q.c * q.p) {
        u32 c, n, ti, tj;
        Slot s = tile_slot(i, q.c / q.groups, A * A, q, &c, &n, &ti, &tj);
        float d[A * A], e[A * A];
        load<A * A>(dv, s, d);
        // dd (A x A) = B (A x A) dV B^T: B[i][k] = bt[k * A + i]
        two_sided<A, A, A, A>(t.bt, 1, A, d, t.bt, 1, A, e);
        u32 row = q.tw * A;  // a row of the expanded plane
        float* out = dd + ((c * q.nb + n) * q.th * A + ti * A) * row + tj * A;
#pragma unroll
        for (int k = 0; k < A; ++k) {
#pragma unroll
            for (int l = 0; l < A; ++l) out[k * row + l] = e[k * A + l];
        }
    }
}

// The tiles t (< count) whose a-wide window starting at t m - pad covers coordinate `at`.
__device__ __forceinline__ void covering(int at, int m, int a, int pad, int count, int* lo,
                                         int* hi) {
    int s = at + pad;                        // position in the padded plane
    int l = s - a + 1;                       // first window start that reaches s
    *lo = l <= 0 ? 0 : (l + m - 1) / m;
    int h = s / m;                           // last window start at or before s
    *hi = h < count - 1 ? h : count - 1;
}

// dx = the patches' gradients added per input pixel: dd -> dx (nb, C, H, W) (overwritten),
// one thread per input element, tiles in increasing (ti, tj).
template <int M, int R>
__device__ __forceinline__ void input_bwd_gather(const float* dd, float* dx, WinoGeom q) {
    constexpr int A = M + R - 1;
    u32 hw = q.h * q.w;
    GRID_STRIDE(i, q.nb * q.c * hw) {
        u32 nc = i / hw, pix = i - nc * hw;
        u32 n = nc / q.c, c = nc - n * q.c;
        int yy = (int)(pix / q.w), xx = (int)(pix - (pix / q.w) * q.w);
        int ilo, ihi, jlo, jhi;
        covering(yy, M, A, (int)q.pad, (int)q.th, &ilo, &ihi);
        covering(xx, M, A, (int)q.pad, (int)q.tw, &jlo, &jhi);
        u32 row = q.tw * A;
        const float* base = dd + (c * q.nb + n) * q.th * A * row;
        float s = 0.0f;
        for (int ti = ilo; ti <= ihi; ++ti) {
            int k = yy + (int)q.pad - ti * M;
            for (int tj = jlo; tj <= jhi; ++tj) {
                int l = xx + (int)q.pad - tj * M;
                s += base[(u32)(ti * A + k) * row + (u32)(tj * A + l)];
            }
        }
        dx[i] = s;
    }
}

extern "C" __global__ void wino_filter(const float* w, float* u, WinoGeom q, WinoMats t) {
    WINO_DISPATCH(filter_fwd, q, w, u, q, t);
}

extern "C" __global__ void wino_filter_grad(const float* du, float* dw, WinoGeom q, WinoMats t) {
    WINO_DISPATCH(filter_bwd, q, du, dw, q, t);
}

extern "C" __global__ void wino_input(const float* x, float* v, WinoGeom q, WinoMats t) {
    WINO_DISPATCH(input_fwd, q, x, v, q, t);
}

extern "C" __global__ void wino_output(const float* mm, const float* bias, float* y, WinoGeom q,
                                       WinoMats t, int relu) {
    WINO_DISPATCH(output_fwd, q, mm, bias, y, q, t, relu);
}

extern "C" __global__ void wino_output_grad(const float* dy, float* dm, WinoGeom q, WinoMats t) {
    WINO_DISPATCH(output_bwd, q, dy, dm, q, t);
}

extern "C" __global__ void wino_input_grad_tiles(const float* dv, float* dd, WinoGeom q,
                                                 WinoMats t) {
    WINO_DISPATCH(input_bwd_tiles, q, dv, dd, q, t);
}

extern "C" __global__ void wino_input_grad(const float* dd, float* dx, WinoGeom q) {
    WINO_DISPATCH(input_bwd_gather, q, dd, dx, q);
}
