//! `report.md`: our results in the shape of the paper's Table 2, beside the paper's numbers.

use crate::report::{Report, ViewErrors};
use std::fmt::Write as _;

/// One row of the paper's Table 2 (ILSVRC-2012; error rates in %).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PaperRow {
    pub model: &'static str,
    pub top1_val: Option<f64>,
    pub top5_val: Option<f64>,
    pub top5_test: Option<f64>,
}

/// Krizhevsky, Sutskever, Hinton (2012), Table 2: ILSVRC-2012 validation and test error rates,
/// with the 10-patch test-time averaging. `*` = pre-trained on ImageNet Fall 2011, fine-tuned.
pub const PAPER_TABLE2: [PaperRow; 5] = [
    PaperRow {
        model: "SIFT + FVs [7]",
        top1_val: None,
        top5_val: None,
        top5_test: Some(26.2),
    },
    PaperRow {
        model: "1 CNN",
        top1_val: Some(40.7),
        top5_val: Some(18.2),
        top5_test: None,
    },
    PaperRow {
        model: "5 CNNs",
        top1_val: Some(38.1),
        top5_val: Some(16.4),
        top5_test: Some(16.4),
    },
    PaperRow {
        model: "1 CNN*",
        top1_val: Some(39.0),
        top5_val: Some(16.6),
        top5_test: None,
    },
    PaperRow {
        model: "7 CNNs*",
        top1_val: Some(36.7),
        top5_val: Some(15.4),
        top5_test: Some(15.3),
    },
];

/// "1 CNN", "3 CNNs", "1 CNN*" (fine-tuned runs get the star, like the paper's CNN*).
pub fn row_label(size: usize, starred: bool) -> String {
    format!(
        "{size} CNN{}{}",
        if size == 1 { "" } else { "s" },
        if starred { "*" } else { "" }
    )
}

fn pct(v: f64) -> String {
    format!("{:.1}", 100.0 * v)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("—".into(), |x| format!("{x:.1}"))
}

/// Seconds as `1 h 02 min`, `3 min 05 s` or `12.3 s`.
pub fn duration(s: f64) -> String {
    if !s.is_finite() || s <= 0.0 {
        return "n/a".into();
    }
    let t = s.round() as u64;
    if t >= 3600 {
        format!("{} h {:02} min", t / 3600, (t % 3600) / 60)
    } else if t >= 60 {
        format!("{} min {:02} s", t / 60, t % 60)
    } else {
        format!("{s:.1} s")
    }
}

fn four(e: &ViewErrors) -> [String; 4] {
    [
        e.top1_err_center,
        e.top5_err_center,
        e.top1_err_10crop,
        e.top5_err_10crop,
    ]
    .map(pct)
}

/// The whole `report.md`.
pub fn render_markdown(r: &Report) -> String {
    let d = &r.dataset;
    let starred = r.training.init_from.is_some();
    let same_data = d.source == "imagenet" && d.num_classes == 1000;
    let mut s = String::new();
    let _ = writeln!(s, "# AlexNet reproduction: report for `{}`\n", r.run);
    if same_data {
        let _ = writeln!(
            s,
            "Our numbers: **{}** validation split ({} images evaluated). The paper's numbers: \
             ILSVRC-2012 (its 50,000 validation images; \"test\" is the withheld test set).\n",
            d.description, d.val_evaluated
        );
    } else {
        let _ = writeln!(
            s,
            "> **Different data.** Our numbers are measured on **{}**, validation split ({} \
             images, {} classes), NOT on ILSVRC-2012. The paper's columns are its own ILSVRC-2012 \
             results (1000 classes, 50,000 validation images), shown for the shape of the \
             comparison only: the two are not comparable.\n",
            d.description, d.val_evaluated, d.num_classes
        );
    }

    // Table 2.
    let c = d.num_classes.max(1) as f64;
    let _ = writeln!(s, "## Table 2: error rates (%), ours beside the paper's\n");
    let _ =
        writeln!(
        s,
        "Chance on our data: top-1 {:.1}%, top-5 {:.1}%{}. \"center\": the central {}x{} crop; \
         \"10 patches\": softmax averaged over the four corner and center {}x{} patches and their \
         mirror images (the paper's test-time averaging, used for all its numbers). Rows \"N \
         CNNs\" average the softmax of models 0..N-1.\n",
        100.0 * (1.0 - 1.0 / c),
        100.0 * (1.0 - (5.0f64).min(c) / c),
        if d.num_classes <= 5 { " (with 5 classes or fewer, top-5 always hits)" } else { "" },
        d.crop,
        d.crop,
        d.crop,
        d.crop
    );
    let _ = writeln!(
        s,
        "| Model | ours: top-1 center | ours: top-5 center | ours: top-1 10 patches | ours: top-5 \
         10 patches | paper: top-1 (val) | paper: top-5 (val) | paper: top-5 (test) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    // Rows: SIFT + FVs, then plain "n CNNs" (ours and the paper's, by n), then starred rows.
    let dash = || ["—".to_string(), "—".into(), "—".into(), "—".into()];
    let mut rows: Vec<(String, [String; 4], Option<&PaperRow>)> = Vec::new();
    rows.push((PAPER_TABLE2[0].model.into(), dash(), Some(&PAPER_TABLE2[0])));
    for star in [false, true] {
        let mut sizes: Vec<usize> = PAPER_TABLE2[1..]
            .iter()
            .filter(|p| p.model.ends_with('*') == star)
            .filter_map(|p| p.model.split(' ').next()?.parse().ok())
            .collect();
        if star == starred {
            sizes.extend(r.ensembles.iter().map(|e| e.size));
        }
        sizes.sort_unstable();
        sizes.dedup();
        for n in sizes {
            let label = row_label(n, star);
            let ours = r
                .ensembles
                .iter()
                .find(|e| e.size == n && star == starred)
                .map_or_else(dash, |e| four(&e.errors));
            let paper = PAPER_TABLE2.iter().find(|p| p.model == label);
            rows.push((label, ours, paper));
        }
    }
    for (label, ours, paper) in rows {
        let (p1, p5, pt) = paper.map_or(("—".into(), "—".into(), "—".into()), |p| {
            (opt(p.top1_val), opt(p.top5_val), opt(p.top5_test))
        });
        let _ = writeln!(s, "| {label} | {} | {p1} | {p5} | {pt} |", ours.join(" | "));
    }
    let _ = writeln!(
        s,
        "\nPaper: Krizhevsky, Sutskever, Hinton, *ImageNet Classification with Deep \
         Convolutional Neural Networks* (NIPS 2012), Table 2; \"*\" rows were pre-trained on the \
         ImageNet Fall 2011 release and fine-tuned on ILSVRC-2012{}.\n",
        if starred {
            " (our starred rows: fine-tuned with `--init-from`)"
        } else {
            ""
        }
    );

    // Data, training, evaluation.
    let t = &r.training;
    let _ = writeln!(s, "## Data\n");
    let _ = writeln!(s, "- Source: {} (kind `{}`)", d.description, d.source);
    let _ = writeln!(s, "- Shards: `{}`", d.dir);
    let _ = writeln!(
        s,
        "- {} classes; {} training and {} validation images ({} evaluated)",
        d.num_classes, d.train, d.val, d.val_evaluated
    );
    let _ = writeln!(
        s,
        "- Images stored at {0}x{0}; network input {1}x{1}\n",
        d.image_size, d.crop
    );
    let _ = writeln!(s, "## Training\n");
    let _ = writeln!(s, "- Preset: `{}` (network `{}`)", r.preset, r.network);
    let _ = writeln!(
        s,
        "- {} model{}, {} epochs each, batch {}, lr {}, schedule `{}`, seed {}{}",
        t.models,
        crate::report::plural(t.models),
        t.epochs,
        t.batch_size,
        t.lr,
        t.schedule,
        t.seed,
        t.init_from
            .as_ref()
            .map_or(String::new(), |p| format!(", fine-tuned from `{p}`"))
    );
    let _ = writeln!(s, "- Device: {} ({})", t.device, t.precision);
    let _ = writeln!(
        s,
        "- Training time: {} in total (sum of the epochs' training time over all models, \
         validation excluded)",
        duration(t.seconds)
    );
    let _ = writeln!(
        s,
        "- Throughput: {} images/s (mean over all epochs)\n",
        t.img_per_s.map_or("n/a".into(), |v| format!("{v:.0}"))
    );
    let _ = writeln!(s, "## Evaluation\n");
    let _ = writeln!(
        s,
        "- Device: {}; {} validation images x (1 + 10 views) x {} models in {}\n",
        r.device,
        d.val_evaluated,
        r.models.len(),
        duration(r.evaluation_seconds)
    );

    // Per model.
    let _ = writeln!(s, "## Per model (error %)\n");
    let _ = writeln!(
        s,
        "| Model | epochs | training time | img/s | last epoch loss | top-1 center | top-5 \
         center | top-1 10 patches | top-5 10 patches |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in &r.models {
        let _ = writeln!(
            s,
            "| model-{} | {} | {} | {} | {} | {} |",
            m.model,
            m.epochs,
            duration(m.train_seconds),
            m.img_per_s.map_or("n/a".into(), |v| format!("{v:.0}")),
            m.final_train_loss
                .map_or("n/a".into(), |v| format!("{v:.4}")),
            four(&m.errors).join(" | ")
        );
    }

    // Pictures.
    let p = &r.pictures;
    let per = p.conv1_shape.first().copied().unwrap_or(0) / p.conv1_panels.max(1);
    let _ = writeln!(s, "\n## Pictures\n");
    let _ = writeln!(
        s,
        "Training curves ([{0}]({0})): training loss per logged step (thin) and per epoch \
         (thick), validation top-1 (solid) and top-5 (dashed) error per epoch, one colour per \
         model.\n\n![training curves]({0})\n",
        p.curves
    );
    let shape = p
        .conv1_shape
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("x");
    let panels = if p.conv1_panels > 1 {
        format!(
            "one panel per group of the next convolution, top to bottom ({per} kernels each; the \
             paper's Figure 3 shows its two GPUs' halves this way)"
        )
    } else {
        "one panel (the next convolution has one group)".to_string()
    };
    let _ = writeln!(
        s,
        "First-layer kernels of model-0 ([{0}]({0})): `{1}` ({2}), each kernel scaled to its own \
         min..max, {3}.\n\n![conv1 kernels]({0})",
        p.conv1_filters, p.conv1_layer, shape, panels
    );
    s
}
