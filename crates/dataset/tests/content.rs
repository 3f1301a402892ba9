//! Content samples and identities: header-mode probing reads the ends of big files only, and
//! identities stay exact (equal exactly when the bytes are) through confirmation reads.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use fusekit_dataset::{
    CONTENT_EDGE, ContentSample, DecodeLevel, ImageFormat, ReadCounter, content_identities,
    probe_bytes, probe_image,
};
use image::{DynamicImage, RgbImage};

const BIG: usize = 3 * CONTENT_EDGE + 1234;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Deterministic pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Writes two big files `a` and `b` of noise from `seed` that differ in one middle byte only.
fn middle_differs(dir: &Path, seed: u64) -> (PathBuf, PathBuf) {
    let base = noise(BIG, seed);
    let mut other = base.clone();
    other[BIG / 2] ^= 0xFF;
    (write(dir, "a", &base), write(dir, "b", &other))
}

fn identities(paths: &[&Path], counter: &ReadCounter) -> Vec<u64> {
    let samples: Vec<(&Path, ContentSample)> = paths
        .iter()
        .map(|p| (*p, ContentSample::read(p, counter).unwrap()))
        .collect();
    content_identities(&samples, counter)
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn same_size_different_bytes_are_different_and_equal_bytes_are_equal() {
    let dir = tempfile::tempdir().unwrap();
    for len in [100, 2 * CONTENT_EDGE, BIG] {
        let a = write(dir.path(), "a", &noise(len, 1));
        let b = write(dir.path(), "b", &noise(len, 2));
        let copy = write(dir.path(), "copy", &noise(len, 1));
        let counter = ReadCounter::new();
        let ids = identities(&[&a, &b, &copy], &counter);
        assert_ne!(ids[0], ids[1], "{len} bytes");
        assert_eq!(ids[0], ids[2], "{len} bytes");
        // Small files are read once, whole; big ones at their ends, and the two equal ones
        // again in full to confirm.
        let expected = if len <= 2 * CONTENT_EDGE {
            3 * len
        } else {
            3 * 2 * CONTENT_EDGE + 2 * len
        };
        assert_eq!(counter.get(), expected as u64, "{len} bytes");
    }
}

#[test]
fn equal_ends_with_a_different_middle_are_different() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = middle_differs(dir.path(), 3);
    let counter = ReadCounter::new();
    let (sa, sb) = (
        ContentSample::read(&a, &counter).unwrap(),
        ContentSample::read(&b, &counter).unwrap(),
    );
    assert_eq!(
        counter.get(),
        4 * CONTENT_EDGE as u64,
        "only the ends are read"
    );
    assert_eq!(
        (sa, sa.full),
        (sb, None),
        "the samples collide: the middle is not read"
    );
    let ids = content_identities(&[(&a, sa), (&b, sb)], &counter);
    assert_ne!(ids[0].as_ref().unwrap(), ids[1].as_ref().unwrap());
    assert_eq!(counter.get(), (4 * CONTENT_EDGE + 2 * BIG) as u64);
}

#[test]
fn identities_do_not_depend_on_order_or_on_how_much_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = middle_differs(dir.path(), 4);
    let c = write(dir.path(), "c", &std::fs::read(&a).unwrap());
    let d = write(dir.path(), "d", &noise(BIG, 5));
    let counter = ReadCounter::new();
    let forward = identities(&[&a, &b, &c, &d], &counter);
    let backward = identities(&[&d, &c, &b, &a], &counter);
    assert_eq!(
        forward,
        backward.into_iter().rev().collect::<Vec<_>>(),
        "same files, same identities in any order"
    );
    // Samples taken from whole files (as `--decode full` does) give the same identities.
    let whole: Vec<(&Path, ContentSample)> = [&a, &b, &c, &d]
        .iter()
        .map(|p| {
            (
                p.as_path(),
                ContentSample::of_bytes(&std::fs::read(p).unwrap()),
            )
        })
        .collect();
    let before = counter.get();
    let from_whole: Vec<u64> = content_identities(&whole, &counter)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(from_whole, forward);
    assert_eq!(
        counter.get(),
        before,
        "full hashes at hand are not read again"
    );
    // One path listed twice is one file: nothing to confirm.
    let sample = ContentSample::read(&d, &counter).unwrap();
    let before = counter.get();
    let twice = content_identities(&[(&d, sample), (&d, sample)], &counter);
    assert_eq!(counter.get(), before);
    assert_eq!(twice[0].as_ref().unwrap(), twice[1].as_ref().unwrap());
}

#[test]
fn a_file_gone_before_its_confirmation_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a", &noise(BIG, 6));
    let b = write(dir.path(), "b", &noise(BIG, 6));
    let counter = ReadCounter::new();
    let samples = [
        (a.as_path(), ContentSample::read(&a, &counter).unwrap()),
        (b.as_path(), ContentSample::read(&b, &counter).unwrap()),
    ];
    std::fs::remove_file(&b).unwrap();
    let ids = content_identities(&samples, &counter);
    assert!(ids[0].is_ok());
    assert_eq!(
        ids[1].as_ref().unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn noisy_image(width: u32, height: u32, seed: u64) -> DynamicImage {
    let bytes = noise((width * height * 3) as usize, seed);
    DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, bytes).unwrap())
}

#[test]
fn header_probe_of_a_big_file_reads_its_ends_only() {
    let dir = tempfile::tempdir().unwrap();
    let counter = ReadCounter::new();
    for (name, format) in [
        ("a.jpg", ImageFormat::Jpeg),
        ("a.png", ImageFormat::Png),
        ("a.bmp", ImageFormat::Bmp),
    ] {
        let bytes = encode(&noisy_image(640, 512, 7), format);
        assert!(bytes.len() > 2 * CONTENT_EDGE, "{name}: {}", bytes.len());
        let path = write(dir.path(), name, &bytes);
        let before = counter.get();
        let info = probe_image(&path, DecodeLevel::Header, None, &counter).unwrap();
        assert_eq!(counter.get() - before, 2 * CONTENT_EDGE as u64, "{name}");
        assert_eq!((info.format, info.width, info.height), (format, 640, 512));
        assert!(!info.truncated, "{name}");
        let whole = probe_bytes(&bytes, DecodeLevel::Header, None).unwrap();
        assert_eq!(info.content.partial, whole.content.partial, "{name}");
        assert_eq!(info.content.len, bytes.len() as u64);
        let before = counter.get();
        let full = probe_image(&path, DecodeLevel::Full, None, &counter).unwrap();
        assert_eq!(counter.get() - before, bytes.len() as u64, "{name}");
        assert_eq!(full.content, whole.content);
    }
}

#[test]
fn end_markers_and_headers_past_the_first_bytes_still_probe() {
    let dir = tempfile::tempdir().unwrap();
    let jpeg = encode(&noisy_image(320, 256, 8), ImageFormat::Jpeg);
    let counter = ReadCounter::new();

    // Truncated: no end marker in the last bytes.
    let cut = write(dir.path(), "cut.jpg", &jpeg[..jpeg.len() - 100]);
    let info = probe_image(&cut, DecodeLevel::Header, None, &counter).unwrap();
    assert!(info.truncated);

    // Zero padding longer than the tail after the end marker: the whole file settles it.
    let mut padded = jpeg.clone();
    padded.resize(jpeg.len() + CONTENT_EDGE + 10, 0);
    let padded = write(dir.path(), "padded.jpg", &padded);
    let info = probe_image(&padded, DecodeLevel::Header, None, &counter).unwrap();
    assert!(!info.truncated);

    // Comment segments push the frame header past the first bytes: read whole, same answer.
    let mut long_header = jpeg[..2].to_vec();
    for _ in 0..3 {
        let comment = vec![b'x'; 60_000];
        long_header.extend([0xFF, 0xFE]);
        long_header.extend(((comment.len() + 2) as u16).to_be_bytes());
        long_header.extend(comment);
    }
    long_header.extend(&jpeg[2..]);
    let path = write(dir.path(), "long-header.jpg", &long_header);
    let before = counter.get();
    let info = probe_image(&path, DecodeLevel::Header, None, &counter).unwrap();
    assert_eq!((info.width, info.height, info.truncated), (320, 256, false));
    assert_eq!(
        counter.get() - before,
        (2 * CONTENT_EDGE + long_header.len()) as u64
    );

    // Garbage is reported as today, from the first bytes.
    let garbage = write(dir.path(), "garbage.jpg", &noise(BIG, 9));
    assert!(probe_image(&garbage, DecodeLevel::Header, None, &counter).is_err());
}
