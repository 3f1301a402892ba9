//! The few NumPy routines the reference metrics rest on, with NumPy's rounding behaviour
//! (same operation order), so that results agree to the last bits where it matters.

/// `np.linspace(start, stop, n)`: `i * step + start`, the last point set to `stop`.
pub(crate) fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    let step = (stop - start) / n.saturating_sub(1).max(1) as f64;
    let mut y: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    if let Some(last) = y.last_mut()
        && n > 1
    {
        *last = stop;
    }
    y
}

/// `np.interp(x, xp, fp, left, right)` for one point; `xp` must be non-decreasing, non-empty
/// and as long as `fp`. Between duplicate `xp` values the last one wins, as in NumPy.
pub(crate) fn interp(x: f64, xp: &[f64], fp: &[f64], left: f64, right: f64) -> f64 {
    let (Some(&first), Some(&last)) = (xp.first(), xp.last()) else {
        return left;
    };
    if x > last {
        return right;
    }
    if x < first {
        return left;
    }
    // Last index with xp[j] <= x; exists because x >= xp[0].
    let j = xp.partition_point(|&v| v <= x) - 1;
    if j + 1 == xp.len() || xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    slope * (x - xp[j]) + fp[j]
}

/// `np.trapezoid(y, x)`.
pub(crate) fn trapezoid(y: &[f64], x: &[f64]) -> f64 {
    x.windows(2)
        .zip(y.windows(2))
        .map(|(x, y)| (x[1] - x[0]) * (y[1] + y[0]) / 2.0)
        .sum()
}

/// A centred moving average `width` values wide (odd), the ends padded with copies of the
/// end values, as Ultralytics' `smooth`; each window is summed as `v * (1 / width)`.
pub(crate) fn box_filter(values: &[f64], width: usize) -> Vec<f64> {
    let (Some(&first), Some(&last)) = (values.first(), values.last()) else {
        return Vec::new();
    };
    let half = width / 2;
    let mut padded = Vec::with_capacity(values.len() + 2 * half);
    padded.extend(std::iter::repeat_n(first, half));
    padded.extend_from_slice(values);
    padded.extend(std::iter::repeat_n(last, half));
    let weight = 1.0 / width as f64;
    padded
        .windows(2 * half + 1)
        .map(|window| window.iter().map(|v| v * weight).sum())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy_bits() {
        // Values printed by NumPy 2.4 (`repr`), where i * step + start differs from i / 100.
        let x = linspace(0.0, 1.0, 101);
        assert_eq!(x[35], 0.35000000000000003);
        assert_eq!(x[57], 0.5700000000000001);
        assert_eq!(x[95], 0.9500000000000001);
        assert_eq!(x[100], 1.0);
        let t = linspace(0.5, 0.95, 10);
        assert_eq!(t[8], 0.8999999999999999);
        assert_eq!(t[9], 0.95);
        assert_eq!(linspace(0.0, 1.0, 1), vec![0.0]);
    }

    #[test]
    fn interp_like_numpy() {
        let xp = [0.0, 0.5, 0.5, 1.0];
        let fp = [1.0, 0.8, 0.6, 0.0];
        assert_eq!(interp(-0.1, &xp, &fp, 7.0, 9.0), 7.0);
        assert_eq!(interp(1.1, &xp, &fp, 7.0, 9.0), 9.0);
        assert_eq!(interp(0.5, &xp, &fp, 7.0, 9.0), 0.6, "last duplicate wins");
        assert!((interp(0.25, &xp, &fp, 7.0, 9.0) - 0.9).abs() < 1e-15);
        assert!((interp(0.75, &xp, &fp, 7.0, 9.0) - 0.3).abs() < 1e-15);
        assert_eq!(interp(1.0, &xp, &fp, 7.0, 9.0), 0.0);
        assert_eq!(interp(0.3, &[], &[], 7.0, 9.0), 7.0);
    }

    #[test]
    fn box_filter_pads_with_end_values() {
        let smoothed = box_filter(&[0.0, 3.0, 6.0, 9.0], 3);
        assert_eq!(smoothed.len(), 4);
        assert!((smoothed[0] - 1.0).abs() < 1e-12, "(0 + 0 + 3) / 3");
        assert!((smoothed[1] - 3.0).abs() < 1e-12);
        assert!((smoothed[3] - 8.0).abs() < 1e-12, "(6 + 9 + 9) / 3");
        assert!(box_filter(&[], 3).is_empty());
    }

    #[test]
    fn trapezoid_area() {
        assert_eq!(trapezoid(&[0.0, 1.0, 1.0], &[0.0, 1.0, 3.0]), 2.5);
        assert_eq!(trapezoid(&[4.0], &[1.0]), 0.0);
    }
}
