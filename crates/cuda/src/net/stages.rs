//! Turns a [`Plan`] into the GPU stage list (with fusions) and the buffer sizes it needs.

use super::COL_BUDGET;
use crate::error::CudaError;
use crate::ops::conv::ConvShape;
use alexnet_tensor::spec::{Op, Plan};

/// (offset, len) of a parameter in the flat buffer.
pub(crate) type Span = (usize, usize);

/// One GPU stage. `inp`/`out` index the activation buffers (0 = network input).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Stage {
    /// Convolution (+ fused ReLU). `shape.n` is the batch capacity.
    Conv {
        names: Vec<String>,
        shape: ConvShape,
        relu: bool,
        w: Span,
        b: Span,
        inp: usize,
        out: usize,
    },
    /// Linear (+ fused ReLU).
    Linear {
        names: Vec<String>,
        fin: usize,
        fout: usize,
        relu: bool,
        w: Span,
        b: Span,
        inp: usize,
        out: usize,
    },
    /// Standalone ReLU over `len` elements per sample.
    Relu {
        names: Vec<String>,
        len: usize,
        inp: usize,
        out: usize,
    },
    /// Standalone LRN over (C, HW).
    Lrn {
        names: Vec<String>,
        c: usize,
        hw: usize,
        size: usize,
        alpha: f32,
        beta: f32,
        k: f32,
        inp: usize,
        out: usize,
    },
    /// Max-pool over (C, H, W).
    Pool {
        names: Vec<String>,
        c: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        inp: usize,
        out: usize,
        arg: usize,
    },
    /// Fused LRN + max-pool.
    #[allow(clippy::enum_variant_names)]
    LrnPool {
        names: Vec<String>,
        c: usize,
        h: usize,
        w: usize,
        size: usize,
        alpha: f32,
        beta: f32,
        k: f32,
        pk: usize,
        pstride: usize,
        inp: usize,
        out: usize,
        arg: usize,
    },
    /// Dropout over `len` elements per sample; `layer` seeds its mask.
    Dropout {
        names: Vec<String>,
        len: usize,
        p: f32,
        layer: usize,
        inp: usize,
        out: usize,
    },
}

impl Stage {
    pub(crate) fn out(&self) -> usize {
        match self {
            Stage::Conv { out, .. }
            | Stage::Linear { out, .. }
            | Stage::Relu { out, .. }
            | Stage::Lrn { out, .. }
            | Stage::Pool { out, .. }
            | Stage::LrnPool { out, .. }
            | Stage::Dropout { out, .. } => *out,
        }
    }
    pub(crate) fn inp(&self) -> usize {
        match self {
            Stage::Conv { inp, .. }
            | Stage::Linear { inp, .. }
            | Stage::Relu { inp, .. }
            | Stage::Lrn { inp, .. }
            | Stage::Pool { inp, .. }
            | Stage::LrnPool { inp, .. }
            | Stage::Dropout { inp, .. } => *inp,
        }
    }
    /// A short label for profiles: the plan layer names joined with '+'.
    pub(crate) fn label(&self) -> String {
        let kind = match self {
            Stage::LrnPool { .. } => "lrn+",
            _ => "",
        };
        format!("{kind}{}", self.names().join("+"))
    }

    /// Plan layer names whose output this stage's output buffer holds (for a fused LRN + pool
    /// only the pool).
    pub(crate) fn names(&self) -> &[String] {
        match self {
            Stage::Conv { names, .. }
            | Stage::Linear { names, .. }
            | Stage::Relu { names, .. }
            | Stage::Lrn { names, .. }
            | Stage::Pool { names, .. }
            | Stage::LrnPool { names, .. }
            | Stage::Dropout { names, .. } => names,
        }
    }
}

/// The stages and the sizes of their buffers (per sample, except the workspace capacities).
#[derive(Debug)]
pub(crate) struct Built {
    pub stages: Vec<Stage>,
    pub act_len: Vec<usize>,
    pub arg_len: Vec<usize>,
    pub col_cap: usize,
    pub tmp_cap: usize,
}

fn chw(s: &[usize], name: &str) -> Result<(usize, usize, usize), CudaError> {
    match s {
        [c, h, w] => Ok((*c, *h, *w)),
        _ => Err(CudaError::invalid(
            "GpuNet",
            format!("layer {name} needs a (C,H,W) input, got {s:?}"),
        )),
    }
}

/// Builds the stage list of `plan` for batches of `batch`.
pub(crate) fn build_stages(plan: &Plan, batch: usize) -> Result<Built, CudaError> {
    let mut stages = Vec::new();
    let mut act_len = vec![plan.input.iter().product::<usize>()];
    let mut arg_len = Vec::new();
    let (mut col_cap, mut tmp_cap) = (1usize, 1usize);
    let mut cur = 0usize;
    let layers = &plan.layers;
    let mut i = 0;
    let span = |idx: usize| -> Result<Span, CudaError> {
        let p = plan.params.get(idx).ok_or_else(|| {
            CudaError::invalid("GpuNet", format!("parameter index {idx} outside the plan"))
        })?;
        if p.offset + p.len > plan.total {
            return Err(CudaError::invalid(
                "GpuNet",
                format!("parameter {} outside the flat buffer", p.name),
            ));
        }
        Ok((p.offset, p.len))
    };
    while i < layers.len() {
        let l = &layers[i];
        let next_is = |f: &dyn Fn(&Op) -> bool| layers.get(i + 1).is_some_and(|n| f(&n.op));
        let per_out: usize = l.out_shape.iter().product();
        let mut names = vec![l.name.clone()];
        let out = act_len.len();
        match &l.op {
            Op::Flatten => {
                i += 1;
                // The flatten output is the same buffer; later lookups by name map to it.
                if let Some(last) = stages.last_mut() {
                    push_name(last, &l.name);
                }
                continue;
            }
            Op::Conv {
                cin,
                cout,
                k,
                stride,
                pad,
                groups,
            } => {
                let (c, h, w) = chw(&l.in_shape, &l.name)?;
                if c != *cin {
                    return Err(CudaError::invalid(
                        "GpuNet",
                        format!("layer {}: cin {cin} vs input {c}", l.name),
                    ));
                }
                let shape = ConvShape {
                    n: batch,
                    c,
                    h,
                    w,
                    o: *cout,
                    k: *k,
                    stride: *stride,
                    pad: *pad,
                    groups: *groups,
                };
                shape.validate()?;
                let hw = shape.ho() * shape.wo();
                let col1 = c * k * k * hw;
                col_cap = col_cap.max((col1 * batch).min(COL_BUDGET.max(col1)));
                let nb = shape.chunk(col_cap, usize::MAX);
                tmp_cap = tmp_cap.max(cout * hw * nb);
                let relu = next_is(&|o| matches!(o, Op::Relu));
                if relu {
                    names.push(layers[i + 1].name.clone());
                }
                let (wi, bi) = l.params.ok_or_else(|| {
                    CudaError::invalid("GpuNet", format!("conv {} has no parameters", l.name))
                })?;
                stages.push(Stage::Conv {
                    names,
                    shape,
                    relu,
                    w: span(wi)?,
                    b: span(bi)?,
                    inp: cur,
                    out,
                });
                i += if relu { 2 } else { 1 };
            }
            Op::Linear { fin, fout } => {
                let relu = next_is(&|o| matches!(o, Op::Relu));
                if relu {
                    names.push(layers[i + 1].name.clone());
                }
                let (wi, bi) = l.params.ok_or_else(|| {
                    CudaError::invalid("GpuNet", format!("linear {} has no parameters", l.name))
                })?;
                stages.push(Stage::Linear {
                    names,
                    fin: *fin,
                    fout: *fout,
                    relu,
                    w: span(wi)?,
                    b: span(bi)?,
                    inp: cur,
                    out,
                });
                i += if relu { 2 } else { 1 };
            }
            Op::Relu => {
                stages.push(Stage::Relu {
                    names,
                    len: per_out,
                    inp: cur,
                    out,
                });
                i += 1;
            }
            Op::Lrn {
                size,
                alpha,
                beta,
                k,
            } => {
                let (c, h, w) = chw(&l.in_shape, &l.name)?;
                let pool = layers.get(i + 1).and_then(|n| match n.op {
                    Op::MaxPool { k, stride } => Some((k, stride, n)),
                    _ => None,
                });
                if let Some((pk, pstride, pl)) = pool {
                    let arg = arg_len.len();
                    arg_len.push(pl.out_shape.iter().product());
                    act_len.push(pl.out_shape.iter().product());
                    let names = vec![pl.name.clone()];
                    stages.push(Stage::LrnPool {
                        names,
                        c,
                        h,
                        w,
                        size: *size,
                        alpha: *alpha,
                        beta: *beta,
                        k: *k,
                        pk,
                        pstride,
                        inp: cur,
                        out,
                        arg,
                    });
                    cur = out;
                    i += 2;
                    continue;
                }
                stages.push(Stage::Lrn {
                    names,
                    c,
                    hw: h * w,
                    size: *size,
                    alpha: *alpha,
                    beta: *beta,
                    k: *k,
                    inp: cur,
                    out,
                });
                i += 1;
            }
            Op::MaxPool { k, stride } => {
                let (c, h, w) = chw(&l.in_shape, &l.name)?;
                let arg = arg_len.len();
                arg_len.push(per_out);
                stages.push(Stage::Pool {
                    names,
                    c,
                    h,
                    w,
                    k: *k,
                    stride: *stride,
                    inp: cur,
                    out,
                    arg,
                });
                i += 1;
            }
            Op::Dropout { p } => {
                stages.push(Stage::Dropout {
                    names,
                    len: per_out,
                    p: *p,
                    layer: i,
                    inp: cur,
                    out,
                });
                i += 1;
            }
        }
        act_len.push(per_out_of(plan, &stages)?);
        cur = out;
    }
    if stages.is_empty() {
        return Err(CudaError::invalid(
            "GpuNet",
            "the plan has no layer with work",
        ));
    }
    Ok(Built {
        stages,
        act_len,
        arg_len,
        col_cap,
        tmp_cap,
    })
}

/// Per-sample output size of the last stage (from its last covered plan layer).
fn per_out_of(plan: &Plan, stages: &[Stage]) -> Result<usize, CudaError> {
    let s = stages
        .last()
        .ok_or_else(|| CudaError::invalid("GpuNet", "no stage"))?;
    let name = s
        .names()
        .last()
        .ok_or_else(|| CudaError::invalid("GpuNet", "unnamed stage"))?;
    let l = plan
        .layer(name)
        .ok_or_else(|| CudaError::invalid("GpuNet", format!("layer {name} not in plan")))?;
    Ok(l.out_shape.iter().product())
}

fn push_name(s: &mut Stage, name: &str) {
    match s {
        Stage::Conv { names, .. }
        | Stage::Linear { names, .. }
        | Stage::Relu { names, .. }
        | Stage::Lrn { names, .. }
        | Stage::Pool { names, .. }
        | Stage::LrnPool { names, .. }
        | Stage::Dropout { names, .. } => names.push(name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alexnet_tensor::fixture::Fixture;
    use alexnet_tensor::spec::{InitSpec, LayerSpec};

    #[test]
    fn model_fixture_stages_and_fusions() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/parity/model_alexnet_small.safetensors");
        let fx = Fixture::load(&path).unwrap();
        let layers: Vec<LayerSpec> = serde_json::from_value(fx.params["layers"].clone()).unwrap();
        let init = InitSpec {
            weight_std: 0.01,
            bias: 0.0,
        };
        let plan = Plan::new(&layers, [3, 224, 224], 10, &init).unwrap();
        let b = build_stages(&plan, 2).unwrap();
        let kinds: Vec<&str> = b
            .stages
            .iter()
            .map(|s| match s {
                Stage::Conv { relu: true, .. } => "conv+relu",
                Stage::Linear { relu: true, .. } => "linear+relu",
                Stage::Linear { .. } => "linear",
                Stage::LrnPool { .. } => "lrn+pool",
                Stage::Pool { .. } => "pool",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "conv+relu",
                "lrn+pool",
                "conv+relu",
                "lrn+pool",
                "conv+relu",
                "conv+relu",
                "conv+relu",
                "pool",
                "linear+relu",
                "linear+relu",
                "linear"
            ]
        );
        // Per-sample sizes: input, conv1 16x55x55, pool1 16x27x27, ..., fc8 10.
        assert_eq!(b.act_len[0], 3 * 224 * 224);
        assert_eq!(b.act_len[1], 16 * 55 * 55);
        assert_eq!(b.act_len[2], 16 * 27 * 27);
        assert_eq!(*b.act_len.last().unwrap(), 10);
        assert_eq!(b.act_len.len(), b.stages.len() + 1);
        // Names reach the stored buffers (flatten maps to pool5's buffer).
        assert!(b.stages[7].names().iter().any(|n| n == "pool5"));
        assert!(b.stages[1].names().iter().all(|n| n != "norm1"));
    }
}
