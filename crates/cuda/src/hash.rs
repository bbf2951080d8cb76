//! CPU mirror of the dropout kernel's counter-based RNG (`mix_hash` in kernels/elementwise.cu):
//! the splitmix64 finaliser of (seed, element index), identical to alexnet-layers'
//! `hash_uniform`, so a GPU mask can be reproduced (and tested) on the CPU.

/// The 64-bit hash of (seed, index).
pub fn mix_hash(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1) with 53 bits: `(hash >> 11) * 2^-53`.
pub fn uniform(seed: u64, index: u64) -> f64 {
    (mix_hash(seed, index) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Whether the dropout kernel keeps element `index` for drop probability `p`.
pub fn keeps(seed: u64, index: u64, p: f64) -> bool {
    (mix_hash(seed, index) >> 11) >= crate::ops::elementwise::dropout_threshold(p)
}

/// The per-layer dropout seed used by [`crate::GpuNet`]: a splitmix64 step of the step seed
/// mixed with the layer index, so layers draw independent masks.
pub fn layer_seed(seed: u64, layer: usize) -> u64 {
    mix_hash(seed, 0xD1B5_4A32_D192_ED03 ^ layer as u64)
}
