//! Model presets: the files in `data/` are embedded in the binary, so `--preset small|paper|
//! paper-6conv` works from any directory; any other value is read as a TOML file path.

use alexnet_tensor::spec::NetSpec;
use anyhow::{Context, Result};
use std::path::Path;

/// The embedded presets (name, TOML text).
pub const PRESETS: &[(&str, &str)] = &[
    ("small", include_str!("../../../data/small.toml")),
    ("paper", include_str!("../../../data/paper.toml")),
    (
        "paper-6conv",
        include_str!("../../../data/paper-6conv.toml"),
    ),
];

/// Resolves `--preset`: an embedded name or a path to a TOML file.
pub fn load_preset(name_or_path: &str) -> Result<NetSpec> {
    if let Some((name, text)) = PRESETS.iter().find(|(n, _)| *n == name_or_path) {
        return Ok(NetSpec::from_toml(text, &format!("data/{name}.toml"))?);
    }
    let p = Path::new(name_or_path);
    if !p.exists() {
        let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        anyhow::bail!(
            "--preset {name_or_path}: neither a preset name ({}) nor an existing TOML file",
            names.join(", ")
        );
    }
    NetSpec::from_file(p).with_context(|| format!("--preset {name_or_path}"))
}
