//! The `fusekit` command line, driven as a user or CI job would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
    let out = dir.join("ds");
    let mut args = vec![
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--pairs",
        "40",
        "--size",
        "96x80",
        "--scenes",
        "4",
    ];
    args.extend_from_slice(extra);
    let output = fusekit(&args, dir);
    assert!(output.status.success(), "{}", stderr(&output));
    out
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
    let data = synth(dir.path(), &["--inject", "all"]);
    let output = fusekit(
        &[
            "lint",
            data.to_str().unwrap(),
            "--format",
            "json",
            "--decode",
            "full",
        ],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(1));
    let report = json(&output);
    assert_eq!(report["version"], 1);
    let by_code = report["summary"]["by_code"].as_object().unwrap();
    assert_eq!(by_code.len(), 28, "{by_code:?}");
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
    assert_eq!(rules.as_array().unwrap().len(), 30);
    assert!(stdout(&fusekit(&["rules"], Path::new("."))).contains("LBL012   warning  polygon row"));
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
        stderr(&regex).contains("--group `(unclosed`"),
        "{}",
        stderr(&regex)
    );
}
