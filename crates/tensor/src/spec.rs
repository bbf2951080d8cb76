//! Network description shared by every device: the layer list of a preset (TOML) or of the
//! `model` parity fixture (JSON), the shape plan derived from it, and the flat parameter layout.
//!
//! All parameters live in one flat f32 buffer; [`ParamEntry`] gives each named view
//! (`conv1.weight`, `conv1.bias`, ..., `fc8.bias`) its offset and shape. Gradients and momentum
//! use the same layout, so SGD is one pass and a checkpoint one write.

use crate::TensorError;
use serde::{Deserialize, Serialize};
use std::path::Path;

fn one() -> usize {
    1
}

/// One layer of an AlexNet-topology network, as written in a preset or the `model` fixture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LayerSpec {
    /// Convolution (cross-correlation) with zero padding and groups.
    Conv2d {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        in_channels: Option<usize>,
        out_channels: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default = "one")]
        groups: usize,
        /// Std of the N(0, std^2) weight init; the preset's `[init] weight_std` when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight_std: Option<f32>,
        /// Constant bias init; the preset's `[init] bias` when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias_init: Option<f32>,
    },
    /// Rectified linear unit.
    Relu { name: String },
    /// Local response normalisation across channels; `alpha` multiplies the plain sum of squares.
    Lrn {
        name: String,
        size: usize,
        alpha: f32,
        beta: f32,
        k: f32,
    },
    /// Max-pooling without padding, floor mode.
    Maxpool {
        name: String,
        kernel: usize,
        stride: usize,
    },
    /// Dropout with drop probability `p` (inverted scaling at training time).
    Dropout { name: String, p: f32 },
    /// NCHW -> (N, C*H*W).
    Flatten {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        out_features: Option<usize>,
    },
    /// Fully connected `y = x W^T + b`; `out_features` absent means "the number of classes".
    Linear {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        in_features: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        out_features: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight_std: Option<f32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias_init: Option<f32>,
    },
    /// The loss (only accepted as the last entry; the model always ends with it).
    SoftmaxCrossEntropy { name: String },
}

impl LayerSpec {
    /// The layer's name.
    pub fn name(&self) -> &str {
        match self {
            LayerSpec::Conv2d { name, .. }
            | LayerSpec::Relu { name }
            | LayerSpec::Lrn { name, .. }
            | LayerSpec::Maxpool { name, .. }
            | LayerSpec::Dropout { name, .. }
            | LayerSpec::Flatten { name, .. }
            | LayerSpec::Linear { name, .. }
            | LayerSpec::SoftmaxCrossEntropy { name } => name,
        }
    }
}

/// Input description of a preset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Image channels (3).
    pub channels: usize,
    /// Side of the stored images (S: 256 for the paper).
    pub image_size: usize,
    /// Side of the training crops fed to the network (S': 224 for the paper).
    pub crop: usize,
}

/// Default initialisation of a preset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitSpec {
    /// Weights ~ N(0, weight_std^2) unless a layer overrides it.
    pub weight_std: f32,
    /// Bias constant unless a layer overrides it.
    #[serde(default)]
    pub bias: f32,
}

/// Default training hyper-parameters of a preset (all overridable on the command line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    /// "plateau" or "step:E1,E2,...".
    pub schedule: String,
    /// Ensemble members trained by default.
    #[serde(default = "one")]
    pub models: usize,
}

/// A whole preset (`data/*.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub input: InputSpec,
    pub init: InitSpec,
    pub train: TrainSpec,
    pub layers: Vec<LayerSpec>,
}

impl NetSpec {
    /// Parses a preset from TOML text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, TensorError> {
        toml::from_str(text).map_err(|e| TensorError::File {
            path: origin.to_string(),
            detail: format!("not a valid preset: {}", e.to_string().replace('\n', " ")),
        })
    }

    /// Reads a preset file.
    pub fn from_file(path: &Path) -> Result<Self, TensorError> {
        let text = std::fs::read_to_string(path).map_err(|e| TensorError::File {
            path: path.display().to_string(),
            detail: format!("cannot read preset: {e}"),
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Plans the network for `num_classes` outputs at the training crop size.
    pub fn plan(&self, num_classes: usize) -> Result<Plan, TensorError> {
        Plan::new(
            &self.layers,
            [self.input.channels, self.input.crop, self.input.crop],
            num_classes,
            &self.init,
        )
    }
}

/// A layer with every size resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Conv {
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
    },
    Relu,
    Lrn {
        size: usize,
        alpha: f32,
        beta: f32,
        k: f32,
    },
    MaxPool {
        k: usize,
        stride: usize,
    },
    Dropout {
        p: f32,
    },
    Flatten,
    Linear {
        fin: usize,
        fout: usize,
    },
}

/// One planned layer: its op, per-sample input and output shapes, and parameter views.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedLayer {
    pub name: String,
    pub op: Op,
    /// Per-sample input shape: `[C, H, W]` or `[F]`.
    pub in_shape: Vec<usize>,
    /// Per-sample output shape.
    pub out_shape: Vec<usize>,
    /// Indices into [`Plan::params`] of (weight, bias), for conv and linear.
    pub params: Option<(usize, usize)>,
}

/// A named view into the flat parameter buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
    /// Initialisation: N(0, std^2) when `std > 0`, else the constant `constant`.
    pub init_std: f32,
    pub init_constant: f32,
    /// True for weights (decayed and initialised randomly), false for biases.
    pub is_weight: bool,
}

/// The resolved network: layers with shapes, and the flat parameter layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Per-sample input `[C, H, W]`.
    pub input: [usize; 3],
    pub num_classes: usize,
    pub layers: Vec<PlannedLayer>,
    pub params: Vec<ParamEntry>,
    /// Total number of parameters (length of the flat buffer).
    pub total: usize,
}

impl Plan {
    /// Resolves `layers` for per-sample input `[C, H, W]` and `num_classes` outputs.
    pub fn new(
        layers: &[LayerSpec],
        input: [usize; 3],
        num_classes: usize,
        init: &InitSpec,
    ) -> Result<Plan, TensorError> {
        let err = |name: &str, msg: String| TensorError::Spec(format!("layer {name}: {msg}"));
        let mut shape = input.to_vec();
        let mut planned = Vec::new();
        let mut params: Vec<ParamEntry> = Vec::new();
        let mut total = 0usize;
        let mut add = |name: String, shape: Vec<usize>, std: f32, c: f32, w: bool| {
            let len = shape.iter().product();
            params.push(ParamEntry {
                name,
                shape,
                offset: total,
                len,
                init_std: std,
                init_constant: c,
                is_weight: w,
            });
            total += len;
            params.len() - 1
        };
        if layers.is_empty() {
            return Err(TensorError::Spec("the layer list is empty".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for (li, l) in layers.iter().enumerate() {
            let name = l.name().to_string();
            if !seen.insert(name.clone()) {
                return Err(err(&name, "duplicate layer name".into()));
            }
            let spatial = |s: &[usize]| -> Result<(usize, usize, usize), TensorError> {
                match s {
                    [c, h, w] => Ok((*c, *h, *w)),
                    _ => Err(err(&name, format!("needs a (C,H,W) input, got {s:?}"))),
                }
            };
            let in_shape = shape.clone();
            let (op, out, p) = match l {
                LayerSpec::Conv2d {
                    in_channels,
                    out_channels,
                    kernel,
                    stride,
                    padding,
                    groups,
                    weight_std,
                    bias_init,
                    ..
                } => {
                    let (c, h, w) = spatial(&shape)?;
                    if let Some(ic) = in_channels {
                        if *ic != c {
                            return Err(err(&name, format!("in_channels {ic} but input has {c}")));
                        }
                    }
                    let (o, k, s, pd, g) = (*out_channels, *kernel, *stride, *padding, *groups);
                    if g == 0 || !c.is_multiple_of(g) || !o.is_multiple_of(g) {
                        return Err(err(
                            &name,
                            format!("groups {g} must divide C={c} and O={o}"),
                        ));
                    }
                    if k == 0 || s == 0 || o == 0 {
                        return Err(err(
                            &name,
                            "kernel, stride and out_channels must be > 0".into(),
                        ));
                    }
                    if h + 2 * pd < k || w + 2 * pd < k {
                        return Err(err(
                            &name,
                            format!("kernel {k} larger than input {h}x{w} (+pad {pd})"),
                        ));
                    }
                    let ho = (h + 2 * pd - k) / s + 1;
                    let wo = (w + 2 * pd - k) / s + 1;
                    let wi = add(
                        format!("{name}.weight"),
                        vec![o, c / g, k, k],
                        weight_std.unwrap_or(init.weight_std),
                        0.0,
                        true,
                    );
                    let bi = add(
                        format!("{name}.bias"),
                        vec![o],
                        0.0,
                        bias_init.unwrap_or(init.bias),
                        false,
                    );
                    (
                        Op::Conv {
                            cin: c,
                            cout: o,
                            k,
                            stride: s,
                            pad: pd,
                            groups: g,
                        },
                        vec![o, ho, wo],
                        Some((wi, bi)),
                    )
                }
                LayerSpec::Relu { .. } => (Op::Relu, shape.clone(), None),
                LayerSpec::Lrn {
                    size,
                    alpha,
                    beta,
                    k,
                    ..
                } => {
                    spatial(&shape)?;
                    if *size == 0 {
                        return Err(err(&name, "size must be > 0".into()));
                    }
                    (
                        Op::Lrn {
                            size: *size,
                            alpha: *alpha,
                            beta: *beta,
                            k: *k,
                        },
                        shape.clone(),
                        None,
                    )
                }
                LayerSpec::Maxpool { kernel, stride, .. } => {
                    let (c, h, w) = spatial(&shape)?;
                    if *kernel == 0 || *stride == 0 || h < *kernel || w < *kernel {
                        return Err(err(
                            &name,
                            format!("pool {kernel}/{stride} does not fit {h}x{w}"),
                        ));
                    }
                    let ho = (h - kernel) / stride + 1;
                    let wo = (w - kernel) / stride + 1;
                    (
                        Op::MaxPool {
                            k: *kernel,
                            stride: *stride,
                        },
                        vec![c, ho, wo],
                        None,
                    )
                }
                LayerSpec::Dropout { p, .. } => {
                    if !(0.0..1.0).contains(p) {
                        return Err(err(&name, format!("dropout p={p} must be in [0, 1)")));
                    }
                    (Op::Dropout { p: *p }, shape.clone(), None)
                }
                LayerSpec::Flatten { out_features, .. } => {
                    let f: usize = shape.iter().product();
                    if let Some(of) = out_features {
                        if *of != f {
                            return Err(err(&name, format!("out_features {of} but input has {f}")));
                        }
                    }
                    (Op::Flatten, vec![f], None)
                }
                LayerSpec::Linear {
                    in_features,
                    out_features,
                    weight_std,
                    bias_init,
                    ..
                } => {
                    let fin = match shape.as_slice() {
                        [f] => *f,
                        s => {
                            return Err(err(
                                &name,
                                format!("needs a flat input, got {s:?} (add a flatten layer)"),
                            ))
                        }
                    };
                    if let Some(i) = in_features {
                        if *i != fin {
                            return Err(err(&name, format!("in_features {i} but input has {fin}")));
                        }
                    }
                    let fout = out_features.unwrap_or(num_classes);
                    let wi = add(
                        format!("{name}.weight"),
                        vec![fout, fin],
                        weight_std.unwrap_or(init.weight_std),
                        0.0,
                        true,
                    );
                    let bi = add(
                        format!("{name}.bias"),
                        vec![fout],
                        0.0,
                        bias_init.unwrap_or(init.bias),
                        false,
                    );
                    (Op::Linear { fin, fout }, vec![fout], Some((wi, bi)))
                }
                LayerSpec::SoftmaxCrossEntropy { .. } => {
                    if li + 1 != layers.len() {
                        return Err(err(&name, "the loss must be the last layer".into()));
                    }
                    continue;
                }
            };
            planned.push(PlannedLayer {
                name,
                op,
                in_shape,
                out_shape: out.clone(),
                params: p,
            });
            shape = out;
        }
        if shape != [num_classes] {
            return Err(TensorError::Spec(format!(
                "the network ends with shape {shape:?}, expected [{num_classes}] (one logit per class)"
            )));
        }
        Ok(Plan {
            input,
            num_classes,
            layers: planned,
            params,
            total,
        })
    }

    /// The entry named `name`, if any.
    pub fn param(&self, name: &str) -> Option<&ParamEntry> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Per-sample output shape of the named layer.
    pub fn layer(&self, name: &str) -> Option<&PlannedLayer> {
        self.layer_index(name).map(|i| &self.layers[i])
    }

    /// Position of the named layer in `layers`.
    pub fn layer_index(&self, name: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
name = "t"
[input]
channels = 3
image_size = 12
crop = 10
[init]
weight_std = 0.01
[train]
batch_size = 4
lr = 0.01
momentum = 0.9
weight_decay = 0.0005
epochs = 1
schedule = "plateau"
[[layers]]
name = "conv1"
type = "conv2d"
out_channels = 4
kernel = 3
padding = 1
groups = 1
bias_init = 1.0
[[layers]]
name = "relu1"
type = "relu"
[[layers]]
name = "pool1"
type = "maxpool"
kernel = 3
stride = 2
[[layers]]
name = "flatten"
type = "flatten"
[[layers]]
name = "fc"
type = "linear"
"#;

    #[test]
    fn plans_shapes_and_layout() {
        let spec = NetSpec::from_toml(TOML, "t.toml").unwrap();
        let plan = spec.plan(5).unwrap();
        // conv 10x10 pad 1 k3 -> 10x10; pool 3/2 -> 4x4; flatten 64; fc 64 -> 5
        assert_eq!(plan.layers[2].out_shape, vec![4, 4, 4]);
        assert_eq!(plan.layers[3].out_shape, vec![64]);
        let names: Vec<_> = plan.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["conv1.weight", "conv1.bias", "fc.weight", "fc.bias"]
        );
        assert_eq!(plan.total, 4 * 27 + 4 + 5 * 64 + 5);
        assert_eq!(plan.param("fc.weight").unwrap().offset, 112);
        assert_eq!(plan.param("conv1.bias").unwrap().init_constant, 1.0);
    }

    #[test]
    fn bad_specs_are_clear_errors() {
        let spec = NetSpec::from_toml(TOML, "t.toml").unwrap();
        let mut s = spec.clone();
        if let LayerSpec::Conv2d { groups, .. } = &mut s.layers[0] {
            *groups = 2;
        }
        let e = s.plan(5).unwrap_err().to_string();
        assert!(e.contains("conv1") && e.contains("groups 2"), "{e}");
        let mut s = spec.clone();
        s.layers.remove(3);
        let e = s.plan(5).unwrap_err().to_string();
        assert!(e.contains("flatten"), "{e}");
        let e = NetSpec::from_toml("name = 1", "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bad.toml: not a valid preset"), "{e}");
    }
}
