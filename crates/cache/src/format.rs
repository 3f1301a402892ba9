//! The on-disk layout, little-endian throughout:
//!
//! ```text
//! page 0   header: magic, version, byte-order mark, sample count, offsets, file length,
//!          checksum of (header, metadata, index)
//! page 1.. records, each page-aligned: R, G, B planes, IR plane(s) (u8, height x width each),
//!          then boxes as f32 [class, x, y, w, h] normalised to the stored image
//! ...      metadata (JSON: build parameters, class names, sample paths, fingerprint)
//! ...      index: one 48-byte row per sample (offset, length, sizes, box count, checksum)
//! ```

use fusekit_dataset::IrNorm;
use serde::{Deserialize, Serialize};

/// First bytes of every cache file.
pub const MAGIC: [u8; 8] = *b"FKCACHE\0";
/// Format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Written as a little-endian u32; reads back differently on a foreign byte order.
pub const BYTE_ORDER_MARK: u32 = 0x0A0B_0C0D;
/// Records start on multiples of this.
pub const PAGE: u64 = 4096;
/// Header bytes that are meaningful (the rest of page 0 is zero).
pub const HEADER_LEN: usize = 72;
/// Bytes per index row.
pub const ROW_LEN: usize = 48;
/// Bytes per stored box: class, x, y, w, h as f32.
pub const BOX_LEN: usize = 20;
/// Letterbox padding value, as Ultralytics pads.
pub const PAD_VALUE: u8 = 114;

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Samples in the cache.
    pub count: u64,
    /// Offset of the metadata JSON.
    pub meta_offset: u64,
    /// Its length.
    pub meta_len: u64,
    /// Offset of the index.
    pub index_offset: u64,
    /// Offset of the first record.
    pub data_offset: u64,
    /// Total file length.
    pub file_len: u64,
    /// xxh3 of the header (this field zeroed), the metadata and the index.
    pub checksum: u64,
}

impl Header {
    /// Serialises the header (HEADER_LEN bytes).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&BYTE_ORDER_MARK.to_le_bytes());
        let fields = [
            self.count,
            self.meta_offset,
            self.meta_len,
            self.index_offset,
            self.data_offset,
            self.file_len,
            self.checksum,
        ];
        for (i, v) in fields.iter().enumerate() {
            out[16 + i * 8..24 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Parses a header; the error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!("too short for a header ({} bytes)", bytes.len()));
        }
        if bytes[0..8] != MAGIC {
            return Err("not a fusekit cache (wrong magic bytes)".into());
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version}, this fusekit reads version {FORMAT_VERSION}; rebuild the cache"
            ));
        }
        if u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) != BYTE_ORDER_MARK {
            return Err("byte-order mark does not match (written on a foreign platform?)".into());
        }
        let field = |i: usize| {
            u64::from_le_bytes(bytes[16 + i * 8..24 + i * 8].try_into().expect("8 bytes"))
        };
        Ok(Self {
            count: field(0),
            meta_offset: field(1),
            meta_len: field(2),
            index_offset: field(3),
            data_offset: field(4),
            file_len: field(5),
            checksum: field(6),
        })
    }
}

/// One index row: where a sample's record is and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRow {
    /// Record offset (page-aligned).
    pub offset: u64,
    /// Record length.
    pub len: u64,
    /// Stored height.
    pub height: u32,
    /// Stored width.
    pub width: u32,
    /// Height of the source image.
    pub source_height: u32,
    /// Width of the source image.
    pub source_width: u32,
    /// Boxes stored after the planes.
    pub boxes: u32,
    /// xxh3 of the record.
    pub checksum: u64,
}

impl IndexRow {
    /// Serialises the row (ROW_LEN bytes).
    pub fn to_bytes(&self) -> [u8; ROW_LEN] {
        let mut out = [0u8; ROW_LEN];
        out[0..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..16].copy_from_slice(&self.len.to_le_bytes());
        for (i, v) in [
            self.height,
            self.width,
            self.source_height,
            self.source_width,
            self.boxes,
        ]
        .iter()
        .enumerate()
        {
            out[16 + i * 4..20 + i * 4].copy_from_slice(&v.to_le_bytes());
        }
        out[40..48].copy_from_slice(&self.checksum.to_le_bytes());
        out
    }

    /// Parses a row of exactly ROW_LEN bytes.
    pub fn parse(bytes: &[u8]) -> Self {
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        Self {
            offset: u64_at(0),
            len: u64_at(8),
            height: u32_at(16),
            width: u32_at(20),
            source_height: u32_at(24),
            source_width: u32_at(28),
            boxes: u32_at(32),
            checksum: u64_at(40),
        }
    }
}

/// How the cache was built; stored as JSON in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Long side of every stored image.
    pub imgsz: u32,
    /// IR planes per sample: 1 when the IR images are grey, else 3.
    pub ir_channels: u8,
    /// How IR samples were mapped to 8 bits (`auto` in caches written before it was recorded,
    /// which kept 8-bit IR as it was).
    #[serde(default)]
    pub ir_norm: IrNorm,
    /// `ram` or `disk`: how the loader maps it by default.
    pub mode: String,
    /// Class names by id.
    pub names: Vec<String>,
    /// The dataset split it was built from.
    pub split: String,
    /// RGB path (relative to the dataset root) of each sample.
    pub samples: Vec<String>,
    /// Fingerprint of the inputs and parameters (hex).
    pub fingerprint: String,
    /// Pairs left out because lint found errors in them.
    pub skipped: Vec<String>,
    /// The fusekit version that wrote it.
    pub written_by: String,
}

impl Metadata {
    /// Planes per sample (3 RGB + IR).
    pub fn planes(&self) -> usize {
        3 + usize::from(self.ir_channels)
    }
}
