//! Binaries that link libtorch find it through DT_RUNPATH (not DT_RPATH), so that
//! `LD_LIBRARY_PATH` can point them at another libtorch: the dynamic loader searches
//! `LD_LIBRARY_PATH` before a run path but after an rpath.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `readelf -d` of `binary`, or `None` when readelf is not installed.
fn dynamic_section(binary: &Path) -> Option<String> {
    let output = Command::new("readelf")
        .arg("-d")
        .arg(binary)
        .output()
        .ok()?;
    assert!(output.status.success(), "readelf -d {}", binary.display());
    Some(String::from_utf8(output.stdout).unwrap())
}

/// The directories of the `Library runpath: [a:b]` line.
fn runpath(dynamic: &str) -> Vec<PathBuf> {
    let line = dynamic
        .lines()
        .find(|l| l.contains("(RUNPATH)"))
        .unwrap_or_else(|| panic!("no RUNPATH entry:\n{dynamic}"));
    let list = line.split('[').nth(1).unwrap().trim_end_matches(']');
    list.split(':').map(PathBuf::from).collect()
}

/// Recreates `dir` under `into` as links to its entries, and its `levels` ancestors as links
/// to their other entries; returns the copy of `dir`.
fn mirror(dir: &Path, into: &Path, levels: usize) -> PathBuf {
    let mut chain: Vec<&Path> = dir.ancestors().take(levels + 1).collect();
    chain.reverse();
    let mut copy = into.to_path_buf();
    for (i, level) in chain.iter().enumerate() {
        copy.push(level.file_name().unwrap());
        std::fs::create_dir_all(&copy).unwrap();
        for entry in std::fs::read_dir(level).unwrap() {
            let path = entry.unwrap().path();
            if chain.get(i + 1) != Some(&path.as_path()) {
                std::os::unix::fs::symlink(&path, copy.join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    copy
}

#[test]
fn libtorch_is_found_through_a_runpath_that_ld_library_path_overrides() {
    let exe = std::env::current_exe().unwrap();
    let Some(dynamic) = dynamic_section(&exe) else {
        eprintln!("note: readelf not found; not checking the dynamic section");
        return;
    };
    assert!(!dynamic.contains("(RPATH)"), "an rpath:\n{dynamic}");
    let torch_lib = runpath(&dynamic)
        .into_iter()
        .find(|dir| dir.join("libtorch_cpu.so").exists())
        .unwrap_or_else(|| panic!("no run path holds libtorch_cpu.so:\n{dynamic}"));

    // Another libtorch named by LD_LIBRARY_PATH is the one loaded, and the binary runs with
    // it. The other libtorch is a tree of links to this one, two levels up: a pip wheel's
    // libraries find CUDA's through `$ORIGIN/../../nvidia`.
    let dir = tempfile::tempdir().unwrap();
    let other_lib = mirror(&torch_lib, dir.path(), 2);
    let output = Command::new(&exe)
        .arg("--list")
        .env("LD_LIBRARY_PATH", &other_lib)
        .env("LD_DEBUG", "libs")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    if !stderr.contains("find library=") {
        eprintln!("note: the dynamic loader does not print LD_DEBUG; not checking which libtorch");
        return;
    }
    let init = |dir: &Path| format!("calling init: {}", dir.join("libtorch_cpu.so").display());
    assert!(
        stderr.contains(&init(&other_lib)) && !stderr.contains(&init(&torch_lib)),
        "libtorch_cpu.so was not loaded from LD_LIBRARY_PATH:\n{stderr}"
    );
}
