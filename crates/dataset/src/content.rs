//! What a file's bytes are, reading as little of them as possible.
//!
//! Header-mode probing reads a file's first and last [`CONTENT_EDGE`] bytes (the whole file when
//! it is at most twice that) and hashes them with the file's size into a [`ContentSample`].
//! Equal files have equal samples; files with equal samples may still differ in the middle, so
//! [`content_identities`] reads in full only the files whose samples collide with another file's
//! and gives every file an identity that is equal for two files exactly when their bytes are
//! (up to xxh3 collisions).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

/// Bytes hashed at each end of a file for its [`ContentSample`]; files of at most twice this are
/// hashed whole.
pub const CONTENT_EDGE: usize = 64 * 1024;

/// Bytes read from files, summed over every thread that reads (probing, confirmations).
#[derive(Debug, Default)]
pub struct ReadCounter(AtomicU64);

impl ReadCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts `bytes` more bytes read.
    pub fn add(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The bytes counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A file's size and partial content hash: xxh3 of its first and last [`CONTENT_EDGE`] bytes
/// seeded with the size, or xxh3 of the whole file when it is at most `2 * CONTENT_EDGE` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentSample {
    /// The file's size in bytes.
    pub len: u64,
    /// The partial hash (the full hash for small files).
    pub partial: u64,
    /// xxh3 of the whole file, when the whole file was read.
    pub full: Option<u64>,
}

impl ContentSample {
    /// The sample of a file held whole in memory (its full hash included).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        let full = xxh3_64(bytes);
        let partial = if bytes.len() <= 2 * CONTENT_EDGE {
            full
        } else {
            edge_hash(
                bytes.len() as u64,
                &bytes[..CONTENT_EDGE],
                &bytes[bytes.len() - CONTENT_EDGE..],
            )
        };
        Self {
            len: bytes.len() as u64,
            partial,
            full: Some(full),
        }
    }

    /// The sample of a file of `len > 2 * CONTENT_EDGE` bytes from its first and last
    /// [`CONTENT_EDGE`] bytes.
    pub(crate) fn of_edges(len: u64, head: &[u8], tail: &[u8]) -> Self {
        Self {
            len,
            partial: edge_hash(len, head, tail),
            full: None,
        }
    }

    /// Reads the sample of the file at `path`: its ends only, unless it is small.
    pub fn read(path: &Path, counter: &ReadCounter) -> io::Result<Self> {
        let (sample, _) = read_edges(path, counter)?;
        Ok(sample)
    }

    /// The key under which samples of possibly equal files meet.
    fn key(&self) -> (u64, u64) {
        (self.len, self.partial)
    }
}

/// What [`read_edges`] read of a file.
pub(crate) enum Edges {
    /// The whole file (at most `2 * CONTENT_EDGE` bytes).
    Whole(Vec<u8>),
    /// Its first and last [`CONTENT_EDGE`] bytes.
    Ends {
        /// The first bytes.
        head: Vec<u8>,
        /// The last bytes.
        tail: Vec<u8>,
    },
}

/// Reads a file's first and last [`CONTENT_EDGE`] bytes (all of it when small) and its sample.
pub(crate) fn read_edges(path: &Path, counter: &ReadCounter) -> io::Result<(ContentSample, Edges)> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len > 2 * CONTENT_EDGE as u64 {
        use std::io::{Seek, SeekFrom};
        let mut head = vec![0; CONTENT_EDGE];
        let mut tail = vec![0; CONTENT_EDGE];
        let read = file.read_exact(&mut head).and_then(|()| {
            file.seek(SeekFrom::Start(len - CONTENT_EDGE as u64))?;
            file.read_exact(&mut tail)
        });
        match read {
            Ok(()) => {
                counter.add(2 * CONTENT_EDGE as u64);
                let sample = ContentSample::of_edges(len, &head, &tail);
                return Ok((sample, Edges::Ends { head, tail }));
            }
            // The file shrank after its size was read: read what it holds now.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e),
        }
    }
    let bytes = std::fs::read(path)?;
    counter.add(bytes.len() as u64);
    Ok((ContentSample::of_bytes(&bytes), Edges::Whole(bytes)))
}

fn edge_hash(len: u64, head: &[u8], tail: &[u8]) -> u64 {
    let mut hasher = Xxh3::with_seed(len);
    hasher.update(head);
    hasher.update(tail);
    hasher.digest()
}

/// xxh3 of a whole file, read in chunks.
fn full_hash(path: &Path, counter: &ReadCounter) -> io::Result<u64> {
    let mut file = File::open(path)?;
    let mut hasher = Xxh3::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        counter.add(n as u64);
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.digest())
}

/// The content identity of each file: equal for two files exactly when their bytes are equal
/// (up to xxh3 collisions), and the same for the same files on any machine and thread count.
///
/// A file whose sample (size and partial hash) no other file shares has its partial hash as
/// identity; files whose samples collide are identified by xxh3 of their whole content, read
/// here when the sample lacks it. The same path listed twice counts as one file. An error is
/// a confirmation read that failed.
pub fn content_identities(
    files: &[(&Path, ContentSample)],
    counter: &ReadCounter,
) -> Vec<io::Result<u64>> {
    let mut paths_per_key: HashMap<(u64, u64), Vec<&Path>> = HashMap::new();
    for (path, sample) in files {
        let paths = paths_per_key.entry(sample.key()).or_default();
        if !paths.contains(path) {
            paths.push(path);
        }
    }
    let collides = |sample: &ContentSample| paths_per_key[&sample.key()].len() > 1;
    let mut to_read: Vec<&Path> = files
        .iter()
        .filter(|(_, sample)| sample.full.is_none() && collides(sample))
        .map(|(path, _)| *path)
        .collect();
    to_read.sort_unstable();
    to_read.dedup();
    let read: HashMap<&Path, Result<u64, (io::ErrorKind, String)>> = to_read
        .par_iter()
        .map(|&path| {
            let hash = full_hash(path, counter).map_err(|e| (e.kind(), e.to_string()));
            (path, hash)
        })
        .collect();
    files
        .iter()
        .map(|(path, sample)| match sample.full {
            _ if !collides(sample) => Ok(sample.partial),
            Some(full) => Ok(full),
            None => read[path]
                .clone()
                .map_err(|(kind, message)| io::Error::new(kind, message)),
        })
        .collect()
}
