//! The error buffer the C++ shims of this crate write a message into.

use std::os::raw::c_char;

/// A buffer a shim function writes its error message into (NUL-terminated, truncated to fit).
pub(crate) struct ErrorText([u8; 1024]);

impl ErrorText {
    pub(crate) fn new() -> Self {
        Self([0; 1024])
    }

    pub(crate) fn ptr(&mut self) -> *mut c_char {
        self.0.as_mut_ptr().cast()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The message, or `unknown error` when the shim wrote none that ends in NUL.
    pub(crate) fn text(&self) -> String {
        std::ffi::CStr::from_bytes_until_nul(&self.0).map_or_else(
            |_| "unknown error".into(),
            |s| s.to_string_lossy().into_owned(),
        )
    }
}
