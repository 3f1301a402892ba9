//! Colours and text sizes shared by the plots.

use plotters::style::{RGBColor, TextStyle};

use crate::font::FAMILY;

/// Colours of classes (and of series), cycled by class id.
const PALETTE: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(255, 56, 56),
    RGBColor(0, 194, 255),
];

/// The colour of class (or series) `index`.
pub(crate) fn class_color(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// The "all classes" curve and the raw results series.
pub(crate) const MAIN_BLUE: RGBColor = RGBColor(31, 119, 180);
/// Smoothed results series.
pub(crate) const SMOOTH_ORANGE: RGBColor = RGBColor(255, 127, 14);

/// A white-to-dark-blue ramp for `t` in `0..=1` (heatmaps and histograms).
pub(crate) fn blues(t: f64) -> RGBColor {
    const STOPS: [(f64, [f64; 3]); 3] = [
        (0.0, [247.0, 251.0, 255.0]),
        (0.5, [107.0, 174.0, 214.0]),
        (1.0, [8.0, 48.0, 107.0]),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (lo, hi) = if t <= STOPS[1].0 {
        (STOPS[0], STOPS[1])
    } else {
        (STOPS[1], STOPS[2])
    };
    let f = (t - lo.0) / (hi.0 - lo.0);
    let channel = |i: usize| (lo.1[i] + (hi.1[i] - lo.1[i]) * f).round() as u8;
    RGBColor(channel(0), channel(1), channel(2))
}

/// Text of `size` pixels in the embedded font.
pub(crate) fn text(size: f64) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size))
}
