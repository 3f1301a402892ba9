//! Injecting one instance of a lint finding into a generated dataset.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageFormat};

use crate::{SynthError, SynthOptions, io_error, write};

macro_rules! defects {
    ($($variant:ident => $code:literal,)*) => {
        /// A defect that makes `fusekit lint` report the code of the same name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Defect { $(
            #[doc = concat!("Triggers ", $code, ".")]
            $variant,
        )* }

        impl Defect {
            /// Every defect.
            pub const ALL: &'static [Defect] = &[$(Defect::$variant),*];

            /// The lint code it triggers.
            pub fn code(self) -> &'static str {
                match self { $(Defect::$variant => $code,)* }
            }
        }
    };
}

defects! {
    Pair001 => "PAIR001", Pair002 => "PAIR002", Pair003 => "PAIR003", Pair004 => "PAIR004",
    Pair005 => "PAIR005", Pair006 => "PAIR006", Pair007 => "PAIR007", Pair008 => "PAIR008",
    Img001 => "IMG001", Img002 => "IMG002", Img003 => "IMG003", Img004 => "IMG004",
    Img005 => "IMG005", Img006 => "IMG006", Img007 => "IMG007",
    Lbl001 => "LBL001", Lbl002 => "LBL002", Lbl003 => "LBL003", Lbl004 => "LBL004",
    Lbl005 => "LBL005", Lbl006 => "LBL006", Lbl007 => "LBL007", Lbl008 => "LBL008",
    Lbl009 => "LBL009", Lbl010 => "LBL010", Lbl011 => "LBL011", Lbl012 => "LBL012",
    Lbl013 => "LBL013",
    Ds002 => "DS002", Ds003 => "DS003", Ds004 => "DS004",
}

impl Defect {
    /// Parses a lint code (case-insensitive) into the defect that triggers it.
    pub fn parse(code: &str) -> Option<Defect> {
        Defect::ALL
            .iter()
            .copied()
            .find(|d| d.code().eq_ignore_ascii_case(code))
    }

    /// Whether lint needs `--decode full` to see it.
    pub fn needs_full_decode(self) -> bool {
        matches!(self, Defect::Img006 | Defect::Pair007 | Defect::Pair008)
    }
}

/// Applies a file-level defect to the pair `stem` under `out`.
pub(crate) fn apply(
    defect: Defect,
    out: &Path,
    stem: &str,
    options: &SynthOptions,
) -> Result<(), SynthError> {
    let rgb = out.join("images").join(format!("{stem}.jpg"));
    let ir = out.join("imagesIR").join(format!("{stem}.jpg"));
    let label = out.join("labels").join(format!("{stem}.txt"));
    let append = |row: &str| -> Result<(), SynthError> {
        let mut text = std::fs::read_to_string(&label).map_err(io_error(&label))?;
        text.push_str(row);
        text.push('\n');
        write(&label, text.as_bytes())
    };
    match defect {
        Defect::Pair001 => remove(&ir),
        Defect::Pair002 => copy(&ir, &out.join("imagesIR").join(format!("ir_only_{stem}.jpg"))),
        Defect::Pair003 => {
            let image = open(&ir)?;
            let smaller = image.resize_exact(image.width() / 2, image.height() / 2, image::imageops::FilterType::Triangle);
            write(&ir, &encode(&smaller, ImageFormat::Jpeg))
        }
        Defect::Pair004 => {
            let png = encode(&open(&ir)?, ImageFormat::Png);
            remove(&ir)?;
            write(&ir.with_extension("png"), &png)
        }
        Defect::Pair005 => write(&ir.with_extension("png"), &encode(&open(&ir)?, ImageFormat::Png)),
        Defect::Pair006 => copy(&rgb, &ir),
        // Rendered with its IR content shifted (see `pair_shift`).
        Defect::Pair007 => Ok(()),
        // The RGB and IR files trade places: the IR folder holds a colour photo.
        Defect::Pair008 => {
            let (colour, grey) = (read(&rgb)?, read(&ir)?);
            write(&rgb, &grey)?;
            write(&ir, &colour)
        }
        Defect::Img001 => write(&rgb, &[0x13; 4096]),
        Defect::Img002 => {
            let bytes = std::fs::read(&rgb).map_err(io_error(&rgb))?;
            write(&rgb, &bytes[..bytes.len() * 6 / 10])
        }
        Defect::Img003 => {
            for path in [&rgb, &ir] {
                let tiny = open(path)?.resize_exact(8, 8, image::imageops::FilterType::Triangle);
                write(path, &encode(&tiny, ImageFormat::Jpeg))?;
            }
            Ok(())
        }
        // A GIF under a .jpg name: content fusekit does not read.
        Defect::Img004 => write(&rgb, b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b"),
        Defect::Img005 => {
            let bytes = std::fs::read(&rgb).map_err(io_error(&rgb))?;
            write(&rgb, &with_exif_orientation(&bytes, 6))
        }
        Defect::Img006 => {
            let flat = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(options.width, options.height, image::Rgb([20, 20, 24])));
            write(&rgb, &encode(&flat, ImageFormat::Jpeg))
        }
        Defect::Img007 => {
            let copy_stem = format!("{stem}_copy");
            copy(&rgb, &rgb.with_file_name(format!("{copy_stem}.jpg")))?;
            copy(&ir, &ir.with_file_name(format!("{copy_stem}.jpg")))?;
            copy(&label, &label.with_file_name(format!("{copy_stem}.txt")))
        }
        Defect::Lbl001 => remove(&label),
        Defect::Lbl002 => write(&label, b""),
        Defect::Lbl003 => append("0 0.5 0.5 0.1"),
        Defect::Lbl004 => append("0 nan 0.5 0.1 0.1"),
        Defect::Lbl005 => append(&format!("{} 0.5 0.5 0.1 0.1", options.names.len() + 4)),
        Defect::Lbl006 => append("0 1.5 0.5 0.1 0.1"),
        Defect::Lbl007 => append("0 0.990000 0.500000 0.050000 0.100000"),
        Defect::Lbl008 => append("0 0.5 0.5 0 0.1"),
        Defect::Lbl009 => {
            let text = std::fs::read_to_string(&label).map_err(io_error(&label))?;
            append(text.lines().next().unwrap_or("0 0.5 0.5 0.1 0.1"))
        }
        Defect::Lbl010 => copy(&label, &label.with_file_name(format!("label_only_{stem}.txt"))),
        Defect::Lbl011 => append("0 0.5 0.5 0.0005 0.1"),
        Defect::Lbl012 => append("0 0.2 0.2 0.3 0.2 0.25 0.35"),
        // A row ending in a Latin-1 `é` (one byte, 0xE9): the file is no longer UTF-8 text.
        Defect::Lbl013 => {
            let mut bytes = std::fs::read(&label).map_err(io_error(&label))?;
            bytes.extend_from_slice(b"0 0.5 0.5 0.1 0.1\xe9\n");
            write(&label, &bytes)
        }
        Defect::Ds002 | Defect::Ds003 | Defect::Ds004 => Ok(()),
    }
}

fn open(path: &Path) -> Result<DynamicImage, SynthError> {
    image::open(path).map_err(|e| SynthError::Options(format!("{}: {e}", path.display())))
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, format)
        .expect("encoding in memory cannot fail");
    out.into_inner()
}

fn read(path: &Path) -> Result<Vec<u8>, SynthError> {
    std::fs::read(path).map_err(io_error(path))
}

fn copy(from: &Path, to: &Path) -> Result<(), SynthError> {
    std::fs::copy(from, to).map(|_| ()).map_err(io_error(to))
}

fn remove(path: &Path) -> Result<(), SynthError> {
    std::fs::remove_file(path).map_err(io_error(path))
}

/// The JPEG with an EXIF APP1 segment holding only an orientation tag, right after SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u8) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"II*\0");
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&u32::from(orientation).to_le_bytes());
    tiff.extend_from_slice(&0u32.to_le_bytes());
    let payload_len = 6 + tiff.len();
    let mut out = Vec::with_capacity(jpeg.len() + payload_len + 4);
    out.extend_from_slice(&jpeg[..2]);
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload_len + 2) as u16).to_be_bytes());
    out.extend_from_slice(b"Exif\0\0");
    out.extend_from_slice(&tiff);
    out.extend_from_slice(&jpeg[2..]);
    out
}
