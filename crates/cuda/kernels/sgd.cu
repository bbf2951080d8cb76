// The paper's SGD over the whole flat parameter buffer in one launch:
//   v = momentum * v - weight_decay * lr * w - lr * g;  w += v
// (decay applies to every parameter, weights and biases alike).

typedef unsigned long long u64;

struct SgdParams {
    u64 n;
    float lr, momentum, weight_decay;
    float pad_;
};

// w, g, v: (n), the flat buffers laid out as the Plan's parameter entries.
extern "C" __global__ void sgd_step(float* w, const float* g, float* v, SgdParams p) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < p.n;
         i += (u64)gridDim.x * blockDim.x) {
        float wi = w[i];
        float vi = p.momentum * v[i] - p.weight_decay * p.lr * wi - p.lr * g[i];
        v[i] = vi;
        w[i] = wi + vi;
    }
}
