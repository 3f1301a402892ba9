//! IR as thermal cameras write it: 16-bit samples (IMG008), planes that would be cached nearly
//! flat (IMG009), and IR images with colour (PAIR008).

use std::path::{Path, PathBuf};

use fusekit_dataset::{Dataset, DecodeLevel, IrNorm};
use fusekit_lint::{Code, Finding, LintOptions, LintRun, Severity, Subject, lint};
use fusekit_synth::{Defect, FileFormat, SynthOptions, generate};

fn synth(dir: &Path, options: SynthOptions) -> PathBuf {
    let options = SynthOptions {
        pairs: 12,
        width: 96,
        height: 80,
        scenes: 2,
        ..options
    };
    generate(dir, &options, &|| {}).unwrap().data_yaml
}

fn sixteen_bit(dir: &Path, format: FileFormat) -> PathBuf {
    synth(
        dir,
        SynthOptions {
            ir_bits: 16,
            ir_channels: 1,
            format,
            ..SynthOptions::default()
        },
    )
}

fn run(yaml: &Path, decode: DecodeLevel, ir_norm: Option<IrNorm>) -> LintRun {
    let dataset = Dataset::open(yaml, None).unwrap();
    lint(
        &dataset,
        &LintOptions {
            decode,
            ir_norm,
            ..LintOptions::default()
        },
        &|| {},
    )
}

fn of_code(run: &LintRun, code: Code) -> Vec<&Finding> {
    run.report
        .findings
        .iter()
        .filter(|f| f.code == code)
        .collect()
}

#[test]
fn sixteen_bit_ir_is_one_info_finding_naming_the_mode() {
    for format in [FileFormat::Png, FileFormat::Tiff] {
        let dir = tempfile::tempdir().unwrap();
        let yaml = sixteen_bit(dir.path(), format);
        for decode in [DecodeLevel::Header, DecodeLevel::Full] {
            let auto = run(&yaml, decode, None);
            let codes: Vec<Code> = auto.report.findings.iter().map(|f| f.code).collect();
            assert_eq!(codes, [Code::IMG008], "{format:?} {decode:?}");
            let finding = &auto.report.findings[0];
            assert_eq!(
                (finding.severity, finding.subject),
                (Severity::Info, Subject::Dataset)
            );
            assert!(
                finding
                    .message
                    .starts_with("12 of 12 IR images have 16-bit samples")
                    && finding.message.contains("ir_norm auto")
                    && finding.message.contains("1st to the 99th percentile"),
                "{}",
                finding.message
            );
        }
        let fixed = run(
            &yaml,
            DecodeLevel::Header,
            Some(IrNorm::Fixed {
                lo: 27_000,
                hi: 29_000,
            }),
        );
        assert!(
            of_code(&fixed, Code::IMG008)[0].message.contains(
                "ir_norm fixed:27000,29000 maps them to 8 bits: mapped from 27000..29000"
            ),
            "{}",
            fixed.report.to_human("", 0)
        );
    }
}

#[test]
fn a_flat_cached_plane_warns_at_full_decode_whether_set_by_flag_or_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = sixteen_bit(dir.path(), FileFormat::Png);
    let by_flag = run(&yaml, DecodeLevel::Full, Some(IrNorm::None));
    let flat = of_code(&by_flag, Code::IMG009);
    assert_eq!(flat.len(), 12, "{}", by_flag.report.to_human("", 0));
    assert!(flat.iter().all(|f| f.severity == Severity::Warning
        && f.subject == Subject::Ir
        && f.message.contains("ir_norm none: shifted right by 8 bits")
        && f.message.contains("use ir_norm auto")));
    // Pixels are needed to count grey levels: header mode cannot tell.
    assert!(
        of_code(
            &run(&yaml, DecodeLevel::Header, Some(IrNorm::None)),
            Code::IMG009
        )
        .is_empty()
    );
    // The same mode from the data yaml.
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(&yaml, format!("{text}ir_norm: none\n")).unwrap();
    let by_yaml = run(&yaml, DecodeLevel::Full, None);
    assert_eq!(of_code(&by_yaml, Code::IMG009).len(), 12);
    assert!(
        of_code(&by_yaml, Code::IMG008)[0]
            .message
            .contains("ir_norm none")
    );
}

#[test]
fn colour_in_the_ir_folder_is_found_at_full_decode_only() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = synth(
        dir.path(),
        SynthOptions {
            inject: vec![Defect::Pair008],
            ..SynthOptions::default()
        },
    );
    let full = run(&yaml, DecodeLevel::Full, None);
    let found = of_code(&full, Code::PAIR008);
    assert_eq!(found.len(), 1, "{}", full.report.to_human("", 0));
    assert_eq!(found[0].ir.as_deref(), Some("imagesIR/010001.jpg"));
    assert!(found[0].message.contains("swapped"), "{}", found[0].message);
    assert!(of_code(&run(&yaml, DecodeLevel::Header, None), Code::PAIR008).is_empty());

    // A colourful photo where the IR image should be, the RGB image left as it is.
    let photo = image::RgbImage::from_fn(96, 80, |x, y| {
        image::Rgb([(x * 2) as u8 + 40, 200 - y as u8, 90])
    });
    photo.save(dir.path().join("imagesIR/010002.jpg")).unwrap();
    let full = run(&yaml, DecodeLevel::Full, None);
    let photo_finding = of_code(&full, Code::PAIR008)
        .into_iter()
        .find(|f| f.ir.as_deref() == Some("imagesIR/010002.jpg"))
        .expect("the photo is found");
    assert!(
        photo_finding
            .message
            .contains("a colour photo in the IR folder"),
        "{}",
        photo_finding.message
    );
}
