// Runs the CUDA C kernels of kernels/*.cu on the CPU, for tests on machines without a GPU
// (src/emu.rs compiles a kernel file with this header in front and calls the kernels through
// `emu_<name>` entry points). Blocks run one after another. Within a block, threads run one
// after another too, unless the launch is cooperative (the file uses __syncthreads): then each
// thread of the block is an OS thread and __syncthreads is a barrier. __shared__ arrays are
// function statics: one copy, shared by the threads of the block that is running.
// What this does not model: warps (no shuffles are used), memory ordering beyond barriers,
// device math library rounding (powf, expf may differ from the GPU's by an ulp or two) and FMA
// contraction (NVRTC contracts a * b + c; this build does not).
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

struct uint3 {
    unsigned int x, y, z;
};
typedef uint3 dim3;

namespace emu {
inline uint3 block_idx, grid_dim, block_dim;
inline thread_local uint3 thread_idx;
inline std::barrier<>* bar = nullptr;
}  // namespace emu

#define blockIdx (emu::block_idx)
#define gridDim (emu::grid_dim)
#define blockDim (emu::block_dim)
#define threadIdx (emu::thread_idx)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict

inline void __syncthreads() {
    if (emu::bar == nullptr) {
        std::fprintf(stderr, "emu: __syncthreads in a launch that is not cooperative\n");
        std::abort();
    }
    emu::bar->arrive_and_wait();
}
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
// Rounded single operations that NVRTC never contracts into an FMA (the CPU build does not
// contract at all: it is compiled with -ffp-contract=off).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline int __float_as_int(float f) { return (int)__float_as_uint(f); }
inline float __int_as_float(int i) { return __uint_as_float((unsigned int)i); }
using std::max;
using std::min;

namespace emu {
// Calls kernel `k` with the arguments `args` points to (cuLaunchKernel's convention: args[i]
// is the address of the i-th argument's value) for every thread of the grid.
template <typename... A, std::size_t... I>
void run_impl(void (*k)(A...), const unsigned int* g, const unsigned int* b, void** args,
              int cooperative, std::index_sequence<I...>) {
    std::tuple<std::decay_t<A>...> vals(*static_cast<std::decay_t<A>*>(args[I])...);
    grid_dim = uint3{g[0], g[1], g[2]};
    block_dim = uint3{b[0], b[1], b[2]};
    unsigned int nthreads = b[0] * b[1] * b[2];
    for (unsigned int bz = 0; bz < g[2]; ++bz)
        for (unsigned int by = 0; by < g[1]; ++by)
            for (unsigned int bx = 0; bx < g[0]; ++bx) {
                block_idx = uint3{bx, by, bz};
                auto thread_at = [&](unsigned int t) {
                    thread_idx = uint3{t % b[0], (t / b[0]) % b[1], t / (b[0] * b[1])};
                    std::apply(k, vals);
                };
                if (!cooperative) {
                    for (unsigned int t = 0; t < nthreads; ++t) thread_at(t);
                    continue;
                }
                std::barrier<> barrier((std::ptrdiff_t)nthreads);
                bar = &barrier;
                std::vector<std::thread> threads;
                threads.reserve(nthreads);
                for (unsigned int t = 0; t < nthreads; ++t) threads.emplace_back(thread_at, t);
                for (auto& th : threads) th.join();
                bar = nullptr;
            }
}

template <typename... A>
void run(void (*k)(A...), const unsigned int* g, const unsigned int* b, void** args,
         int cooperative) {
    run_impl(k, g, b, args, cooperative, std::index_sequence_for<A...>{});
}

// Writes the byte size of each of k's parameters (at most `cap`) and returns their count.
template <typename... A>
unsigned int sizes(void (*)(A...), unsigned int* out, unsigned int cap) {
    unsigned int s[] = {(unsigned int)sizeof(std::decay_t<A>)..., 0u};
    unsigned int n = (unsigned int)sizeof...(A);
    for (unsigned int i = 0; i < n && i < cap; ++i) out[i] = s[i];
    return n;
}
}  // namespace emu

#define EMU_KERNEL(name)                                                                   \
    extern "C" void emu_##name(const unsigned int* g, const unsigned int* b, void** args, \
                               int cooperative) {                                         \
        emu::run(name, g, b, args, cooperative);                                           \
    }                                                                                      \
    extern "C" unsigned int emu_sizes_##name(unsigned int* out, unsigned int cap) {        \
        return emu::sizes(name, out, cap);                                                 \
    }
