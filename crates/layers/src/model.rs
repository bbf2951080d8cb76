//! An AlexNet-topology network on the CPU, built from a [`Plan`] (a preset or a fixture's layer
//! list). Parameters, gradients and momentum are three flat buffers sharing the plan's layout
//! (named views `conv1.weight`, ...): SGD is one pass, a checkpoint one write.
//!
//! Generic over the element type: f32 for training, f64 for finite-difference gradient checks.

use crate::conv::{conv2d_backward_opt, conv2d_forward_act, ConvShape};
use crate::dropout::{dropout_backward, dropout_forward};
use crate::error::{check_len, LayerError};
use crate::linear::{linear_backward, linear_forward};
use crate::loss::softmax_cross_entropy;
use crate::lrn::{lrn_backward_relu, lrn_forward, lrn_forward_values, LrnParams};
use crate::pool::{maxpool_backward_relu, maxpool_forward, maxpool_forward_values, PoolShape};
use crate::relu::{relu_backward, relu_forward};
use alexnet_tensor::gemm::Float;
use alexnet_tensor::rng::Rng;
use alexnet_tensor::spec::{Op, Plan};

/// Training (dropout active, with this seed for the step) or evaluation (dropout = identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Training: dropout with this step's seed; a ReLU after a convolution is applied as the
    /// convolution writes its output (see [`Model::activation`]).
    Train { seed: u64 },
    /// Evaluation that keeps every layer's output (for comparisons layer by layer).
    Eval,
    /// Evaluation that keeps nothing for a backward pass (no max-pool argmax, no LRN scale;
    /// a ReLU after a convolution is applied as the convolution writes its output, so the
    /// convolution's own activation is left empty): the same logits as `Eval`, bit for bit, at
    /// less cost; a `backward` after it fails (for a network with max-pool or LRN) instead of
    /// using stale state.
    Infer,
}

/// Per-layer state saved by the forward pass for the backward pass.
#[derive(Debug, Default, Clone)]
enum Aux<T> {
    #[default]
    None,
    /// LRN: s = k + alpha * sum of squares, per element.
    Scale(Vec<T>),
    /// Max-pool: argmax index within the plane, per output.
    Arg(Vec<u32>),
    /// Dropout: the scaled keep-mask (0 or 1/(1-p)); empty at evaluation.
    Mask(Vec<T>),
}

/// The network with its flat parameter, gradient and momentum buffers.
#[derive(Debug, Clone)]
pub struct Model<T: Float> {
    pub plan: Plan,
    /// All parameters, laid out as `plan.params`.
    pub params: Vec<T>,
    /// Gradients of the last backward pass, same layout.
    pub grads: Vec<T>,
    /// SGD velocity (the paper's v, which includes the learning rate), same layout.
    pub momentum: Vec<T>,
    n: usize,
    input: Vec<T>,
    acts: Vec<Vec<T>>,
    aux: Vec<Aux<T>>,
    /// The backward pass's two gradient buffers (layer output / input), kept between steps so
    /// that a step does not page in fresh memory for every layer's gradient.
    grad_bufs: (Vec<T>, Vec<T>),
    /// The convolutions' im2col / GEMM scratch, kept between layers and steps.
    conv_scratch: Vec<T>,
    train: bool,
    /// Seconds spent per layer (forward, backward) since profiling was switched on.
    profile: Option<Vec<(f64, f64)>>,
}

fn conv_shape(op: &Op, n: usize, in_shape: &[usize]) -> ConvShape {
    match (op, in_shape) {
        (
            Op::Conv {
                cin,
                cout,
                k,
                stride,
                pad,
                groups,
            },
            [_, h, w],
        ) => ConvShape {
            n,
            c: *cin,
            h: *h,
            w: *w,
            o: *cout,
            k: *k,
            stride: *stride,
            pad: *pad,
            groups: *groups,
        },
        // Invariant: Plan::new only creates Op::Conv with a (C,H,W) input shape.
        _ => unreachable!("conv layer without a (C,H,W) input"),
    }
}

impl<T: Float> Model<T> {
    /// A model with all parameters zero (call [`Model::init`] or load a checkpoint).
    pub fn new(plan: Plan) -> Self {
        let total = plan.total;
        let layers = plan.layers.len();
        Model {
            plan,
            params: vec![T::zero(); total],
            grads: vec![T::zero(); total],
            momentum: vec![T::zero(); total],
            n: 0,
            input: Vec::new(),
            acts: vec![Vec::new(); layers],
            aux: vec![Aux::None; layers],
            grad_bufs: (Vec::new(), Vec::new()),
            conv_scratch: Vec::new(),
            train: false,
            profile: None,
        }
    }

    /// Paper-style initialisation from the plan: weights ~ N(0, std^2), biases constant.
    /// Each parameter draws from its own stream of `seed`, so adding a layer does not change
    /// the others' draws.
    pub fn init(&mut self, seed: u64) {
        for (i, e) in self.plan.params.iter().enumerate() {
            let view = &mut self.params[e.offset..e.offset + e.len];
            if e.init_std > 0.0 {
                let mut rng = Rng::derive(seed, &[i as u64]);
                let std = T::of(e.init_std as f64);
                view.iter_mut()
                    .for_each(|v| *v = T::of(rng.normal() as f64) * std);
            } else {
                view.iter_mut()
                    .for_each(|v| *v = T::of(e.init_constant as f64));
            }
        }
        self.momentum.iter_mut().for_each(|v| *v = T::zero());
    }

    /// Starts (or restarts) per-layer timing; read it with [`Model::profile`].
    pub fn enable_profile(&mut self) {
        self.profile = Some(vec![(0.0, 0.0); self.plan.layers.len()]);
    }

    /// Per-layer (name, forward seconds, backward seconds) accumulated since
    /// [`Model::enable_profile`].
    pub fn profile(&self) -> Option<Vec<(String, f64, f64)>> {
        let p = self.profile.as_ref()?;
        Some(
            self.plan
                .layers
                .iter()
                .zip(p)
                .map(|(l, &(f, b))| (l.name.clone(), f, b))
                .collect(),
        )
    }

    /// The parameter view `name` (e.g. "conv1.weight").
    pub fn param(&self, name: &str) -> Option<&[T]> {
        self.plan
            .param(name)
            .map(|e| &self.params[e.offset..e.offset + e.len])
    }

    /// Mutable parameter view.
    pub fn param_mut(&mut self, name: &str) -> Option<&mut [T]> {
        let e = self.plan.param(name)?.clone();
        Some(&mut self.params[e.offset..e.offset + e.len])
    }

    /// The gradient view `name`.
    pub fn grad(&self, name: &str) -> Option<&[T]> {
        self.plan
            .param(name)
            .map(|e| &self.grads[e.offset..e.offset + e.len])
    }

    /// Output of the named layer from the last forward pass: (N, per-sample shape). Empty for
    /// a convolution followed by ReLU after a `Train` or `Infer` forward (the two are fused;
    /// the ReLU's activation holds the result); every layer's is kept by `Eval`.
    pub fn activation(&self, name: &str) -> Option<&[T]> {
        let i = self.plan.layer_index(name)?;
        Some(&self.acts[i])
    }

    /// The argmax of the named max-pool layer from the last `Train` or `Eval` forward (index
    /// within the plane per output, the first maximum on ties); `None` for other layers or after
    /// an `Infer` forward.
    pub fn pool_argmax(&self, name: &str) -> Option<&[u32]> {
        let i = self.plan.layer_index(name)?;
        match &self.aux[i] {
            Aux::Arg(a) => Some(a),
            _ => None,
        }
    }

    /// Replaces the argmax of the named max-pool layer before [`Model::loss_backward`], so the
    /// backward pass routes gradients through another device's max-pool decisions (used to
    /// compare a GPU's gradients where a near-tie in a pool window was decided differently).
    pub fn set_pool_argmax(&mut self, name: &str, arg: &[u32]) -> Result<(), LayerError> {
        let not_pool = || LayerError::Param {
            op: "set_pool_argmax",
            detail: format!("{name:?} is not a max-pool layer of the last forward"),
        };
        let i = self.plan.layer_index(name).ok_or_else(not_pool)?;
        let plane: usize = self.plan.layers[i].in_shape.iter().skip(1).product();
        let Aux::Arg(cur) = &mut self.aux[i] else {
            return Err(not_pool());
        };
        check_len("set_pool_argmax", "arg", arg.len(), cur.len(), || {
            name.to_string()
        })?;
        if let Some(bad) = arg.iter().find(|&&a| a as usize >= plane) {
            return Err(LayerError::Param {
                op: "set_pool_argmax",
                detail: format!("{name}: index {bad} outside the {plane}-element input plane"),
            });
        }
        cur.copy_from_slice(arg);
        Ok(())
    }

    /// Number of classes (logits per sample).
    pub fn classes(&self) -> usize {
        self.plan.num_classes
    }

    /// Forward pass. x: (N, C, H, W) -> logits (N, classes).
    pub fn forward(&mut self, x: &[T], n: usize, mode: Mode) -> Result<&[T], LayerError> {
        let [c, h, w] = self.plan.input;
        check_len("model.forward", "x", x.len(), n * c * h * w, || {
            format!("({n},{c},{h},{w})")
        })?;
        self.n = n;
        self.train = matches!(mode, Mode::Train { .. });
        self.input.clear();
        self.input.extend_from_slice(x);
        // Training and inference fuse each ReLU into the convolution before it: no backward
        // pass reads a convolution's output (its backward needs its input, the ReLU's its
        // own output), so the conv's activation is left empty. `Eval` keeps every layer's
        // output, for comparisons layer by layer (parity fixtures' `act.*`).
        let mut fused_relu = false;
        for li in 0..self.plan.layers.len() {
            if std::mem::take(&mut fused_relu) {
                continue;
            }
            let t0 = self.profile.is_some().then(std::time::Instant::now);
            let (before, rest) = self.acts.split_at_mut(li);
            let xin: &[T] = if li == 0 {
                &self.input
            } else {
                &before[li - 1]
            };
            let out = &mut rest[0];
            let layer = &self.plan.layers[li];
            let out_len = n * layer.out_shape.iter().product::<usize>();
            let next_is_relu =
                matches!(self.plan.layers.get(li + 1).map(|l| &l.op), Some(Op::Relu));
            fused_relu = matches!(layer.op, Op::Conv { .. }) && mode != Mode::Eval && next_is_relu;
            // A fused conv's own output stays empty (not resized, which would zero-fill it
            // every step only to clear it again).
            if fused_relu {
                out.clear();
            } else {
                out.resize(out_len, T::zero());
            }
            let aux = &mut self.aux[li];
            match &layer.op {
                Op::Conv { .. } => {
                    let s = conv_shape(&layer.op, n, &layer.in_shape);
                    // Invariant: the plan gives every conv layer a (weight, bias) pair.
                    let (wi, bi) = layer.params.expect("conv has params");
                    let (we, be) = (&self.plan.params[wi], &self.plan.params[bi]);
                    let y = if fused_relu {
                        let relu_out = &mut rest[1];
                        relu_out.resize(out_len, T::zero());
                        relu_out
                    } else {
                        out
                    };
                    conv2d_forward_act(
                        xin,
                        &self.params[we.offset..we.offset + we.len],
                        &self.params[be.offset..be.offset + be.len],
                        y,
                        &s,
                        fused_relu,
                        &mut self.conv_scratch,
                    )?;
                }
                Op::Relu => relu_forward(xin, out)?,
                Op::Lrn {
                    size,
                    alpha,
                    beta,
                    k,
                } => {
                    let p = LrnParams {
                        size: *size,
                        alpha: *alpha as f64,
                        beta: *beta as f64,
                        k: *k as f64,
                    };
                    let (ch, hw) = (layer.in_shape[0], layer.in_shape[1] * layer.in_shape[2]);
                    if mode == Mode::Infer {
                        lrn_forward_values(xin, out, n, ch, hw, &p)?;
                        *aux = Aux::None;
                    } else {
                        let mut scale = match std::mem::take(aux) {
                            Aux::Scale(v) => v,
                            _ => Vec::new(),
                        };
                        scale.resize(out_len, T::zero());
                        lrn_forward(xin, out, &mut scale, n, ch, hw, &p)?;
                        *aux = Aux::Scale(scale);
                    }
                }
                Op::MaxPool { k, stride } => {
                    let s = PoolShape {
                        planes: n * layer.in_shape[0],
                        h: layer.in_shape[1],
                        w: layer.in_shape[2],
                        k: *k,
                        stride: *stride,
                    };
                    if mode == Mode::Infer {
                        maxpool_forward_values(xin, out, &s)?;
                        *aux = Aux::None;
                    } else {
                        let mut arg = match std::mem::take(aux) {
                            Aux::Arg(v) => v,
                            _ => Vec::new(),
                        };
                        arg.resize(out_len, 0);
                        maxpool_forward(xin, out, &mut arg, &s)?;
                        *aux = Aux::Arg(arg);
                    }
                }
                Op::Dropout { p } => match mode {
                    Mode::Train { seed } => {
                        let mut mask = match std::mem::take(aux) {
                            Aux::Mask(v) => v,
                            _ => Vec::new(),
                        };
                        mask.resize(out_len, T::zero());
                        // The same per-layer seed as the CUDA path, so both draw identical masks.
                        let layer_seed = alexnet_cuda::hash::layer_seed(seed, li);
                        dropout_forward(xin, out, &mut mask, *p as f64, layer_seed)?;
                        *aux = Aux::Mask(mask);
                    }
                    Mode::Eval | Mode::Infer => {
                        out.copy_from_slice(xin);
                        *aux = Aux::None;
                    }
                },
                Op::Flatten => out.copy_from_slice(xin),
                Op::Linear { fin, fout } => {
                    // Invariant: the plan gives every linear layer a (weight, bias) pair.
                    let (wi, bi) = layer.params.expect("linear has params");
                    let (we, be) = (&self.plan.params[wi], &self.plan.params[bi]);
                    linear_forward(
                        xin,
                        &self.params[we.offset..we.offset + we.len],
                        &self.params[be.offset..be.offset + be.len],
                        out,
                        n,
                        *fin,
                        *fout,
                    )?;
                }
            }
            if let (Some(t0), Some(p)) = (t0, self.profile.as_mut()) {
                p[li].0 += t0.elapsed().as_secs_f64();
            }
        }
        Ok(self.logits())
    }

    /// Logits of the last forward pass: (N, classes).
    pub fn logits(&self) -> &[T] {
        self.acts.last().map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// Mean softmax cross-entropy of the last forward pass's logits, followed by the backward
    /// pass (fills `grads`). Returns the loss.
    pub fn loss_backward(&mut self, labels: &[u32]) -> Result<T, LayerError> {
        let classes = self.classes();
        check_len("model.loss", "labels", labels.len(), self.n, || {
            format!("batch {}", self.n)
        })?;
        let mut dlogits = vec![T::zero(); self.n * classes];
        let loss = softmax_cross_entropy(self.logits(), labels, &mut dlogits, classes)?;
        self.backward(&dlogits, false)?;
        Ok(loss)
    }

    /// Backward pass from `dlogits` (N, classes): overwrites `grads`; returns dx when asked.
    pub fn backward(&mut self, dlogits: &[T], want_dx: bool) -> Result<Option<Vec<T>>, LayerError> {
        let n = self.n;
        check_len(
            "model.backward",
            "dlogits",
            dlogits.len(),
            n * self.classes(),
            || format!("({n},{})", self.classes()),
        )?;
        // Two buffers as long as the largest layer input, used as `g[..glen]` (the gradient of
        // the current layer's output) and `gin[..in_len]` (of its input), then swapped. Sized
        // once: resizing per layer would zero-fill whatever each layer's input has more than
        // its output, every step (every backward overwrites its dx).
        let max_len = self
            .plan
            .layers
            .iter()
            .map(|l| n * l.in_shape.iter().product::<usize>())
            .chain([dlogits.len()])
            .max()
            .unwrap_or(0);
        let (mut g, mut gin) = std::mem::take(&mut self.grad_bufs);
        for b in [&mut g, &mut gin] {
            if b.len() < max_len {
                b.resize(max_len, T::zero());
            }
        }
        g[..dlogits.len()].copy_from_slice(dlogits);
        let mut glen = dlogits.len();
        let mut relu_done = false;
        for li in (0..self.plan.layers.len()).rev() {
            if std::mem::take(&mut relu_done) {
                // This ReLU's backward was applied by the layer after it; g passes through.
                continue;
            }
            let t0 = self.profile.is_some().then(std::time::Instant::now);
            let layer = &self.plan.layers[li];
            let xin: &[T] = if li == 0 {
                &self.input
            } else {
                &self.acts[li - 1]
            };
            let in_len = n * layer.in_shape.iter().product::<usize>();
            let need_dx = li > 0 || want_dx;
            // A convolution, LRN or max-pool whose input is a ReLU's output applies that
            // ReLU's backward (dx = 0 where its input <= 0) as it writes dx, in cache.
            let after_relu = li > 0 && matches!(self.plan.layers[li - 1].op, Op::Relu);
            relu_done = after_relu
                && matches!(
                    layer.op,
                    Op::Conv { .. } | Op::Lrn { .. } | Op::MaxPool { .. }
                );
            let (gs, gi) = (&g[..glen], &mut gin[..in_len]);
            match &layer.op {
                Op::Conv { .. } => {
                    let s = conv_shape(&layer.op, n, &layer.in_shape);
                    // Invariant: the plan gives every conv layer a (weight, bias) pair.
                    let (wi, bi) = layer.params.expect("conv has params");
                    let (we, be) = (self.plan.params[wi].clone(), self.plan.params[bi].clone());
                    let (gw, gb) = split_two(&mut self.grads, &we, &be);
                    let dx = if need_dx { Some(&mut gi[..]) } else { None };
                    conv2d_backward_opt(
                        xin,
                        &self.params[we.offset..we.offset + we.len],
                        gs,
                        dx,
                        gw,
                        gb,
                        &s,
                        &mut self.conv_scratch,
                        relu_done,
                    )?;
                }
                Op::Relu => relu_backward(&self.acts[li], gs, gi)?,
                Op::Lrn {
                    size,
                    alpha,
                    beta,
                    k,
                } => {
                    let p = LrnParams {
                        size: *size,
                        alpha: *alpha as f64,
                        beta: *beta as f64,
                        k: *k as f64,
                    };
                    let (ch, hw) = (layer.in_shape[0], layer.in_shape[1] * layer.in_shape[2]);
                    let Aux::Scale(scale) = &self.aux[li] else {
                        return Err(stale(&layer.name));
                    };
                    lrn_backward_relu(xin, scale, gs, gi, [n, ch, hw], &p, relu_done)?;
                }
                Op::MaxPool { k, stride } => {
                    let s = PoolShape {
                        planes: n * layer.in_shape[0],
                        h: layer.in_shape[1],
                        w: layer.in_shape[2],
                        k: *k,
                        stride: *stride,
                    };
                    let Aux::Arg(arg) = &self.aux[li] else {
                        return Err(stale(&layer.name));
                    };
                    maxpool_backward_relu(gs, arg, gi, &s, relu_done.then_some(xin))?;
                }
                Op::Dropout { .. } => match &self.aux[li] {
                    Aux::Mask(mask) if self.train => dropout_backward(gs, mask, gi)?,
                    _ => gi.copy_from_slice(gs),
                },
                Op::Flatten => gi.copy_from_slice(gs),
                Op::Linear { fin, fout } => {
                    // Invariant: the plan gives every linear layer a (weight, bias) pair.
                    let (wi, bi) = layer.params.expect("linear has params");
                    let (we, be) = (self.plan.params[wi].clone(), self.plan.params[bi].clone());
                    let (gw, gb) = split_two(&mut self.grads, &we, &be);
                    let dx = if need_dx { Some(&mut gi[..]) } else { None };
                    linear_backward(
                        xin,
                        &self.params[we.offset..we.offset + we.len],
                        gs,
                        dx,
                        gw,
                        gb,
                        n,
                        *fin,
                        *fout,
                    )?;
                }
            }
            std::mem::swap(&mut g, &mut gin);
            glen = in_len;
            if let (Some(t0), Some(p)) = (t0, self.profile.as_mut()) {
                p[li].1 += t0.elapsed().as_secs_f64();
            }
        }
        // The input gradient is handed over (not copied); the next backward reallocates it.
        let dx = want_dx.then(|| {
            let mut dx = std::mem::take(&mut g);
            dx.truncate(glen);
            dx
        });
        self.grad_bufs = (g, gin);
        Ok(dx)
    }

    /// One SGD step with the paper's rule, in one pass over the whole flat buffer. Weight decay
    /// applies to every parameter, biases included (the rule as the paper writes it, and what
    /// the CUDA path's single-launch SGD does).
    pub fn sgd(&mut self, lr: f64, momentum: f64, weight_decay: f64) -> Result<(), LayerError> {
        crate::sgd::sgd_step(
            &mut self.params,
            &self.grads,
            &mut self.momentum,
            lr,
            momentum,
            weight_decay,
        )
    }
}

fn stale(name: &str) -> LayerError {
    LayerError::Param {
        op: "model.backward",
        detail: format!(
            "{name}: no saved forward state (backward needs a forward in Train or Eval mode)"
        ),
    }
}

/// Two disjoint mutable views (weight, bias) of the flat gradient buffer.
fn split_two<'a, T>(
    buf: &'a mut [T],
    w: &alexnet_tensor::spec::ParamEntry,
    b: &alexnet_tensor::spec::ParamEntry,
) -> (&'a mut [T], &'a mut [T]) {
    // The plan lays each bias right after its weight.
    debug_assert_eq!(w.offset + w.len, b.offset);
    let (left, right) = buf.split_at_mut(b.offset);
    (&mut left[w.offset..w.offset + w.len], &mut right[..b.len])
}
