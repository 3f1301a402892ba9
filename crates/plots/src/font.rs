//! The one font of every plot: DejaVu Sans, embedded, registered with plotters once.

use std::sync::OnceLock;

use plotters::style::{FontStyle, register_font};

use crate::PlotError;

/// The family name plots ask plotters for.
pub(crate) const FAMILY: &str = "fusekit-dejavu-sans";

/// DejaVu Sans 2.37 (see `fonts/README.md`).
static DEJAVU_SANS: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// Registers the embedded font under [`FAMILY`] on first use.
pub(crate) fn ensure_registered() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| register_font(FAMILY, FontStyle::Normal, DEJAVU_SANS).is_ok());
    if ok { Ok(()) } else { Err(PlotError::Font) }
}
