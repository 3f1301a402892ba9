//! Deriving a partner path by swapping one whole path component.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Replaces the last path component equal to `from` with `to` (for example `images` ->
/// `imagesIR`). Only whole components below the dataset root are considered, so a root such as
/// `/data/images_2024/` is never rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentSwap {
    /// The component to look for.
    pub from: OsString,
    /// Its replacement.
    pub to: OsString,
}

impl ComponentSwap {
    /// A swap of `from` for `to`.
    pub fn new(from: impl Into<OsString>, to: impl Into<OsString>) -> Self {
        Self {
            from: from.into(),
            to: to.into(),
        }
    }

    /// The inverse swap (`to` -> `from`).
    pub fn reversed(&self) -> Self {
        Self {
            from: self.to.clone(),
            to: self.from.clone(),
        }
    }

    /// Applies the swap to `path`, looking only at the part of it below `root`.
    /// Returns `None` when no component below the root equals `from`.
    pub fn apply(&self, path: &Path, root: &Path) -> Option<PathBuf> {
        let (prefix, rest) = match path.strip_prefix(root) {
            Ok(rest) => (root, rest),
            Err(_) => (Path::new(""), path),
        };
        let components: Vec<Component> = rest.components().collect();
        let index = components
            .iter()
            .rposition(|c| c.as_os_str() == self.from)?;
        let mut out = prefix.to_path_buf();
        for (i, component) in components.iter().enumerate() {
            if i == index {
                out.push(&self.to);
            } else {
                out.push(component.as_os_str());
            }
        }
        Some(out)
    }
}

impl std::fmt::Display for ComponentSwap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {}",
            self.from.to_string_lossy(),
            self.to.to_string_lossy()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_last_whole_component_below_root() {
        let swap = ComponentSwap::new("images", "imagesIR");
        let root = Path::new("/data/images");
        let got = swap.apply(Path::new("/data/images/images/train/a.jpg"), root);
        assert_eq!(got.unwrap(), Path::new("/data/images/imagesIR/train/a.jpg"));
    }

    #[test]
    fn never_rewrites_substrings_or_the_root() {
        let swap = ComponentSwap::new("images", "imagesIR");
        let root = Path::new("/data/my_images");
        assert_eq!(
            swap.apply(Path::new("/data/my_images/pics/a.jpg"), root),
            None
        );
        let got = swap
            .apply(Path::new("/data/my_images/images/images_x.jpg"), root)
            .unwrap();
        assert_eq!(got, Path::new("/data/my_images/imagesIR/images_x.jpg"));
    }

    #[test]
    fn reversed_round_trips() {
        let swap = ComponentSwap::new("visible", "infrared");
        let root = Path::new("/d");
        let ir = swap
            .apply(Path::new("/d/visible/train/1.jpg"), root)
            .unwrap();
        assert_eq!(ir, Path::new("/d/infrared/train/1.jpg"));
        assert_eq!(
            swap.reversed().apply(&ir, root).unwrap(),
            Path::new("/d/visible/train/1.jpg")
        );
    }
}
