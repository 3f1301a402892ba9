//! Turning cache loader batches into tensors on the training device.
//!
//! On the CPU a batch's images are a view of the loader's buffer (no copy). On CUDA a [`Feed`]
//! stages each batch as PyTorch's `pin_memory` loaders with a prefetching side stream do: a
//! pinning thread copies the pixels into pinned host memory, and the training thread starts
//! their copy to the device on a side stream one batch ahead ([`Feed::ahead`]), so that batch
//! N+1's copy runs while batch N computes; the compute stream waits for the copy on the
//! device, never on the host. `PIN_MEMORY=false` (as
//! Ultralytics reads it) makes it a plain pageable copy on the compute stream instead.
//!
//! Targets stay on the host on every device: the loss pads them per image there anyway, so a
//! device copy would only be read back, synchronising the device in the middle of each step.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use fusekit_cache::CacheError;
use fusekit_loader::{Background, Batch};
use tch::{Device, Kind, Tensor};

use crate::shim_error::ErrorText;

/// A batch's tensors. On the CPU `images` views the batch's own buffer (no copy), so it must
/// not outlive the batch; on CUDA it is the device copy, u8 pixels as they are (a quarter of
/// the bytes of f32). `targets` are on the host.
#[derive(Debug)]
pub struct BatchTensors<'a> {
    /// u8 images, `[batch, planes, imgsz, imgsz]`: R, G, B, then the IR plane(s).
    pub images: Tensor,
    /// f32 targets on the host, `[boxes, 6]`: image index in the batch, class, x, y, w, h
    /// (normalised), as Ultralytics' `batch_idx`, `cls` and `bboxes`.
    pub targets: Tensor,
    _batch: PhantomData<&'a Batch>,
}

/// The tensors of `batch`: its images on `device` (the pageable copy of [`FeedMode::Pageable`];
/// on the CPU a view), its targets on the host.
pub fn batch_tensors(batch: &Batch, device: Device) -> BatchTensors<'_> {
    BatchTensors {
        images: images_on(batch, device),
        targets: targets_on_host(batch),
        _batch: PhantomData,
    }
}

/// The batch's pixels on `device`: a view on the CPU, else a copy from pageable memory,
/// non-blocking as Ultralytics moves its batches (CUDA stages pageable memory before the call
/// returns, so the device is not synchronised and the buffer may be reused at once).
fn images_on(batch: &Batch, device: Device) -> Tensor {
    match device {
        Device::Cpu => images_view(batch),
        accelerator => images_view(batch).to_device_(accelerator, Kind::Uint8, true, false),
    }
}

/// The batch's pixels as a u8 tensor over its own buffer.
fn images_view(batch: &Batch) -> Tensor {
    let shape = [
        batch.len() as i64,
        batch.planes as i64,
        batch.imgsz as i64,
        batch.imgsz as i64,
    ];
    // SAFETY: the buffer holds exactly `shape` u8 values and outlives every use of the view:
    // callers tie it to the batch's lifetime ([`BatchTensors`]) or copy it before returning;
    // the tensor is never resized.
    unsafe { Tensor::from_blob(batch.images.as_ptr(), &shape, &[], Kind::Uint8, Device::Cpu) }
}

/// The batch's boxes as `[boxes, 6]` f32 rows on the host.
fn targets_on_host(batch: &Batch) -> Tensor {
    let rows: Vec<f32> = batch
        .boxes
        .iter()
        .flat_map(|b| [b.image as f32, b.class as f32, b.x, b.y, b.w, b.h])
        .collect();
    Tensor::from_slice(&rows).reshape([batch.boxes.len() as i64, 6])
}

/// How a [`Feed`] moves batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedMode {
    /// The CPU: a view of the loader's buffer.
    View,
    /// A copy from pageable memory on the compute stream (`non_blocking`, as Ultralytics copies:
    /// the host stages it, the device is not synchronised; it does not overlap compute).
    Pageable,
    /// Pinned memory, copied on a side stream one batch ahead, overlapping compute.
    Pinned,
}

impl FeedMode {
    /// The name reports use: `view`, `pageable` or `pinned`.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedMode::View => "view",
            FeedMode::Pageable => "pageable",
            FeedMode::Pinned => "pinned",
        }
    }
}

/// Moves loader batches to one device. Cloning shares the side stream.
#[derive(Debug, Clone)]
pub struct Feed {
    device: Device,
    stager: Option<Arc<Stager>>,
    /// Why a pinned feed was asked for on CUDA but libtorch gave no side stream.
    unavailable: Option<String>,
}

impl Feed {
    /// A feed to `device`, pinned on CUDA unless `PIN_MEMORY` says `false` (or `0`, `no`,
    /// `off`), the environment variable Ultralytics reads.
    pub fn for_device(device: Device) -> Self {
        Self::new(
            device,
            pin_memory_from_env(std::env::var("PIN_MEMORY").ok()),
        )
    }

    /// A feed to `device`: on CUDA with `pin_memory`, through pinned memory and a side
    /// stream; if libtorch gives no side stream, the pageable copy ([`Feed::fallback`] says
    /// why).
    pub fn new(device: Device, pin_memory: bool) -> Self {
        let mut unavailable = None;
        let stager = match device {
            Device::Cuda(index) if pin_memory => match Stager::new(index) {
                Ok(stager) => Some(Arc::new(stager)),
                Err(error) => {
                    unavailable = Some(format!(
                        "no side stream on cuda:{index} ({})",
                        first_line(&error)
                    ));
                    None
                }
            },
            _ => None,
        };
        Self {
            device,
            stager,
            unavailable,
        }
    }

    /// How batches are moved now.
    pub fn mode(&self) -> FeedMode {
        match (&self.stager, self.device) {
            (_, Device::Cpu) => FeedMode::View,
            (Some(stager), _) if !stager.disabled() => FeedMode::Pinned,
            _ => FeedMode::Pageable,
        }
    }

    /// Why a pinned feed fell back to the pageable copy, if it did (the side stream was
    /// unavailable, or pinning a batch failed: then every later batch is pageable too).
    pub fn fallback(&self) -> Option<String> {
        self.unavailable
            .clone()
            .or_else(|| self.stager.as_ref()?.failure())
    }

    /// Starts moving `batch` to the device. With its pixels in pinned memory (`pinned`, from
    /// the pinning thread), the device copy is queued on the side stream when this returns;
    /// otherwise nothing happens until [`Staged::into_fed`]. A failed pin or copy turns the
    /// feed pageable from then on, with the reason in [`Feed::fallback`].
    fn stage(&self, batch: Batch, pinned: Option<Result<Tensor, String>>) -> Staged {
        let copy = match (&self.stager, pinned) {
            (Some(stager), Some(Ok(pinned))) if !stager.disabled() => match stager.copy(&pinned) {
                Ok(copy) => Some(copy),
                Err(error) => {
                    stager.fail("starting a batch's copy on the side stream", &error);
                    None
                }
            },
            (Some(stager), Some(Err(error))) => {
                stager.fail("pinning a batch", &error);
                None
            }
            _ => None,
        };
        Staged {
            batch,
            device: self.device,
            copy,
        }
    }

    /// `batches` staged one ahead: when a batch is returned, the next one's copy has been
    /// started, so it overlaps the caller's work on this one. In pinned mode a thread pins the
    /// batch after that meanwhile. A loader error ends the iteration after it is returned.
    pub fn ahead<I>(&self, batches: I) -> Ahead
    where
        I: Iterator<Item = Result<Batch, CacheError>> + Send + 'static,
    {
        let prepared: Box<dyn Iterator<Item = Prepared>> =
            match self.stager.as_ref().filter(|s| !s.disabled()) {
                Some(stager) => {
                    let stager = Arc::clone(stager);
                    // PyTorch's DataLoader has the same `pin_memory_thread`.
                    Box::new(Background::spawn("fusekit-pin", 1, batches, move |batch| {
                        let pinned = match &batch {
                            Ok(b) if !stager.disabled() => Some(stager.pin(b)),
                            _ => None,
                        };
                        let failed = batch.is_err();
                        (Prepared { batch, pinned }, failed)
                    }))
                }
                None => Box::new(batches.map(|batch| Prepared {
                    batch,
                    pinned: None,
                })),
            };
        Ahead {
            feed: self.clone(),
            prepared,
            next: None,
            primed: false,
        }
    }
}

/// The first line of a libtorch error (the rest is its C++ backtrace).
fn first_line(error: &str) -> &str {
    error.lines().next().unwrap_or(error).trim()
}

/// Whether the value of `PIN_MEMORY` asks for pinned memory (yes unless it says no).
fn pin_memory_from_env(value: Option<String>) -> bool {
    !value.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "false" | "0" | "no" | "off"
        )
    })
}

/// A loader batch and, in pinned mode, its pixels in pinned memory (or why pinning failed).
struct Prepared {
    batch: Result<Batch, CacheError>,
    pinned: Option<Result<Tensor, String>>,
}

/// Batches staged one ahead ([`Feed::ahead`]).
pub struct Ahead {
    feed: Feed,
    prepared: Box<dyn Iterator<Item = Prepared>>,
    next: Option<Result<Staged, CacheError>>,
    primed: bool,
}

impl Ahead {
    fn pull(&mut self) -> Option<Result<Staged, CacheError>> {
        let Prepared { batch, pinned } = self.prepared.next()?;
        Some(batch.map(|batch| self.feed.stage(batch, pinned)))
    }
}

impl Iterator for Ahead {
    type Item = Result<Staged, CacheError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.primed {
            self.primed = true;
            self.next = self.pull();
        }
        let current = self.next.take()?;
        if current.is_ok() {
            self.next = self.pull();
        }
        Some(current)
    }
}

/// A batch on its way to the device ([`Feed::ahead`]).
#[derive(Debug)]
pub struct Staged {
    batch: Batch,
    device: Device,
    copy: Option<StagedCopy>,
}

impl Staged {
    /// The batch with its tensors, ready for the compute stream: in pinned mode the compute
    /// stream waits for the copy (the host does not); in pageable mode the copy is made now.
    pub fn into_fed(self) -> Fed {
        let on_device = match (self.copy, self.device) {
            (Some(copy), _) => Some(copy.take()),
            (None, Device::Cpu) => None,
            (None, device) => Some(images_on(&self.batch, device)),
        };
        Fed {
            targets: targets_on_host(&self.batch),
            batch: self.batch,
            on_device,
        }
    }
}

/// A batch whose tensors the compute stream can use ([`Staged::into_fed`]).
#[derive(Debug)]
pub struct Fed {
    batch: Batch,
    /// The images' device copy (`None` on the CPU, where they are a view of the batch).
    on_device: Option<Tensor>,
    targets: Tensor,
}

impl Fed {
    /// The batch.
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// Its tensors (on the CPU, images that view the batch's buffer).
    pub fn tensors(&self) -> BatchTensors<'_> {
        BatchTensors {
            images: match &self.on_device {
                Some(images) => images.shallow_clone(),
                None => images_view(&self.batch),
            },
            targets: self.targets.shallow_clone(),
            _batch: PhantomData,
        }
    }
}

/// A side stream of libtorch's CUDA pool (`shim/feed.cpp`).
#[derive(Debug)]
struct Stager {
    handle: NonNull<ffi::FkStager>,
    /// The first failure to pin or copy a batch, after which the feed is pageable for good.
    failure: Mutex<Option<String>>,
}

// SAFETY: the C++ stager is immutable after creation (a device and a stream id), and libtorch's
// stream and allocator calls made through it are thread-safe.
unsafe impl Send for Stager {}
unsafe impl Sync for Stager {}

impl Stager {
    fn new(index: usize) -> Result<Self, String> {
        let mut error = ErrorText::new();
        // SAFETY: the error buffer is valid for its length.
        let handle = unsafe { ffi::fk_stager_new(index as i32, error.ptr(), error.len()) };
        NonNull::new(handle)
            .map(|handle| Self {
                handle,
                failure: Mutex::new(None),
            })
            .ok_or_else(|| error.text())
    }

    /// The first failure, if any (a poisoned lock counts as one).
    fn failure(&self) -> Option<String> {
        self.failure.lock().map_or_else(
            |_| Some("the feed's lock was poisoned".into()),
            |f| f.clone(),
        )
    }

    fn disabled(&self) -> bool {
        self.failure().is_some()
    }

    /// Turns the feed pageable for good because `what` failed with `error`.
    fn fail(&self, what: &str, error: &str) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert_with(|| format!("{what} failed ({})", first_line(error)));
        }
    }

    /// `batch`'s pixels copied into pinned host memory (on the calling thread).
    fn pin(&self, batch: &Batch) -> Result<Tensor, String> {
        let images = images_view(batch);
        let mut error = ErrorText::new();
        // SAFETY: the view is valid for the call (the shim copies its bytes before returning),
        // and the error buffer for its length.
        let pinned = unsafe {
            ffi::fk_pin(
                self.handle.as_ptr(),
                images.as_ptr(),
                error.ptr(),
                error.len(),
            )
        };
        // SAFETY: a non-null result is a new tensor handle, owned from here on.
        (!pinned.is_null())
            .then(|| unsafe { Tensor::from_ptr(pinned) })
            .ok_or_else(|| error.text())
    }

    /// Queues the copy of `pinned` to the device on the side stream.
    fn copy(self: &Arc<Self>, pinned: &Tensor) -> Result<StagedCopy, String> {
        let mut error = ErrorText::new();
        // SAFETY: the tensor and the error buffer are valid for the call; the shim keeps its
        // own reference to the pinned memory until the copy has read it.
        let staged = unsafe {
            ffi::fk_stage(
                self.handle.as_ptr(),
                pinned.as_ptr(),
                error.ptr(),
                error.len(),
            )
        };
        NonNull::new(staged)
            .map(|staged| StagedCopy {
                stager: Arc::clone(self),
                staged: Some(staged),
            })
            .ok_or_else(|| error.text())
    }
}

impl Drop for Stager {
    fn drop(&mut self) {
        // SAFETY: the handle came from fk_stager_new and is freed once.
        unsafe { ffi::fk_stager_free(self.handle.as_ptr()) }
    }
}

/// One batch's images' copy queued on the side stream.
#[derive(Debug)]
struct StagedCopy {
    stager: Arc<Stager>,
    staged: Option<NonNull<ffi::FkStaged>>,
}

// SAFETY: the staged copy owns its C++ object, whose tensors and event may be used from any
// thread.
unsafe impl Send for StagedCopy {}

impl StagedCopy {
    /// The device tensor, once the compute stream has been told to wait for the copy.
    fn take(mut self) -> Tensor {
        let staged = self.staged.take().expect("a staged copy is taken once");
        let mut images = std::ptr::null_mut();
        let mut error = ErrorText::new();
        // SAFETY: `staged` came from fk_stage and is freed by this call; the out pointer and
        // the error buffer are valid.
        let status = unsafe {
            ffi::fk_staged_take(
                self.stager.handle.as_ptr(),
                staged.as_ptr(),
                &mut images,
                error.ptr(),
                error.len(),
            )
        };
        // As tch reports libtorch errors: a device that cannot order two streams is broken.
        assert!(
            status == 0,
            "waiting for a batch's copy to the device: {}",
            error.text()
        );
        // SAFETY: on success it is a new tensor handle, owned from here on.
        unsafe { Tensor::from_ptr(images) }
    }
}

impl Drop for StagedCopy {
    fn drop(&mut self) {
        if let Some(staged) = self.staged.take() {
            // SAFETY: not taken, so still owned here.
            unsafe { ffi::fk_staged_free(staged.as_ptr()) }
        }
    }
}

mod ffi {
    use std::os::raw::{c_char, c_int};

    use torch_sys::C_tensor;

    /// `FkStager` of shim/feed.cpp.
    pub enum FkStager {}
    /// `FkStaged` of shim/feed.cpp.
    pub enum FkStaged {}

    unsafe extern "C" {
        pub fn fk_stager_new(index: c_int, error: *mut c_char, error_len: usize) -> *mut FkStager;
        pub fn fk_stager_free(stager: *mut FkStager);
        pub fn fk_pin(
            stager: *mut FkStager,
            images: *const C_tensor,
            error: *mut c_char,
            error_len: usize,
        ) -> *mut C_tensor;
        pub fn fk_stage(
            stager: *mut FkStager,
            pinned: *const C_tensor,
            error: *mut c_char,
            error_len: usize,
        ) -> *mut FkStaged;
        pub fn fk_staged_take(
            stager: *mut FkStager,
            staged: *mut FkStaged,
            images: *mut *mut C_tensor,
            error: *mut c_char,
            error_len: usize,
        ) -> c_int;
        pub fn fk_staged_free(staged: *mut FkStaged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_memory_is_on_unless_the_variable_says_no() {
        assert!(pin_memory_from_env(None));
        for yes in ["true", "True", "1", "yes", ""] {
            assert!(pin_memory_from_env(Some(yes.into())), "{yes}");
        }
        for no in ["false", "FALSE", " 0 ", "no", "off"] {
            assert!(!pin_memory_from_env(Some(no.into())), "{no}");
        }
    }
}
