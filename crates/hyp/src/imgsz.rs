//! [`Imgsz`]: the training image size, with the one rule every stage applies to it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The square training image size (and the long side caches store): a positive multiple of
/// 32, the detector's largest stride. Lint measures LBL011 at it, the cache stores images at
/// it, the trainer, validation and predict letterbox to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Imgsz(u32);

/// A size that is not a positive multiple of 32.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("imgsz must be a positive multiple of 32 (the largest stride), not {given}; try {nearest}")]
pub struct ImgszError {
    /// The size given.
    pub given: u64,
    /// The closest valid size at or above it.
    pub nearest: u64,
}

impl Imgsz {
    /// The largest stride of the detector; sizes are multiples of it.
    pub const STRIDE: u32 = 32;
    /// Ultralytics' default, 640.
    pub const DEFAULT: Imgsz = Imgsz(640);

    /// `size` when it is a positive multiple of 32.
    pub fn new(size: u32) -> Result<Imgsz, ImgszError> {
        if size >= Self::STRIDE && size.is_multiple_of(Self::STRIDE) {
            Ok(Imgsz(size))
        } else {
            Err(ImgszError {
                given: u64::from(size),
                nearest: u64::from(size.div_ceil(Self::STRIDE).max(1)) * u64::from(Self::STRIDE),
            })
        }
    }

    /// The size in pixels.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl Default for Imgsz {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for Imgsz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Imgsz {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let size: u32 = text
            .trim()
            .parse()
            .map_err(|_| format!("imgsz must be a whole number of pixels, not `{text}`"))?;
        Imgsz::new(size).map_err(|e| e.to_string())
    }
}

impl Serialize for Imgsz {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for Imgsz {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let size = u32::deserialize(deserializer)?;
        Imgsz::new(size).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiples_of_32_only() {
        assert_eq!(Imgsz::new(64).unwrap().get(), 64);
        assert_eq!(
            Imgsz::new(100).unwrap_err().to_string(),
            "imgsz must be a positive multiple of 32 (the largest stride), not 100; try 128"
        );
        assert_eq!(Imgsz::new(0).unwrap_err().nearest, 32);
        assert_eq!("96".parse::<Imgsz>().unwrap().get(), 96);
        assert!("x".parse::<Imgsz>().unwrap_err().contains("`x`"));
    }
}
