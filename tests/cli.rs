//! The `fusekit` command line, driven as a user or CI job would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use image::RgbImage;

fn fusekit(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fusekit"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("fusekit runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn synth(dir: &Path, extra: &[&str]) -> PathBuf {
    synth_sized(dir, "96x80", "40", extra)
}

/// A synth dataset of `pairs` pairs of `size` (WIDTHxHEIGHT) in `dir/ds`.
fn synth_sized(dir: &Path, size: &str, pairs: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join("ds");
    let mut args = vec![
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--pairs",
        pairs,
        "--size",
        size,
        "--scenes",
        "4",
    ];
    args.extend_from_slice(extra);
    let output = fusekit(&args, dir);
    assert!(output.status.success(), "{}", stderr(&output));
    out
}

/// `fusekit lint DATA --format json --decode full`, run in `cwd`.
fn lint_full_json(data: &Path, cwd: &Path) -> Output {
    fusekit(
        &[
            "lint",
            data.to_str().unwrap(),
            "--format",
            "json",
            "--decode",
            "full",
        ],
        cwd,
    )
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

#[test]
fn clean_sample_lints_clean_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), &[]);
    let output = fusekit(&["lint", data.to_str().unwrap()], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("0 errors, 0 warnings, 0 infos in 40 pairs"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn findings_exit_1_and_json_lists_every_code() {
    let dir = tempfile::tempdir().unwrap();
    // Large enough for the IR shift of PAIR007 to be measured (at least 96 px a side).
    let data = synth_sized(dir.path(), "640x512", "40", &["--inject", "all"]);
    let output = lint_full_json(&data, dir.path());
    assert_eq!(output.status.code(), Some(1));
    let report = json(&output);
    assert_eq!(report["version"], 1);
    let by_code = report["summary"]["by_code"].as_object().unwrap();
    assert_eq!(by_code.len(), 31, "{by_code:?}");
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "LBL009")
        .unwrap();
    assert_eq!(finding["severity"], "warning");
    assert!(finding["label"].as_str().unwrap().starts_with("labels/"));
    assert_eq!(finding["line"], 3);
}

/// The stem of the pair added with a name that needs escaping in HTML.
const ODD_STEM: &str = "odd<b>&'\"";

/// A synthetic dataset with every injectable defect, plus a pair named [`ODD_STEM`] (a copy
/// of a clean pair) whose label repeats its first row (LBL009 on line 2).
fn defective_dataset(dir: &Path) -> PathBuf {
    let data = synth(dir, &["--inject", "all"]);
    // The last pair is one synth leaves clean (defects go into the first ones).
    let clean = "040010";
    for folder in ["images", "imagesIR"] {
        std::fs::copy(
            data.join(format!("{folder}/{clean}.jpg")),
            data.join(format!("{folder}/{ODD_STEM}.jpg")),
        )
        .unwrap();
    }
    let label = std::fs::read_to_string(data.join(format!("labels/{clean}.txt"))).unwrap();
    let first = label.lines().next().expect("the clean pair has a box");
    std::fs::write(
        data.join(format!("labels/{ODD_STEM}.txt")),
        format!("{first}\n{label}"),
    )
    .unwrap();
    data
}

/// Every JPEG data URI of `html`, decoded.
fn thumbnails(html: &str) -> Vec<RgbImage> {
    const PREFIX: &str = "data:image/jpeg;base64,";
    html.match_indices(PREFIX)
        .map(|(at, _)| {
            let rest = &html[at + PREFIX.len()..];
            let end = rest.find('"').expect("a quoted data URI");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&rest[..end])
                .expect("base64");
            image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
                .expect("a JPEG thumbnail")
                .into_rgb8()
        })
        .collect()
}

/// Mean absolute difference of two same-sized pictures, per channel.
fn mean_difference(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let total: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    total as f64 / a.as_raw().len() as f64
}

#[test]
fn html_report_lists_every_finding_with_thumbnails_of_the_named_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let data = defective_dataset(dir.path());
    let json = fusekit(&["lint", "ds", "--format", "json"], dir.path());
    assert_eq!(json.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let findings = report["findings"].as_array().unwrap();
    let by_code = report["summary"]["by_code"].as_object().unwrap();
    assert!(by_code.len() > 20, "{by_code:?}");

    let html_run = fusekit(
        &["lint", "ds", "--format", "html", "--out", "report.html"],
        dir.path(),
    );
    assert_eq!(
        html_run.status.code(),
        Some(1),
        "the exit code follows the report"
    );
    assert!(html_run.stdout.is_empty(), "the report goes to --out only");
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();

    // Every finding is listed, under its code's heading with its count.
    assert_eq!(
        html.matches("<article class=\"finding\">").count(),
        findings.len()
    );
    for (code, count) in by_code {
        let start = html
            .find(&format!("id=\"{code}\" data-code=\"{code}\""))
            .unwrap_or_else(|| panic!("no section for {code}"));
        let heading = &html[start..start + html[start..].find("</h2>").unwrap()];
        assert!(
            heading.ends_with(&format!("({count})")),
            "{code}: {heading}"
        );
    }
    // Self-contained: nothing to fetch.
    for outside in ["http://", "https://", "<link", "<script src", "url("] {
        assert!(!html.contains(outside), "the report refers to {outside}");
    }
    // Names from the dataset are escaped.
    assert!(!html.contains("odd<b>"));
    assert!(html.contains("odd&lt;b&gt;&amp;&#39;&quot;"));

    // Thumbnails are small JPEGs; the odd pair's RGB thumbnail is its image, with the
    // duplicated row (line 2) highlighted in yellow.
    let all = thumbnails(&html);
    assert!(all.len() > 20, "{} thumbnails", all.len());
    assert!(all.iter().all(|t| t.width().max(t.height()) <= 160));
    let odd = html
        .find("labels/odd&lt;b&gt;&amp;&#39;&quot;.txt:2")
        .expect("the odd finding");
    let article = &html[odd..odd + html[odd..].find("</article>").unwrap()];
    assert!(article.contains("<mark>"), "the offending line is marked");
    let odd_thumbnails = thumbnails(article);
    assert_eq!(odd_thumbnails.len(), 2, "RGB and IR");
    let named = image::open(data.join(format!("images/{ODD_STEM}.jpg")))
        .unwrap()
        .thumbnail(160, 160)
        .into_rgb8();
    let other = image::open(data.join("images/020005.jpg"))
        .unwrap()
        .thumbnail(160, 160)
        .into_rgb8();
    let (same, different) = (
        mean_difference(&odd_thumbnails[0], &named),
        mean_difference(&odd_thumbnails[0], &other),
    );
    assert!(
        same < 6.0 && same * 2.0 < different,
        "the thumbnail differs from its image by {same}, from another by {different}"
    );
    let yellow = odd_thumbnails[0]
        .pixels()
        .filter(|p| p.0[0] > 200 && p.0[1] > 170 && p.0[2] < 110)
        .count();
    assert!(yellow > 20, "{yellow} highlighted pixels");

    // With a cap, every finding is still listed, and each group says its thumbnails are capped.
    let capped = fusekit(
        &[
            "lint",
            "ds",
            "--format",
            "html",
            "--out",
            "capped.html",
            "--thumbnails-per-code",
            "0",
        ],
        dir.path(),
    );
    assert_eq!(capped.status.code(), Some(1));
    let capped = std::fs::read_to_string(dir.path().join("capped.html")).unwrap();
    assert_eq!(
        capped.matches("<article class=\"finding\">").count(),
        findings.len()
    );
    assert!(thumbnails(&capped).is_empty());
    assert_eq!(capped.matches("class=\"capped\"").count(), by_code.len());
}

/// Chromium, from `cargo xtask setup`; installed here with apt-get when the test runs
/// without it. `None` (the test then skips, saying so) only outside CI.
fn chromium() -> Option<&'static str> {
    let runs = || {
        Command::new("chromium")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !runs() {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-qq", "chromium"])
            .output();
    }
    if runs() {
        return Some("chromium");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "chromium is missing in CI: `cargo xtask setup` installs it"
    );
    eprintln!(
        "skipping the Chromium rendering: `chromium` is not installed and apt-get could not \
install it (`cargo xtask setup` does)"
    );
    None
}

#[test]
fn html_report_renders_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    defective_dataset(dir.path());
    let html_run = fusekit(
        &["lint", "ds", "--format", "html", "--out", "report.html"],
        dir.path(),
    );
    assert_eq!(html_run.status.code(), Some(1));
    let html = dir.path().join("report.html");
    let png = dir.path().join("report.png");
    let screenshot = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,1600",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(
        screenshot.status.success() && png.is_file(),
        "{}",
        String::from_utf8_lossy(&screenshot.stderr)
    );
    let picture = image::open(&png).unwrap().into_rgb8();
    assert_eq!(picture.dimensions(), (1200, 1600));
    let colours: std::collections::HashSet<[u8; 3]> = picture.pixels().map(|p| p.0).collect();
    let ink = picture.pixels().filter(|p| p.0 != [255; 3]).count();
    assert!(
        colours.len() > 200 && ink * 20 > picture.as_raw().len() / 3,
        "a blank page: {} colours, {ink} non-white pixels",
        colours.len()
    );
}

#[test]
fn shifted_ir_is_reported_with_its_offset_and_max_offset_is_read_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth_sized(dir.path(), "640x512", "12", &["--inject", "PAIR007"]);
    let lint_json = |data: &Path| json(&lint_full_json(data, dir.path()));
    let report = lint_json(&data);
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{report}");
    assert_eq!(findings[0]["code"], "PAIR007");
    assert_eq!(findings[0]["ir"], "imagesIR/010001.jpg");
    // Injected: 4% of 640 right (26 px), 2% of 512 up (10 px).
    let offset: Vec<i64> = findings[0]["offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(
        (offset[0] - 26).abs() <= 2 && (offset[1] + 10).abs() <= 2,
        "{offset:?}"
    );
    std::fs::write(data.join("fusekit.toml"), "[lint]\nmax_offset = \"40px\"\n").unwrap();
    assert_eq!(lint_json(&data)["findings"], serde_json::json!([]));

    let shifted = synth_sized(dir.path(), "640x512", "12", &["--inject", "DS005"]);
    let report = lint_json(&shifted);
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{report}");
    assert_eq!(findings[0]["code"], "DS005");
    // 3% of 640 right (19 px), 2% of 512 up (10 px), in every pair.
    assert!(
        findings[0]["message"]
            .as_str()
            .unwrap()
            .contains("px in 100% of pairs"),
        "{report}"
    );
}

#[test]
fn sarif_is_valid_2_1_0() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), &["--inject", "PAIR001,LBL003"]);
    let output = fusekit(
        &["lint", data.to_str().unwrap(), "--format", "sarif"],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(1));
    let sarif = json(&output);
    assert_eq!(sarif["version"], "2.1.0");
    let results = sarif["runs"][0]["results"].as_array().unwrap();
    let ids: Vec<&str> = results
        .iter()
        .map(|r| r["ruleId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["PAIR001", "LBL003"]);
    assert!(
        results[1]["locations"][0]["physicalLocation"]["region"]["startLine"]
            .as_u64()
            .unwrap()
            >= 2
    );
}

#[test]
fn levels_from_flags_and_config_and_strict() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), &["--inject", "PAIR001,LBL009"]);
    let data_arg = data.to_str().unwrap();
    assert_eq!(
        fusekit(&["lint", data_arg, "--allow", "PAIR"], dir.path())
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        fusekit(
            &["lint", data_arg, "--allow", "PAIR", "--strict"],
            dir.path()
        )
        .status
        .code(),
        Some(1)
    );
    assert_eq!(
        fusekit(
            &["lint", data_arg, "--warn", "PAIR001", "--deny", "LBL009"],
            dir.path()
        )
        .status
        .code(),
        Some(1)
    );
    std::fs::write(
        data.join("fusekit.toml"),
        "[lint]\nallow = [\"PAIR001\"]\nstrict = true\n",
    )
    .unwrap();
    let output = fusekit(&["lint", data_arg, "--format", "json"], dir.path());
    let report = json(&output);
    assert_eq!(report["summary"]["errors"], 0);
    assert_eq!(report["summary"]["warnings"], 1);
    assert_eq!(output.status.code(), Some(1), "strict from the config file");
    std::fs::write(data.join("fusekit.toml"), "[lint]\nallow = [\"NOPE\"]\n").unwrap();
    let output = fusekit(&["lint", data_arg], dir.path());
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("unknown rule `NOPE`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn invalid_data_yaml_is_ds001_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), &[]);
    let yaml = data.join("bad.yaml");
    std::fs::write(&yaml, "train: images\nnames: [person]\nnc: 3\n").unwrap();
    let output = fusekit(
        &["lint", yaml.to_str().unwrap(), "--format", "json"],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(2));
    let report = json(&output);
    assert_eq!(report["findings"][0]["code"], "DS001");
    assert!(
        report["findings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("bad.yaml")
    );
    let missing = fusekit(&["lint", "no/such/data.yaml"], dir.path());
    assert_eq!(missing.status.code(), Some(2));
    assert!(stdout(&missing).contains("DS001"));
}

#[test]
fn fix_requires_a_backup_dir_and_backs_up_what_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), &["--inject", "LBL009,LBL012"]);
    let data_arg = data.to_str().unwrap();
    assert_eq!(
        fusekit(&["lint", data_arg, "--fix"], dir.path())
            .status
            .code(),
        Some(2)
    );
    let backup = dir.path().join("backup");
    let output = fusekit(
        &[
            "lint",
            data_arg,
            "--fix",
            "--backup-dir",
            backup.to_str().unwrap(),
            "--strict",
        ],
        dir.path(),
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(stdout(&output).contains("fixed 2"), "{}", stdout(&output));
    assert!(
        backup.join("labels/010001.txt").is_file() && backup.join("labels/010002.txt").is_file()
    );
    let again = fusekit(
        &[
            "lint",
            data_arg,
            "--fix",
            "--backup-dir",
            backup.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(
        !stderr(&again).contains("fixed"),
        "idempotent: {}",
        stderr(&again)
    );
}

#[test]
fn bare_folder_with_names_flag_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), &["--inject", "LBL005"]);
    std::fs::remove_file(data.join("data.yaml")).unwrap();
    let data_arg = data.to_str().unwrap();
    let output = fusekit(
        &[
            "lint",
            data_arg,
            "--names",
            "person,car",
            "--format",
            "json",
        ],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(json(&output)["summary"]["by_code"]["LBL005"], 1);
    let limited = json(&fusekit(
        &[
            "lint", data_arg, "--names", "person", "--limit", "5", "--format", "json",
        ],
        dir.path(),
    ));
    assert_eq!(limited["summary"]["pairs"], 5);
}

#[test]
fn rules_lists_every_code() {
    let output = fusekit(&["rules", "--format", "json"], Path::new("."));
    let rules = json(&output);
    assert_eq!(rules.as_array().unwrap().len(), 35);
    let human = stdout(&fusekit(&["rules"], Path::new(".")));
    assert!(human.contains("LBL012   warning  polygon row"));
    assert!(human.contains("PAIR007  warning  IR image is shifted"));
    assert!(human.contains("DS005    warning  IR is shifted by one offset"));
}

#[test]
fn synth_refuses_foreign_folders() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let output = fusekit(
        &[
            "synth",
            "--out",
            dir.path().to_str().unwrap(),
            "--pairs",
            "2",
        ],
        Path::new("."),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("not empty"), "{}", stderr(&output));
}

#[cfg(feature = "train")]
#[test]
fn device_reports_libtorch_without_ld_library_path() {
    let output = Command::new(env!("CARGO_BIN_EXE_fusekit"))
        .arg("device")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("cuda devices:"));
    assert!(stdout(&output).contains("cuda runtime:"));
    let output = Command::new(env!("CARGO_BIN_EXE_fusekit"))
        .args(["device", "--format", "json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let info: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let devices = info["devices"].as_array().unwrap();
    assert_eq!(devices.len() as u64, info["cuda_devices"].as_u64().unwrap());
    for device in devices {
        assert!(device["capability"][0].as_i64().unwrap() >= 3, "{device}");
        assert!(device["total_memory"].as_u64().unwrap() > 0, "{device}");
    }
    // libtorch's CUDA build loads the CUDA runtime with or without a GPU.
    let cuda_build = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".libtorch/torch/lib/libtorch_cuda.so")
        .exists();
    if cuda_build {
        let runtime = info["cuda_runtime"].as_str().unwrap();
        assert!(runtime.starts_with("1"), "{runtime}");
    }
}

/// The libraries the dynamic loader would load for `binary` (what `ldd` prints).
#[cfg(feature = "train")]
fn loaded_libraries(binary: &Path) -> String {
    let output = Command::new(binary)
        .env("LD_TRACE_LOADED_OBJECTS", "1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
}

#[cfg(feature = "train")]
#[test]
fn dataset_commands_run_without_libtorch() {
    let fusekit = Path::new(env!("CARGO_BIN_EXE_fusekit"));
    let libraries = loaded_libraries(fusekit);
    assert!(!libraries.contains("libtorch"), "{libraries}");
    assert!(!libraries.contains("libc10"), "{libraries}");
    // The check sees libtorch where it is linked.
    let torch = loaded_libraries(Path::new(env!("CARGO_BIN_EXE_fusekit-torch")));
    assert!(torch.contains("libtorch_cpu"), "{torch}");

    // Alone in a folder, fusekit still lints, and says what it misses for training.
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("fusekit");
    std::fs::copy(fusekit, &alone).unwrap();
    let rules = Command::new(&alone).arg("rules").output().unwrap();
    assert!(rules.status.success(), "{}", stderr(&rules));
    assert!(stdout(&rules).contains("PAIR001"));
    let device = Command::new(&alone).arg("device").output().unwrap();
    assert_eq!(device.status.code(), Some(2));
    let message = stderr(&device);
    assert!(message.contains("needs libtorch"), "{message}");
    assert!(message.contains("fusekit-torch"), "{message}");
}

#[test]
fn split_writes_lists_reports_and_is_a_no_op_on_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(
        dir.path(),
        &["--inject", "PAIR001,LBL004", "--names", "person,car"],
    );
    let data_arg = data.to_str().unwrap();
    let output = fusekit(
        &["split", data_arg, "--val", "0.25", "--group", r"^(\d{2})"],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("38 pairs in 4 groups (grouping: regex ^(\\d{2}))"),
        "{text}"
    );
    assert!(
        text.contains("left out, with lint errors: 2 pairs"),
        "{text}"
    );
    assert!(
        text.contains("wrote train.txt, val.txt, split.yaml, split.json"),
        "{text}"
    );
    let val = std::fs::read_to_string(data.join("val.txt")).unwrap();
    assert!(val.lines().all(|l| l.starts_with("./images/")), "{val}");
    let rerun = fusekit(
        &[
            "split",
            data_arg,
            "--val",
            "0.25",
            "--group",
            r"^(\d{2})",
            "--format",
            "json",
        ],
        dir.path(),
    );
    assert_eq!(json(&rerun)["outcome"], "up_to_date");
    // The derived yaml lints clean: the broken pairs were left out.
    let derived = fusekit(
        &["lint", data.join("split.yaml").to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(derived.status.code(), Some(0), "{}", stdout(&derived));
}

#[test]
fn split_rejects_bad_shares_and_regexes() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), &[]);
    let data_arg = data.to_str().unwrap();
    let shares = fusekit(
        &["split", data_arg, "--val", "0.7", "--test", "0.4"],
        dir.path(),
    );
    assert_eq!(shares.status.code(), Some(2));
    assert!(
        stderr(&shares).contains("leave a share for train"),
        "{}",
        stderr(&shares)
    );
    let regex = fusekit(&["split", data_arg, "--group", "(unclosed"], dir.path());
    assert_eq!(regex.status.code(), Some(2));
    assert!(
        stderr(&regex).contains("group `(unclosed`"),
        "{}",
        stderr(&regex)
    );
}

fn cache_dataset(dir: &Path) -> PathBuf {
    let out = dir.join("ds");
    let args = [
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--pairs",
        "24",
        "--size",
        "160x128",
        "--scenes",
        "4",
        "--inject",
        "PAIR001",
    ];
    assert!(fusekit(&args, dir).status.success());
    let split = fusekit(
        &["split", out.to_str().unwrap(), "--group", r"^(\d{2})"],
        dir,
    );
    assert!(split.status.success(), "{}", stderr(&split));
    out
}

#[test]
fn cache_build_inspect_verify_show_and_skip_when_current() {
    let dir = tempfile::tempdir().unwrap();
    let data = cache_dataset(dir.path());
    let out = dir.path().join("cache");
    let args = [
        "cache",
        "build",
        data.to_str().unwrap(),
        "--imgsz",
        "96",
        "--out",
        out.to_str().unwrap(),
    ];
    let output = fusekit(&args, dir.path());
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("train.fkc: ") && text.contains("val.fkc: "),
        "{text}"
    );
    assert!(out.join("train.fkc").is_file() && out.join("val.fkc").is_file());
    let again = fusekit(&args, dir.path());
    assert!(stdout(&again).contains("up to date"), "{}", stdout(&again));
    let inspect = json(&fusekit(
        &[
            "cache",
            "inspect",
            out.join("train.fkc").to_str().unwrap(),
            "--format",
            "json",
        ],
        dir.path(),
    ));
    assert_eq!(inspect["imgsz"], 96);
    assert_eq!(inspect["planes"]["ir"], 1);
    let train = inspect["samples"].as_u64().unwrap();
    let val = json(&fusekit(
        &[
            "cache",
            "inspect",
            out.join("val.fkc").to_str().unwrap(),
            "--format",
            "json",
        ],
        dir.path(),
    ))["samples"]
        .as_u64()
        .unwrap();
    assert_eq!(train + val, 23, "24 pairs less the one without IR partner");
    let verify = fusekit(
        &["cache", "verify", out.join("train.fkc").to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(verify.status.code(), Some(0), "{}", stdout(&verify));
    let png = dir.path().join("pair.png");
    let show = fusekit(
        &[
            "cache",
            "show",
            out.join("val.fkc").to_str().unwrap(),
            "0",
            "--out",
            png.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(show.status.success(), "{}", stderr(&show));
    let picture = image::open(&png).unwrap();
    assert_eq!((picture.width(), picture.height()), (2 * 96 + 8, 77));
    // A flipped byte: verify names the record and exits 1.
    let path = out.join("train.fkc");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096 + 100] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    let verify = fusekit(&["cache", "verify", path.to_str().unwrap()], dir.path());
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        stdout(&verify).contains("record 0 (images/"),
        "{}",
        stdout(&verify)
    );
}

#[test]
fn sixteen_bit_tiff_ir_is_linted_and_cached_by_ir_norm() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(
        dir.path(),
        &[
            "--ir-bits",
            "16",
            "--ir-format",
            "tiff",
            "--ir-channels",
            "1",
        ],
    );
    assert!(data.join("imagesIR/010001.tif").is_file());
    let lint = |extra: &[&str]| {
        let mut args = vec!["lint", data.to_str().unwrap(), "--format", "json"];
        args.extend_from_slice(extra);
        let output = fusekit(&args, dir.path());
        assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
        json(&output)
    };
    let report = lint(&[]);
    assert_eq!(
        report["summary"]["by_code"],
        serde_json::json!({"IMG008": 1})
    );
    let message = report["findings"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("40 of 40 IR images have 16-bit samples"),
        "{message}"
    );

    let out = dir.path().join("cache");
    let build = |extra: &[&str]| {
        let mut args = vec![
            "cache",
            "build",
            data.to_str().unwrap(),
            "--imgsz",
            "96",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        fusekit(&args, dir.path())
    };
    let inspect = || {
        json(&fusekit(
            &[
                "cache",
                "inspect",
                out.join("train.fkc").to_str().unwrap(),
                "--format",
                "json",
            ],
            dir.path(),
        ))
    };
    let flat = build(&["--ir-norm", "none"]);
    assert!(flat.status.success(), "{}", stderr(&flat));
    assert!(
        stdout(&flat).contains("(ir_norm none)"),
        "{}",
        stdout(&flat)
    );
    assert_eq!(inspect()["ir_norm"], "none");
    // Another mode is another fingerprint: the cache is rebuilt, not kept.
    let stretched = build(&["--ir-norm", "fixed:27500,29000"]);
    assert!(
        !stdout(&stretched).contains("up to date"),
        "{}",
        stdout(&stretched)
    );
    assert_eq!(inspect()["ir_norm"], "fixed:27500,29000");
    let bad = build(&["--ir-norm", "fixed:9,2"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("fixed:LO,HI"), "{}", stderr(&bad));

    // The data yaml's ir_norm: none, seen by lint at full decode as nearly flat planes.
    let yaml = data.join("data.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(&yaml, format!("{text}ir_norm: none\n")).unwrap();
    let report = lint(&["--decode", "full"]);
    assert_eq!(report["summary"]["by_code"]["IMG009"], 40, "{report}");
    assert_eq!(build(&[]).status.code(), Some(0));
    assert_eq!(inspect()["ir_norm"], "none");
}

#[test]
fn cache_build_refuses_ram_mode_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let data = cache_dataset(dir.path());
    let out = dir.path().join("cache");
    let output = Command::new(env!("CARGO_BIN_EXE_fusekit"))
        .args([
            "cache",
            "build",
            data.to_str().unwrap(),
            "--imgsz",
            "96",
            "--out",
            out.to_str().unwrap(),
        ])
        .env("FUSEKIT_MEMORY_LIMIT", "100000")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--mode disk"),
        "{}",
        stderr(&output)
    );
    assert!(!out.join("train.fkc").exists());
}

#[test]
fn a_killed_build_leaves_the_previous_cache_intact() {
    let dir = tempfile::tempdir().unwrap();
    let small = cache_dataset(dir.path());
    let out = dir.path().join("cache");
    let build = |data: &Path| {
        Command::new(env!("CARGO_BIN_EXE_fusekit"))
            .args([
                "cache",
                "build",
                data.to_str().unwrap(),
                "--split",
                "train",
                "--imgsz",
                "256",
                "--out",
                out.to_str().unwrap(),
                "--force",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    assert!(build(&small).wait().unwrap().success());
    let before = std::fs::read(out.join("train.fkc")).unwrap();
    // A bigger dataset takes long enough to be killed mid-way.
    let big = dir.path().join("big");
    let args = [
        "synth",
        "--out",
        big.to_str().unwrap(),
        "--pairs",
        "200",
        "--size",
        "384x384",
        "--scenes",
        "4",
    ];
    assert!(fusekit(&args, dir.path()).status.success());
    let mut child = build(&big);
    let started = std::time::Instant::now();
    while !std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains(".partial-"))
    {
        assert!(
            started.elapsed().as_secs() < 60,
            "the build never started writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        std::fs::read(out.join("train.fkc")).unwrap(),
        before,
        "the old cache survives a kill -9"
    );
    let verify = fusekit(
        &["cache", "verify", out.join("train.fkc").to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(verify.status.code(), Some(0));
    // A rerun cleans the leftover and builds.
    assert!(build(&small).wait().unwrap().success());
    assert!(
        !std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".partial-"))
    );
}

/// Two `fusekit split` processes with different seeds writing into the same folder at once:
/// they take turns (a lock on the folder), each writes through uniquely named temporary
/// files, so both succeed and every file is whole, one run's or the other's (never a mix or a
/// truncated file), and no temporary file is left behind, even where another writer's
/// temporary files sit.
#[test]
fn two_splits_at_once_do_not_corrupt_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), &[]);
    let data_arg = data.to_str().unwrap();
    let names = ["train.txt", "val.txt", "split.yaml"];
    let args = |seed: &str, out: &Path| -> Vec<String> {
        let out = out.to_str().unwrap();
        [
            "split", data_arg, "--val", "0.25", "--seed", seed, "--out", out,
        ]
        .map(String::from)
        .to_vec()
    };
    // What each seed writes, alone.
    let mut expected: Vec<Vec<String>> = Vec::new();
    for seed in ["1", "2"] {
        let out = dir.path().join(format!("alone-{seed}"));
        let output = Command::new(env!("CARGO_BIN_EXE_fusekit"))
            .args(args(seed, &out))
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        expected.push(
            names
                .iter()
                .map(|n| std::fs::read_to_string(out.join(n)).unwrap())
                .collect(),
        );
    }
    assert_ne!(expected[0][0], expected[1][0], "the seeds split alike");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    // Another writer's temporary files under fixed names (what fusekit used to use): a
    // writer that picked its temporary name that way would run into them.
    for name in ["train.txt", "val.txt", "split.yaml", "split.json"] {
        std::fs::create_dir(shared.join(format!(".{name}.tmp"))).unwrap();
    }
    let hidden = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&shared)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.') && n != ".fusekit-split.lock")
            .collect();
        names.sort();
        names
    };
    let before = hidden();
    for round in 0..4 {
        let children: Vec<_> = ["1", "2"]
            .iter()
            .map(|seed| {
                Command::new(env!("CARGO_BIN_EXE_fusekit"))
                    .args(args(seed, &shared))
                    .current_dir(dir.path())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "round {round}: {}",
                stderr(&output)
            );
        }
        for (i, name) in names.iter().enumerate() {
            let got = std::fs::read_to_string(shared.join(name)).unwrap();
            assert!(
                got == expected[0][i] || got == expected[1][i],
                "round {round}: {name} is neither run's:\n{got}"
            );
        }
        assert_eq!(hidden(), before, "round {round}: a temporary file was left");
    }
}
