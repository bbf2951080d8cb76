//! `alexnet-eval`: evaluation and reporting of trained runs.
//!
//! - [`report()`]: every model of a run on the validation split with the center crop and with
//!   the 10 patches (softmax averaged), every ensemble size 1..N, written as `RUN/report.json`,
//!   `RUN/report.md` (the paper's Table 2 beside ours), `RUN/curves.svg` (training curves) and
//!   `RUN/conv1_filters.png` (the paper's Figure 3);
//! - [`predict()`]: top-N classes of image files from the run's ensemble;
//! - [`average`]: the view and ensemble averaging; [`curves`], [`filters`]: the pictures.

pub mod average;
pub mod curves;
pub mod filters;
pub mod markdown;
pub mod predict;
pub mod report;

pub use average::{average_models, average_views, top_k, EnsembleMean};
pub use predict::{predict, predict_to, PredictArgs, Prediction};
pub use report::{report, Report, ReportArgs, ViewErrors};
