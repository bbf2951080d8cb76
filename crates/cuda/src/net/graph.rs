//! CUDA graphs for the training step ([`GRAPH_ENV`](crate::gpu::GRAPH_ENV)`=on`): the forward,
//! loss and backward of a full batch are captured once into a graph and then replayed with one
//! launch per step instead of one per kernel, cuBLAS and cuDNN call.
//!
//! A graph bakes in every launch's arguments, so what changes from step to step must live on
//! the device at a fixed address: the input and labels already do (the augmentation and the
//! label upload run before the graph), and the dropout seeds are written into a small device
//! buffer that `dropout_apply_at` reads. The learning rate does not enter the graph: SGD runs
//! after it, as before. A graph is replayed only for the [`GraphKey`] it was captured with:
//! the same batch size, precision and input-gradient switch, and the same [`Gpu::generation`]
//! (no setting changed, no scratch buffer reallocated since). A capture follows one ordinary
//! pass with the same key, which allocates the scratch buffers, loads the kernels and builds the
//! cuDNN plans, none of which a capture may do; should a scratch buffer still have to grow
//! while capturing, `Gpu::grow` refuses, the capture is dropped (nothing ran) and the pass runs
//! directly instead. Partial batches run without a graph.
//!
//! [`Gpu::generation`]: crate::gpu::Gpu::generation

use super::pass::DropSeeds;
use super::GpuNet;
use crate::error::CudaError;
use crate::gpu::Precision;
use cudarc::driver::{sys, CudaGraph};

/// What a graph was captured for; replaying it is right only for the same key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct GraphKey {
    pub n: usize,
    pub precision: Precision,
    pub input_grad: bool,
    pub generation: u64,
}

/// What the next training pass does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Launch every kernel as usual (a partial batch, or the warm-up before a capture).
    Direct,
    /// Capture the pass into a graph, then launch the graph.
    Capture,
    /// Launch the graph captured for this key.
    Replay,
}

/// The decision: replay a graph captured for `key`, capture one after a warm-up pass of the
/// same key, else run directly. Only full batches (`full`) use graphs.
pub(super) fn next(
    captured: Option<GraphKey>,
    warmed: Option<GraphKey>,
    key: GraphKey,
    full: bool,
) -> Next {
    if !full {
        Next::Direct
    } else if captured == Some(key) {
        Next::Replay
    } else if warmed == Some(key) {
        Next::Capture
    } else {
        Next::Direct
    }
}

/// A captured training pass.
struct Captured {
    key: GraphKey,
    graph: CudaGraph,
    /// `GpuNet::input_grad_at` after the captured pass (a replay leaves the same).
    input_grad_at: Option<usize>,
}

/// The graph state of one [`GpuNet`].
#[derive(Default)]
pub(super) struct StepGraphs {
    /// The key of the last direct full-batch pass with graphs on.
    warmed: Option<GraphKey>,
    captured: Option<Captured>,
    /// Graphs captured and replayed so far (launches of a graph right after its capture count
    /// as captures).
    pub(super) counts: (usize, usize),
}

impl GpuNet {
    fn graph_key(&self, n: usize) -> GraphKey {
        GraphKey {
            n,
            precision: self.precision,
            input_grad: self.input_grad,
            generation: self.gpu.generation(),
        }
    }

    /// Forward, loss and backward of the first `n` samples on the device through a CUDA graph
    /// when one applies (see the module docs); the dropout seeds of `seed` go to the device
    /// first.
    pub(super) fn graph_pass(&mut self, n: usize, seed: u64) -> Result<(), CudaError> {
        self.upload_seeds(seed)?;
        let key = self.graph_key(n);
        let captured = self.graphs.captured.as_ref().map(|c| c.key);
        match next(captured, self.graphs.warmed, key, n == self.batch) {
            Next::Direct if n == self.batch => self.rewarm(n),
            Next::Direct => self.direct_pass(n, DropSeeds::Device),
            Next::Capture => self.capture_pass(n, key),
            Next::Replay => {
                let c = self
                    .graphs
                    .captured
                    .as_ref()
                    .ok_or_else(|| CudaError::invalid("CUDA graph", "no graph to replay"))?;
                c.graph
                    .launch()
                    .map_err(CudaError::driver("launch the training-step CUDA graph"))?;
                self.last_n = n;
                self.input_grad_at = c.input_grad_at;
                self.graphs.counts.1 += 1;
                Ok(())
            }
        }
    }

    /// Captures the pass into a graph (nothing runs while capturing), then launches it.
    fn capture_pass(&mut self, n: usize, key: GraphKey) -> Result<(), CudaError> {
        self.graphs.captured = None;
        let s = self.gpu.stream.clone();
        // Thread-local mode: a call on this thread that cannot be captured (a synchronous
        // allocation, a synchronisation) fails the capture instead of running outside it.
        s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(CudaError::driver("begin the CUDA graph capture"))?;
        self.gpu.take_grow_refused();
        let body = self.direct_pass(n, DropSeeds::Device);
        // Always end the capture, so the stream leaves capture mode even after an error.
        let end = s.end_capture(sys::CUgraphInstantiate_flags(0));
        if body.is_err() && self.gpu.take_grow_refused() {
            // A scratch buffer had to grow (which a capture cannot do): nothing ran, so run
            // the pass directly, which grows it, and capture on a later step.
            drop(end);
            return self.rewarm(n);
        }
        let fix = format!("set {}=off to run without graphs", crate::gpu::GRAPH_ENV);
        body.map_err(|e| CudaError::invalid("CUDA graph capture", format!("{e} ({fix})")))?;
        let graph = end
            .map_err(|e| {
                CudaError::invalid("CUDA graph capture", format!("end capture: {e} ({fix})"))
            })?
            .ok_or_else(|| CudaError::invalid("CUDA graph capture", "captured no work"))?;
        if self.gpu.generation() != key.generation {
            // A setting changed while capturing (another thread): the graph may launch other
            // kernels than a pass would now. Nothing ran; run the pass directly.
            drop(graph);
            return self.rewarm(n);
        }
        graph
            .launch()
            .map_err(CudaError::driver("launch the training-step CUDA graph"))?;
        self.graphs.captured = Some(Captured {
            key,
            graph,
            input_grad_at: self.input_grad_at,
        });
        self.graphs.counts.0 += 1;
        Ok(())
    }

    /// A direct full-batch pass, after which a capture with the then current key may follow
    /// (the key is taken after the pass: it may have grown scratch buffers).
    fn rewarm(&mut self, n: usize) -> Result<(), CudaError> {
        self.direct_pass(n, DropSeeds::Device)?;
        self.graphs.warmed = Some(self.graph_key(n));
        Ok(())
    }

    /// Writes each dropout stage's seed for `seed` into the device seed buffer, where
    /// `dropout_apply_at` reads it (a pageable copy: staged by the driver before this returns,
    /// ordered on the stream after the previous step's kernels).
    fn upload_seeds(&mut self, seed: u64) -> Result<(), CudaError> {
        let host = self.stage_seeds(seed);
        let s = self.gpu.stream.clone();
        s.memcpy_htod(&host, &mut self.seeds)
            .map_err(CudaError::driver("upload the dropout seeds"))
    }

    /// (CUDA graphs captured, graph replays) of this network so far.
    pub fn graph_counts(&self) -> (usize, usize) {
        self.graphs.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize, generation: u64) -> GraphKey {
        GraphKey {
            n,
            precision: Precision::Tf32,
            input_grad: false,
            generation,
        }
    }

    #[test]
    fn a_graph_is_captured_after_one_warm_up_and_replayed_for_its_key_only() {
        let k = key(128, 3);
        // First full pass: nothing warmed, so it runs directly (and warms).
        assert_eq!(next(None, None, k, true), Next::Direct);
        // Same key again: capture.
        assert_eq!(next(None, Some(k), k, true), Next::Capture);
        // Then replay.
        assert_eq!(next(Some(k), Some(k), k, true), Next::Replay);
        // A partial batch never uses the graph.
        assert_eq!(next(Some(k), Some(k), key(100, 3), false), Next::Direct);
        // A new generation (a setting changed, a buffer reallocated): warm up again.
        assert_eq!(next(Some(k), Some(k), key(128, 4), true), Next::Direct);
        assert_eq!(
            next(Some(k), Some(key(128, 4)), key(128, 4), true),
            Next::Capture
        );
        // Another precision or the input gradient switched on: not the captured graph.
        let tf = GraphKey {
            precision: Precision::Bf16,
            ..k
        };
        assert_eq!(next(Some(k), Some(k), tf, true), Next::Direct);
        let ig = GraphKey {
            input_grad: true,
            ..k
        };
        assert_eq!(next(Some(k), Some(k), ig, true), Next::Direct);
    }
}
