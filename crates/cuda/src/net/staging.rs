//! Double-buffered uploads of u8 training batches on a copy stream, so that the upload of the
//! next batch overlaps the compute of the current one (the loader's pinned-memory overlap in
//! PyTorch terms), and the page-locked staging helpers ([`pinned`], [`par_copy`]) that the f32
//! input uploads use too.
//!
//! Each of the two slots holds a page-locked host buffer and a device buffer. [`Stager::stage`]
//! copies the batch into the slot's page-locked buffer on the host (waiting, through the slot's
//! `ready` event, for the slot's previous upload to have read it), then queues the upload
//! on the copy stream after the compute stream's last read of the slot's device buffer, and
//! records a `ready` event. [`Stager::take`] makes the compute stream wait for `ready` before
//! anything reads the slot. All crate buffers run with cudarc's event tracking off (one compute
//! stream), so these two events are the whole cross-stream synchronisation.

use crate::error::CudaError;
use crate::gpu::Gpu;
use cudarc::driver::{sys, CudaEvent, CudaSlice, CudaStream, PinnedHostSlice};
use rayon::prelude::*;
use std::sync::Arc;

/// A batch staged by [`crate::GpuNet::stage_u8`]: its slot and the stage call it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staged {
    slot: usize,
    generation: u64,
    len: usize,
}

impl Staged {
    /// Bytes of the staged batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty batch (never staged: [`crate::GpuNet::stage_u8`] rejects those).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Default)]
struct Slot {
    pinned: Option<PinnedHostSlice<u8>>,
    dev: Option<CudaSlice<u8>>,
    /// Generation of the batch in the slot (0: none).
    generation: u64,
    /// The upload of that batch (recorded on the copy stream).
    ready: Option<CudaEvent>,
    /// The compute stream's last read of `dev` (recorded after the augment kernel).
    consumed: Option<CudaEvent>,
}

/// The two slots and the copy stream (created on first use).
#[derive(Default)]
pub(super) struct Stager {
    slots: [Slot; 2],
    next: usize,
    generation: u64,
    copy: Option<Arc<CudaStream>>,
}

fn event_flags() -> Option<sys::CUevent_flags> {
    Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
}

impl Stager {
    /// Stages `images` into the next slot (see the module docs).
    pub(super) fn stage(&mut self, gpu: &Gpu, images: &[u8]) -> Result<Staged, CudaError> {
        if images.is_empty() {
            return Err(CudaError::invalid("stage batch", "empty batch"));
        }
        let copy = match &self.copy {
            Some(c) => c.clone(),
            None => {
                let c = gpu
                    .ctx
                    .new_stream()
                    .map_err(CudaError::driver("create the copy stream"))?;
                self.copy = Some(c.clone());
                c
            }
        };
        let k = self.next;
        self.next ^= 1;
        self.generation += 1;
        let len = images.len();
        let slot = &mut self.slots[k];
        // The slot's previous upload may still read its page-locked buffer (a batch staged and
        // never taken): wait for it before the buffer is rewritten or reallocated. (The buffer's
        // own event is not recorded: the crate runs with cudarc's event tracking off.)
        if let Some(e) = &slot.ready {
            e.synchronize()
                .map_err(CudaError::driver("wait for the slot's previous upload"))?;
        }
        let pin = pinned(gpu, &mut slot.pinned, len)?;
        par_copy(images, pin)?;
        // The device buffer may still be read by compute queued earlier: the copy stream waits.
        if let Some(e) = &slot.consumed {
            copy.wait(e)
                .map_err(CudaError::driver("copy stream waits for compute"))?;
        }
        // A new device buffer is allocated (and zeroed) on the compute stream: the copy stream
        // waits for that too.
        let fresh = slot.dev.as_ref().is_none_or(|d| d.len() < len);
        let dev = gpu.grow(&mut slot.dev, len, "u8 batches")?;
        if fresh {
            let e = gpu
                .stream
                .record_event(event_flags())
                .map_err(CudaError::driver("record allocation event"))?;
            copy.wait(&e)
                .map_err(CudaError::driver("copy stream waits for the allocation"))?;
        }
        let mut dv = dev.slice_mut(0..len);
        copy.memcpy_htod(&*pin, &mut dv)
            .map_err(CudaError::driver("upload u8 batch"))?;
        slot.ready = Some(
            copy.record_event(event_flags())
                .map_err(CudaError::driver("record upload event"))?,
        );
        slot.generation = self.generation;
        Ok(Staged {
            slot: k,
            generation: self.generation,
            len,
        })
    }

    /// The device buffer of `s` for the compute stream (which waits for the upload), or an error
    /// when the slot was re-staged since.
    pub(super) fn take(&self, gpu: &Gpu, s: Staged) -> Result<&CudaSlice<u8>, CudaError> {
        let slot = &self.slots[s.slot];
        if slot.generation != s.generation {
            return Err(CudaError::invalid(
                "staged batch",
                "overwritten by a later stage call (at most two batches in flight)",
            ));
        }
        if let Some(e) = &slot.ready {
            gpu.stream
                .wait(e)
                .map_err(CudaError::driver("compute waits for the upload"))?;
        }
        slot.dev
            .as_ref()
            .ok_or_else(|| CudaError::invalid("staged batch", "device buffer missing"))
    }

    /// Records that the compute stream has queued its last read of `s`'s device buffer.
    pub(super) fn consumed(&mut self, gpu: &Gpu, s: Staged) -> Result<(), CudaError> {
        self.slots[s.slot].consumed = Some(
            gpu.stream
                .record_event(event_flags())
                .map_err(CudaError::driver("record consume event"))?,
        );
        Ok(())
    }
}

impl Drop for Stager {
    fn drop(&mut self) {
        // Uploads still in flight write buffers that are about to be freed: let them finish.
        // Nothing can be done about an error here.
        if let Some(c) = &self.copy {
            let _ = c.synchronize();
        }
    }
}

/// The page-locked staging buffer in `slot`, (re)allocated to exactly `len` elements.
pub(super) fn pinned<'a, T: cudarc::driver::DeviceRepr>(
    gpu: &Gpu,
    slot: &'a mut Option<PinnedHostSlice<T>>,
    len: usize,
) -> Result<&'a mut PinnedHostSlice<T>, CudaError> {
    if slot.as_ref().is_none_or(|p| p.len() != len) {
        *slot = None;
        // SAFETY: the buffer is fully written by `par_copy` before any copy reads it.
        let p = unsafe { gpu.ctx.alloc_pinned::<T>(len) }.map_err(CudaError::driver(format!(
            "alloc {len} pinned host elements"
        )))?;
        *slot = Some(p);
    }
    slot.as_mut()
        .ok_or_else(|| CudaError::invalid("staging", "pinned buffer missing"))
}

/// Copies `src` into the pinned buffer (same length) in parallel chunks. The caller makes sure
/// no copy still reads the buffer (with event tracking off, `as_mut_slice` does not wait).
pub(super) fn par_copy<T: Copy + Send + Sync + cudarc::driver::ValidAsZeroBits>(
    src: &[T],
    dst: &mut PinnedHostSlice<T>,
) -> Result<(), CudaError> {
    let d = dst
        .as_mut_slice()
        .map_err(CudaError::driver("wait for the staging buffer"))?;
    if d.len() != src.len() {
        return Err(CudaError::shape(
            "staging copy",
            format!("{} elements into {}", src.len(), d.len()),
        ));
    }
    const CHUNK: usize = 1 << 20;
    d.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(a, b)| a.copy_from_slice(b));
    Ok(())
}
