//! alexnet-eval
