// Softmax cross-entropy, forward and backward in one kernel (mean over the batch; the row
// maximum is subtracted before exp).

typedef unsigned long long u64;

// One block per row b. logits: (B, C), labels: (B) -> dlogits: (B, C) = (softmax - onehot) * inv_b,
// row_loss: (B) = logsumexp(row) - row[label] (the host averages). blockDim.x is a power of two
// <= 1024.
extern "C" __global__ void softmax_ce(const float* logits, const unsigned int* labels,
                                      float* dlogits, float* row_loss, u64 classes, float inv_b) {
    __shared__ float buf[1024];
    u64 b = blockIdx.x;
    const float* row = logits + b * classes;
    float* drow = dlogits + b * classes;
    float m = -3.402823466e38f;
    for (u64 j = threadIdx.x; j < classes; j += blockDim.x) m = fmaxf(m, row[j]);
    buf[threadIdx.x] = m;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] = fmaxf(buf[threadIdx.x], buf[threadIdx.x + s]);
        __syncthreads();
    }
    m = buf[0];
    __syncthreads();
    float acc = 0.0f;
    for (u64 j = threadIdx.x; j < classes; j += blockDim.x) acc += expf(row[j] - m);
    buf[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    float sum = buf[0];
    unsigned int label = labels[b];
    float inv_sum = 1.0f / sum;
    for (u64 j = threadIdx.x; j < classes; j += blockDim.x) {
        float p = expf(row[j] - m) * inv_sum;
        drow[j] = (p - (j == label ? 1.0f : 0.0f)) * inv_b;
    }
    if (threadIdx.x == 0) row_loss[b] = logf(sum) + m - row[label];
}
