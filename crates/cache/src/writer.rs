//! Writing a cache file: records stream into a hidden temporary file beside the target, the
//! metadata, index and header follow, and only a complete, synced file is renamed into place.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use crate::format::{HEADER_LEN, Header, IndexRow, Metadata, PAGE};
use crate::reader::CacheError;

/// One sample ready to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Stored height.
    pub height: u32,
    /// Stored width.
    pub width: u32,
    /// Source image height.
    pub source_height: u32,
    /// Source image width.
    pub source_width: u32,
    /// R, G, B and IR planes, `height * width` bytes each.
    pub planes: Vec<u8>,
    /// Boxes as [class, x, y, w, h], normalised.
    pub boxes: Vec<[f32; 5]>,
}

/// Streams records into a temporary file and publishes it atomically.
pub struct CacheWriter {
    file: BufWriter<File>,
    temp: PathBuf,
    target: PathBuf,
    position: u64,
    rows: Vec<IndexRow>,
}

/// The hidden temporary file name a build of `target` writes, with `tag` to tell builds apart.
pub fn partial_path(target: &Path, tag: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.partial-{tag}"))
}

impl CacheWriter {
    /// Starts a cache that [`CacheWriter::finish`] will publish at `target`.
    pub fn create(target: &Path) -> Result<Self, CacheError> {
        let temp = partial_path(target, &std::process::id().to_string());
        let io = |source| CacheError::Io {
            path: temp.clone(),
            cause: source,
        };
        let mut file = BufWriter::with_capacity(1 << 20, File::create(&temp).map_err(io)?);
        file.write_all(&[0u8; PAGE as usize]).map_err(io)?;
        Ok(Self {
            file,
            temp: temp.clone(),
            target: target.to_path_buf(),
            position: PAGE,
            rows: Vec::new(),
        })
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
        move |source| CacheError::Io {
            path: self.temp.clone(),
            cause: source,
        }
    }

    /// Appends a record on the next page boundary.
    pub fn push(&mut self, record: &Record) -> Result<(), CacheError> {
        let offset = self.position.next_multiple_of(PAGE);
        let pad = (offset - self.position) as usize;
        let boxes: Vec<u8> = record
            .boxes
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut hasher = Xxh3::new();
        hasher.update(&record.planes);
        hasher.update(&boxes);
        let temp = self.temp.clone();
        let io = |source| CacheError::Io {
            path: temp.clone(),
            cause: source,
        };
        self.file
            .write_all(&[0u8; PAGE as usize][..pad])
            .map_err(io)?;
        self.file.write_all(&record.planes).map_err(io)?;
        self.file.write_all(&boxes).map_err(io)?;
        let len = (record.planes.len() + boxes.len()) as u64;
        self.rows.push(IndexRow {
            offset,
            len,
            height: record.height,
            width: record.width,
            source_height: record.source_height,
            source_width: record.source_width,
            boxes: record.boxes.len() as u32,
            checksum: hasher.digest(),
        });
        self.position = offset + len;
        Ok(())
    }

    /// Records written so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no record was written yet.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes metadata, index and header and renames the file into place. No fsync: the rename
    /// makes the publish atomic for interrupted processes, and after an OS crash a torn file
    /// fails its checksums on open instead of being read.
    pub fn finish(mut self, meta: &Metadata) -> Result<u64, CacheError> {
        let meta_bytes = serde_json::to_vec(meta).expect("metadata serialises");
        let index: Vec<u8> = self.rows.iter().flat_map(IndexRow::to_bytes).collect();
        let meta_offset = self.position;
        let index_offset = meta_offset + meta_bytes.len() as u64;
        let file_len = index_offset + index.len() as u64;
        let mut header = Header {
            count: self.rows.len() as u64,
            meta_offset,
            meta_len: meta_bytes.len() as u64,
            index_offset,
            data_offset: PAGE,
            file_len,
            checksum: 0,
        };
        let mut hasher = Xxh3::new();
        hasher.update(&header.to_bytes());
        hasher.update(&meta_bytes);
        hasher.update(&index);
        header.checksum = hasher.digest();
        let io_result = (|| {
            self.file.write_all(&meta_bytes)?;
            self.file.write_all(&index)?;
            self.file.seek(SeekFrom::Start(0))?;
            self.file.write_all(&header.to_bytes()[..HEADER_LEN])?;
            self.file.flush()?;
            // On disk before it takes the target's name, so a crash never leaves a cache
            // whose header promises records that were not written.
            self.file.get_ref().sync_all()
        })();
        io_result.map_err(self.io())?;
        let at_target = |source| CacheError::Io {
            path: self.target.clone(),
            cause: source,
        };
        std::fs::rename(&self.temp, &self.target).map_err(at_target)?;
        // And the rename itself, through the folder.
        let folder = self.target.parent().filter(|p| !p.as_os_str().is_empty());
        std::fs::File::open(folder.unwrap_or(Path::new(".")))
            .and_then(|dir| dir.sync_all())
            .map_err(at_target)?;
        Ok(file_len)
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        // An unfinished build leaves nothing behind (finish renamed the file away already).
        let _ = std::fs::remove_file(&self.temp);
    }
}
