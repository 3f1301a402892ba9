//! Opening a cache: every offset and size is checked against the file before any record is
//! touched, so no byte pattern makes a read go out of bounds.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{Advice, Mmap, MmapOptions};
use xxhash_rust::xxh3::Xxh3;

use crate::format::{BOX_LEN, HEADER_LEN, Header, IndexRow, Metadata, PAGE, ROW_LEN};

/// A cache that cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file could not be read.
    #[error("{path}: {cause}")]
    Io {
        /// The cache file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The header, metadata or index is wrong (truncated, corrupted, foreign, old version).
    #[error("{path}: {message}")]
    Invalid {
        /// The cache file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// One record fails its checksum.
    #[error(
        "{path}: record {index} ({sample}) fails its checksum: the cache is corrupted; rebuild it with `fusekit cache build --force`"
    )]
    Record {
        /// The cache file.
        path: PathBuf,
        /// Record index.
        index: usize,
        /// The sample's RGB path.
        sample: String,
    },
}

/// How the file is mapped (`ram` or `disk` in files and on the command line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapMode {
    /// Read the whole file into the page cache up front (MAP_POPULATE): training never waits
    /// on the disk.
    #[default]
    Ram,
    /// Map lazily; pages are read on first touch.
    Disk,
}

impl std::str::FromStr for MapMode {
    type Err = String;

    /// `ram` or `disk`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "ram" => Ok(MapMode::Ram),
            "disk" => Ok(MapMode::Disk),
            other => Err(format!("mode must be `ram` or `disk`, not `{other}`")),
        }
    }
}

/// An open cache file.
#[derive(Debug)]
pub struct Cache {
    path: PathBuf,
    map: Mmap,
    header: Header,
    meta: Metadata,
    rows: Vec<IndexRow>,
    verified: Vec<AtomicU64>,
}

/// One sample's planes and boxes, borrowed from the map.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    /// Stored height.
    pub height: usize,
    /// Stored width.
    pub width: usize,
    /// R, G, B and IR planes, each `height * width` bytes.
    pub planes: &'a [u8],
    /// Boxes as [class, x, y, w, h], normalised to the stored image.
    pub boxes: Vec<[f32; 5]>,
}

impl Sample<'_> {
    /// Plane `k` (0..3 RGB, then IR).
    pub fn plane(&self, k: usize) -> &[u8] {
        let n = self.height * self.width;
        &self.planes[k * n..(k + 1) * n]
    }
}

impl Cache {
    /// Opens and validates a cache: header, metadata, index, and every row's bounds.
    /// `mode` overrides the mode the cache was built for.
    pub fn open(path: &Path, mode: Option<MapMode>) -> Result<Self, CacheError> {
        let invalid = |message: String| CacheError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let io = |source| CacheError::Io {
            path: path.to_path_buf(),
            cause: source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < PAGE {
            return Err(invalid(format!(
                "truncated: {len} bytes, shorter than the header page"
            )));
        }
        // SAFETY: the map is read-only; fusekit replaces caches by rename and never writes into
        // a published file, so the mapped bytes do not change under us.
        let probe = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header = Header::parse(&probe[..HEADER_LEN]).map_err(invalid)?;
        if header.file_len != len {
            return Err(invalid(format!(
                "truncated or extended: header says {} bytes, file has {len}",
                header.file_len
            )));
        }
        let meta: Metadata = {
            let range = checked_range(header.meta_offset, header.meta_len, len)
                .ok_or_else(|| invalid("metadata lies outside the file".into()))?;
            serde_json::from_slice(&probe[range])
                .map_err(|e| invalid(format!("metadata is not valid: {e}")))?
        };
        let index_len = header
            .count
            .checked_mul(ROW_LEN as u64)
            .ok_or_else(|| invalid("sample count overflows".into()))?;
        let index = checked_range(header.index_offset, index_len, len)
            .ok_or_else(|| invalid("index lies outside the file".into()))?;
        let mut hasher = Xxh3::new();
        let mut head = probe[..HEADER_LEN].to_vec();
        head[64..72].fill(0);
        hasher.update(&head);
        hasher.update(
            &probe[header.meta_offset as usize..(header.meta_offset + header.meta_len) as usize],
        );
        hasher.update(&probe[index.clone()]);
        if hasher.digest() != header.checksum {
            return Err(invalid(
                "header, metadata or index fails its checksum: the cache is corrupted".into(),
            ));
        }
        if meta.samples.len() as u64 != header.count {
            return Err(invalid(format!(
                "{} sample paths for {} samples",
                meta.samples.len(),
                header.count
            )));
        }
        let rows: Vec<IndexRow> = probe[index]
            .chunks_exact(ROW_LEN)
            .map(IndexRow::parse)
            .collect();
        let planes = meta.planes() as u64;
        for (i, row) in rows.iter().enumerate() {
            let expected = u64::from(row.height) * u64::from(row.width) * planes
                + u64::from(row.boxes) * BOX_LEN as u64;
            let sound = row.offset >= header.data_offset
                && row.offset.is_multiple_of(PAGE)
                && row.height > 0
                && row.width > 0
                && row.height.max(row.width) <= meta.imgsz
                && row.len == expected
                && row
                    .offset
                    .checked_add(row.len)
                    .is_some_and(|end| end <= header.meta_offset.min(header.index_offset));
            if !sound {
                return Err(invalid(format!(
                    "index row {i} ({}) is inconsistent",
                    meta.samples[i]
                )));
            }
        }
        drop(probe);
        let map = match mode.unwrap_or(if meta.mode == "ram" {
            MapMode::Ram
        } else {
            MapMode::Disk
        }) {
            // SAFETY: as above.
            MapMode::Ram => unsafe { MmapOptions::new().populate().map(&file) }.map_err(io)?,
            MapMode::Disk => {
                // SAFETY: as above.
                let map = unsafe { Mmap::map(&file) }.map_err(io)?;
                let _ = map.advise(Advice::Random);
                map
            }
        };
        let verified = (0..rows.len().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            map,
            header,
            meta,
            rows,
            verified,
        })
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The build metadata.
    pub fn meta(&self) -> &Metadata {
        &self.meta
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the cache holds no sample.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The index row of sample `i`.
    pub fn row(&self, i: usize) -> &IndexRow {
        &self.rows[i]
    }

    /// Sample `i` (panics if `i >= len()`); its checksum is verified on first read.
    pub fn sample(&self, i: usize) -> Result<Sample<'_>, CacheError> {
        let row = &self.rows[i];
        let record = &self.map[row.offset as usize..(row.offset + row.len) as usize];
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if self.verified[word].load(Ordering::Relaxed) & bit == 0 {
            self.check(i, record)?;
            self.verified[word].fetch_or(bit, Ordering::Relaxed);
        }
        let (height, width) = (row.height as usize, row.width as usize);
        let pixels = height * width * self.meta.planes();
        let boxes = record[pixels..]
            .chunks_exact(BOX_LEN)
            .map(|b| {
                std::array::from_fn(|k| {
                    f32::from_le_bytes(b[k * 4..k * 4 + 4].try_into().expect("4 bytes"))
                })
            })
            .collect();
        Ok(Sample {
            height,
            width,
            planes: &record[..pixels],
            boxes,
        })
    }

    fn check(&self, i: usize, record: &[u8]) -> Result<(), CacheError> {
        if xxhash_rust::xxh3::xxh3_64(record) != self.rows[i].checksum {
            return Err(CacheError::Record {
                path: self.path.clone(),
                index: i,
                sample: self.meta.samples[i].clone(),
            });
        }
        Ok(())
    }

    /// Checks every record's checksum (in parallel) and returns the indices that fail.
    pub fn verify_all(&self, progress: &(dyn Fn() + Sync)) -> Vec<usize> {
        use rayon::prelude::*;
        (0..self.rows.len())
            .into_par_iter()
            .filter(|&i| {
                let row = &self.rows[i];
                let failed = self
                    .check(
                        i,
                        &self.map[row.offset as usize..(row.offset + row.len) as usize],
                    )
                    .is_err();
                progress();
                failed
            })
            .collect()
    }
}

fn checked_range(offset: u64, len: u64, file_len: u64) -> Option<std::ops::Range<usize>> {
    let end = offset.checked_add(len)?;
    (end <= file_len && offset >= PAGE).then_some(offset as usize..end as usize)
}
