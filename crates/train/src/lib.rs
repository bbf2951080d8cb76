//! alexnet-train
