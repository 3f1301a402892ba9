//! Device failures caught as panics: tch panics on libtorch errors (an out-of-memory error
//! among them) and synchronised BatchNorm unwinds with a [`DistError`]; the trainer turns
//! them back into errors, and the panic hook stays quiet for exactly those.

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::sync::Arc;

use fusekit_dist::DistError;

/// A device failure caught as a panic: tch panics on libtorch errors, and synchronised
/// BatchNorm unwinds with a [`DistError`].
pub(crate) enum DeviceFailure {
    /// The device ran out of memory (the error's text).
    OutOfMemory(String),
    /// A collective failed.
    Dist(DistError),
}

thread_local! {
    /// How many [`catch_device_failure`] calls this thread is inside: their out-of-memory and
    /// [`DistError`] panics become errors, so the panic hook prints nothing for them.
    static CATCHING: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f`, turning a panic that reports an out-of-memory error or carries a [`DistError`]
/// into `Err`; other panics continue.
pub(crate) fn catch_device_failure<T>(f: impl FnOnce() -> T) -> Result<T, DeviceFailure> {
    CATCHING.with(|depth| depth.set(depth.get() + 1));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|depth| depth.set(depth.get() - 1));
    result.map_err(|payload| {
        if let Some(text) = panic_text(&*payload).filter(|text| is_out_of_memory(text)) {
            return DeviceFailure::OutOfMemory(text.to_owned());
        }
        match payload.downcast::<DistError>() {
            Ok(error) => DeviceFailure::Dist(*error),
            Err(payload) => panic::resume_unwind(payload),
        }
    })
}

fn panic_text(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
}

/// libtorch's allocation failures: the caching allocator's and cuBLAS'.
pub(crate) fn is_out_of_memory(text: &str) -> bool {
    text.contains("out of memory") || text.contains("CUBLAS_STATUS_ALLOC_FAILED")
}

type PanicHook = dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static;

/// While alive, the out-of-memory and [`DistError`] panics that a [`catch_device_failure`] on
/// the same thread turns into errors print nothing (the trainer reports them itself); every
/// other panic, on any thread, goes to the previous hook, which is restored on drop.
pub(crate) struct QuietDeviceFailures {
    previous: Arc<PanicHook>,
}

impl QuietDeviceFailures {
    pub(crate) fn install() -> Self {
        let previous: Arc<PanicHook> = Arc::from(panic::take_hook());
        let fallback = previous.clone();
        panic::set_hook(Box::new(move |info| {
            let caught = CATCHING.with(Cell::get) > 0
                && (panic_text(info.payload()).is_some_and(is_out_of_memory)
                    || info.payload().is::<DistError>());
            if !caught {
                fallback(info);
            }
        }));
        Self { previous }
    }
}

impl Drop for QuietDeviceFailures {
    fn drop(&mut self) {
        drop(panic::take_hook());
        let previous = self.previous.clone();
        panic::set_hook(Box::new(move |info| previous(info)));
    }
}
