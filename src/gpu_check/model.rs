//! The whole-model comparison of `gpu-check`: the CPU reference of one preset and the CUDA
//! network against it (see the parent module's docs for the bounds).

use super::*;

/// Input batches like the loader's (mean-subtracted 0..255 pixels): N(0, 50^2).
pub(super) fn draw_batch(rng: &mut Rng, plan: &Plan, n: usize) -> (Vec<f32>, Vec<u32>) {
    let per: usize = plan.input.iter().product();
    let x = (0..n * per).map(|_| rng.normal() * 50.0).collect();
    let labels = (0..n)
        .map(|_| rng.below(plan.num_classes as u64) as u32)
        .collect();
    (x, labels)
}

/// a - b element-wise (a parameter update).
fn diff(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// Relative error of one scalar (relative L2 of a 1-vector).
fn rel1(a: f32, reference: f32) -> f64 {
    rel_l2(&[a], &[reference])
}

/// The CPU side of [`model_checks`] for one preset, computed once and compared against every
/// convolution implementation: the batch, eval logits, the training-mode ReLU outputs, loss
/// and gradients, and the 5-step SGD trajectory (its batches, losses, the parameters after
/// the first step and at the end).
pub(super) struct CpuReference {
    plan: Plan,
    params0: Vec<f32>,
    x: Vec<f32>,
    labels: Vec<u32>,
    logits: Vec<f32>,
    relu_names: Vec<String>,
    relu: Vec<Vec<f32>>,
    /// The max-pool layers and their argmax in the training-mode forward.
    pool_names: Vec<String>,
    pool_args: Vec<Vec<u32>>,
    loss: f32,
    grads: Vec<f32>,
    /// (input, labels, CPU loss) of each SGD step.
    steps: Vec<(Vec<f32>, Vec<u32>, f32)>,
    params_step1: Vec<f32>,
    params_final: Vec<f32>,
}

impl CpuReference {
    pub(super) fn new(case: &ModelCase) -> Result<Self> {
        let spec = load_preset(case.preset)?;
        let plan = spec.plan(case.classes)?;
        let n = case.batch;
        let mut cpu: Model<f32> = Model::new(plan.clone());
        cpu.init(INIT_SEED);
        let params0 = cpu.params.clone();
        let mut rng = Rng::new(0xC0DA_0001);
        let (x, labels) = draw_batch(&mut rng, &plan, n);

        // Eval logits, then a training-mode forward + backward.
        let logits = cpu.forward(&x, n, Mode::Eval)?.to_vec();
        cpu.forward(&x, n, Mode::Train { seed: DROPOUT_SEED })?;
        // The names of the layers whose op passes `pick`.
        let names = |pick: fn(&Op) -> bool| -> Vec<String> {
            plan.layers
                .iter()
                .filter(|l| pick(&l.op))
                .map(|l| l.name.clone())
                .collect()
        };
        let relu_names = names(|op| matches!(op, Op::Relu));
        let relu = relu_names
            .iter()
            .map(|name| {
                cpu.activation(name)
                    .map(<[f32]>::to_vec)
                    .unwrap_or_default()
            })
            .collect();
        let pool_names = names(|op| matches!(op, Op::MaxPool { .. }));
        let pool_args = pool_names
            .iter()
            .map(|name| {
                cpu.pool_argmax(name)
                    .map(<[u32]>::to_vec)
                    .unwrap_or_default()
            })
            .collect();
        let loss = cpu.loss_backward(&labels)?;
        let grads = cpu.grads.clone();

        // The SGD trajectory from the same start on fresh batches.
        cpu.params.copy_from_slice(&params0);
        cpu.momentum.iter_mut().for_each(|v| *v = 0.0);
        let (m, wd) = SGD_MOMENTUM_WD;
        let mut steps = Vec::new();
        let mut params_step1 = Vec::new();
        for step in 0..SGD_STEPS {
            let (xs, ls) = draw_batch(&mut rng, &plan, n);
            cpu.forward(
                &xs,
                n,
                Mode::Train {
                    seed: DROPOUT_SEED + 1 + step,
                },
            )?;
            let lc = cpu.loss_backward(&ls)?;
            cpu.sgd(case.lr as f64, m as f64, wd as f64)?;
            if step == 0 {
                params_step1 = cpu.params.clone();
            }
            steps.push((xs, ls, lc));
        }
        Ok(CpuReference {
            plan,
            params0,
            x,
            labels,
            logits,
            relu_names,
            relu,
            pool_names,
            pool_args,
            loss,
            grads,
            steps,
            params_step1,
            params_final: cpu.params.clone(),
        })
    }
}

impl CpuReference {
    /// The CPU gradients of the reference training step with the max-pool decisions `args`
    /// (one per layer of `pool_names`) in place of its own.
    fn grads_with_pool_decisions(&self, n: usize, args: &[Vec<u32>]) -> Result<Vec<f32>> {
        let mut cpu: Model<f32> = Model::new(self.plan.clone());
        cpu.params.copy_from_slice(&self.params0);
        cpu.forward(&self.x, n, Mode::Train { seed: DROPOUT_SEED })?;
        for (name, a) in self.pool_names.iter().zip(args) {
            cpu.set_pool_argmax(name, a)?;
        }
        cpu.loss_backward(&self.labels)?;
        Ok(cpu.grads.clone())
    }
}

/// The whole-model comparison of one preset against its CPU reference (see the module docs).
pub(super) fn model_checks(
    gpu: &Arc<Gpu>,
    case: &ModelCase,
    r: &CpuReference,
    reduced: bool,
    t: &mut Tally,
) -> Result<()> {
    let (plan, n) = (&r.plan, case.batch);
    let (x, labels, params0) = (&r.x, &r.labels, &r.params0);
    let (logits_ref, loss_ref, grads_ref) = (&r.logits, r.loss, &r.grads);
    let (relu_names, relu_ref) = (&r.relu_names, &r.relu);

    let mut net = GpuNet::new(gpu.clone(), plan, n, Precision::F32)?;
    let precisions: &[Precision] = if reduced {
        &[Precision::F32, Precision::Tf32, Precision::Bf16]
    } else {
        &[Precision::F32]
    };
    let conv_impl = gpu.conv_impl();
    for &p in precisions {
        // The reduced precisions run with the default convolutions (auto: bf16 runs conv1 on
        // cuDNN in TF32, the rest as im2col), as training runs them.
        gpu.set_conv_impl(if p == Precision::F32 {
            conv_impl
        } else {
            ConvImpl::Auto
        })?;
        net.set_precision(p);
        net.upload_params(params0)?;
        let (bound, grad_bound) = match p {
            Precision::F32 => (F32_BOUND, case.grad_bound),
            _ => (p.tolerance(), p.tolerance()),
        };
        let tag = format!("{} {}", case.preset, precision_name(p));
        let logits = net.forward(x, false, 0)?;
        t.check(
            &format!("{tag} logits (eval)"),
            rel_l2(&logits, logits_ref),
            bound,
        );
        if p == Precision::F32 {
            // The training-mode forward alone, to compare ReLU decisions (diagnostic only).
            net.forward(x, true, DROPOUT_SEED)?;
            let (mut differ, mut total) = (0usize, 0usize);
            for (name, r) in relu_names.iter().zip(relu_ref) {
                // Err: a ReLU whose output the network does not store separately.
                if let Ok(g) = net.download_activation(name) {
                    if g.len() == r.len() {
                        total += g.len();
                        differ += g
                            .iter()
                            .zip(r)
                            .filter(|(a, b)| (**a > 0.0) != (**b > 0.0))
                            .count();
                    }
                }
            }
            println!(
                "info {tag}: {differ} of {total} ReLU on/off decisions differ between CUDA and \
                 CPU (each legitimately perturbs the gradients below it)"
            );
        }
        let loss = net.forward_backward(x, labels, DROPOUT_SEED)?;
        t.check(
            &format!("{tag} loss (train, dropout seed shared): {loss:.6} vs CPU {loss_ref:.6}"),
            rel1(loss, loss_ref),
            bound,
        );
        let grads = net.download_grads()?;
        // In f32 the gradients are compared with the CPU's backward through the same max-pool
        // decisions: a window whose two largest inputs differ by less than the devices'
        // rounding can pick a different argmax on each, which moves that window's gradient
        // to another input (the forward values agree to rounding either way).
        let mut adjusted = None;
        if p == Precision::F32 {
            let gpu_args = r
                .pool_names
                .iter()
                .map(|name| net.download_pool_argmax(name))
                .collect::<Result<Vec<_>, _>>()?;
            // Per pool layer: the decisions that differ (a length mismatch counts as such).
            let differing: Vec<usize> = gpu_args
                .iter()
                .zip(&r.pool_args)
                .map(|(g, c)| {
                    g.iter().zip(c).filter(|(a, b)| a != b).count() + g.len().abs_diff(c.len())
                })
                .collect();
            let counts: Vec<String> = r
                .pool_names
                .iter()
                .zip(differing.iter().zip(&gpu_args))
                .map(|(name, (d, g))| format!("{name} {d} of {}", g.len()))
                .collect();
            println!(
                "info {tag}: max-pool decisions that differ between CUDA and CPU: {}",
                counts.join(", ")
            );
            if differing.iter().any(|&d| d > 0) {
                let worst = tensor_errors(plan, &grads, grads_ref)
                    .into_iter()
                    .fold(0.0, f64::max);
                println!(
                    "info {tag}: worst gradient rel L2 against the CPU's own decisions \
                     {worst:.2e}; compared below through the CUDA decisions"
                );
                adjusted = Some(r.grads_with_pool_decisions(n, &gpu_args)?);
            }
        }
        let errs = tensor_errors(plan, &grads, adjusted.as_deref().unwrap_or(grads_ref));
        if p == Precision::F32 {
            for (pe, &r) in plan.params.iter().zip(&errs) {
                t.check(&format!("{tag} grad.{}", pe.name), r, grad_bound);
            }
        } else {
            let sens = rounding_sensitivity(plan, params0, x, n, labels, grads_ref, p)?;
            // Worst ratio of error to bound over the tensors, bound = max(tolerance, factor x
            // the measured sensitivity of that tensor).
            let mut worst: Option<(&str, f64, f64)> = None;
            for ((pe, &sv), &r) in plan.params.iter().zip(&sens).zip(&errs) {
                let b = grad_bound.max(SENSITIVITY_FACTOR * sv);
                println!(
                    "info {tag} grad.{}: rel L2 {r:.2e}, CPU rounding sensitivity {sv:.2e}, \
                     bound {b:.1e}",
                    pe.name
                );
                let ratio = r / b;
                if worst.is_none_or(|(_, wr, wb)| ratio > wr / wb || ratio.is_nan()) {
                    worst = Some((pe.name.as_str(), r, b));
                }
            }
            if let Some((name, r, b)) = worst {
                t.check(
                    &format!(
                        "{tag} gradients (worst of {} tensors against {SENSITIVITY_FACTOR} x its \
                         rounding sensitivity: grad.{name})",
                        plan.params.len()
                    ),
                    r,
                    b,
                );
            }
        }
    }

    // 5 SGD steps from the same start on fresh batches, f32.
    gpu.set_conv_impl(conv_impl)?;
    net.set_precision(Precision::F32);
    net.upload_params(params0)?;
    net.reset_momentum()?;
    let lr = case.lr;
    let (m, wd) = SGD_MOMENTUM_WD;
    let tag = format!("{} f32", case.preset);
    for (step, (xs, ls, lc)) in r.steps.iter().enumerate() {
        let seed = DROPOUT_SEED + 1 + step as u64;
        let lg = net.forward_backward(xs, ls, seed)?;
        net.sgd_step(lr, m, wd)?;
        let bound = if step == 0 {
            F32_BOUND
        } else {
            case.traj_bound.0
        };
        t.check(
            &format!("{tag} SGD step {}: loss {lg:.6} vs CPU {lc:.6}", step + 1),
            rel1(lg, *lc),
            bound,
        );
        if step == 0 {
            // The first update from the shared start (no trajectory divergence yet).
            let pg = net.download_params()?;
            t.check(
                &format!("{tag} update of SGD step 1 (final - initial)"),
                rel_l2(&diff(&pg, params0), &diff(&r.params_step1, params0)),
                case.grad_bound,
            );
        }
    }
    let pg = net.download_params()?;
    t.check(
        &format!("{tag} parameters after {SGD_STEPS} SGD steps"),
        rel_l2(&pg, &r.params_final),
        1e-3,
    );
    t.check(
        &format!("{tag} total update (final - initial) after {SGD_STEPS} SGD steps"),
        rel_l2(&diff(&pg, params0), &diff(&r.params_final, params0)),
        case.traj_bound.1,
    );
    Ok(())
}

/// `x` rounded to the nearest value with `bits` explicit mantissa bits (ties to even), the
/// storage rounding of TF32 (10 bits) and bf16 (7 bits). NaN and infinities pass through.
fn round_mantissa(x: f32, bits: u32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    let drop = 23 - bits;
    let b = x.to_bits();
    let half = 1u32 << (drop - 1);
    let lsb = (b >> drop) & 1;
    f32::from_bits((b + half - 1 + lsb) & !((1u32 << drop) - 1))
}

/// The sensitivity of every parameter gradient to rounding at precision `p`, measured on the
/// CPU: the relative L2 change of each gradient tensor when the input and all parameters are
/// rounded to `p`'s mantissa (TF32 10 bits, bf16 7) before the same training-mode forward and
/// backward. It includes what such rounding does through ReLU on/off and max-pool argmax flips,
/// which move whole gradient terms and dominate the lower layers' weight gradients; the GPU's
/// reduced-precision GEMMs round every operand of every layer (activations and output
/// gradients too), so its gradients are checked against a small multiple of this
/// ([`SENSITIVITY_FACTOR`]) rather than against a fixed bound.
fn rounding_sensitivity(
    plan: &Plan,
    params0: &[f32],
    x: &[f32],
    n: usize,
    labels: &[u32],
    grads_ref: &[f32],
    p: Precision,
) -> Result<Vec<f64>> {
    let bits = match p {
        Precision::F32 => return Ok(vec![0.0; plan.params.len()]),
        Precision::Tf32 => 10,
        Precision::Bf16 => 7,
    };
    let mut m: Model<f32> = Model::new(plan.clone());
    for (d, &v) in m.params.iter_mut().zip(params0) {
        *d = round_mantissa(v, bits);
    }
    let xr: Vec<f32> = x.iter().map(|&v| round_mantissa(v, bits)).collect();
    m.forward(&xr, n, Mode::Train { seed: DROPOUT_SEED })?;
    m.loss_backward(labels)?;
    Ok(tensor_errors(plan, &m.grads, grads_ref))
}

/// Relative L2 error of every parameter tensor of `got` against `reference` (flat, plan layout).
fn tensor_errors(plan: &Plan, got: &[f32], reference: &[f32]) -> Vec<f64> {
    plan.params
        .iter()
        .map(|pe| {
            let r = pe.offset..pe.offset + pe.len;
            rel_l2(&got[r.clone()], &reference[r])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mantissa_rounding_matches_hand_values() {
        // 1 + 2^-8 lies halfway between two bf16 neighbours (1 and 1 + 2^-7): ties to even -> 1.
        assert_eq!(round_mantissa(1.0 + 1.0 / 256.0, 7), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): -> 1 + 2^-6.
        assert_eq!(round_mantissa(1.0 + 3.0 / 256.0, 7), 1.0 + 1.0 / 64.0);
        assert_eq!(round_mantissa(-1.0 - 1.0 / 512.0, 7), -1.0);
        // TF32 keeps 10 bits: 1 + 2^-10 is exact, 1 + 2^-12 rounds down.
        assert_eq!(round_mantissa(1.0 + 1.0 / 1024.0, 10), 1.0 + 1.0 / 1024.0);
        assert_eq!(round_mantissa(1.0 + 1.0 / 4096.0, 10), 1.0);
        assert_eq!(round_mantissa(3.0, 7), 3.0);
        assert!(round_mantissa(f32::NAN, 7).is_nan());
        // Relative rounding error of bf16 is at most 2^-8.
        let mut rng = Rng::new(9);
        for _ in 0..1000 {
            let v = rng.normal() * 100.0;
            assert!(((round_mantissa(v, 7) - v) / v).abs() <= 1.0 / 256.0 + 1e-7);
        }
    }
    #[test]
    fn small_case_sgd_steps_stay_in_the_training_regime() {
        // The 5-step comparison is only meaningful while the loss does not diverge (a diverging
        // trajectory amplifies rounding differences without bound): at the case's lr the CPU
        // losses stay within a few times the initial ~ln(10).
        let case = &MODEL_CASES[0];
        let plan = load_preset(case.preset)
            .unwrap()
            .plan(case.classes)
            .unwrap();
        let mut cpu: Model<f32> = Model::new(plan.clone());
        cpu.init(INIT_SEED);
        let mut rng = Rng::new(0xC0DA_0001);
        let _ = draw_batch(&mut rng, &plan, case.batch);
        let (m, wd) = SGD_MOMENTUM_WD;
        let mut losses = vec![];
        for step in 0..SGD_STEPS {
            let (xs, ls) = draw_batch(&mut rng, &plan, case.batch);
            cpu.forward(
                &xs,
                case.batch,
                Mode::Train {
                    seed: DROPOUT_SEED + 1 + step,
                },
            )
            .unwrap();
            losses.push(cpu.loss_backward(&ls).unwrap());
            cpu.sgd(case.lr as f64, m as f64, wd as f64).unwrap();
        }
        println!("small-case SGD losses: {losses:?}");
        assert!(
            losses.iter().all(|&l| l.is_finite() && l < 4.0 * losses[0]),
            "{losses:?}"
        );
    }
}
