//! Link arguments for packages whose binaries or tests load libtorch.
//!
//! `torch-sys` exposes the directory of the libtorch it was built against to the build scripts of
//! its direct dependents as `DEP_TCH_LIBTORCH_LIB`. Calling [`emit`] from such a build script
//! makes every binary and test of the package
//! - find libtorch at run time without `LD_LIBRARY_PATH` (a run path to that directory),
//! - still honour `LD_LIBRARY_PATH` first: the run path is written as `DT_RUNPATH`
//!   (`--enable-new-dtags`), which the dynamic loader searches after `LD_LIBRARY_PATH`, not as
//!   `DT_RPATH`, which it searches before; so a binary whose libtorch has moved (an installed
//!   binary, a cleared cache) runs with `LD_LIBRARY_PATH=/path/to/torch/lib`, and
//! - keep `libtorch_cuda` as a dependency even though no symbol of it is referenced directly
//!   (`--no-as-needed`), so that CUDA is available on a machine with a GPU.

use std::path::Path;

/// Name of the environment variable that torch-sys (`links = "tch"`) passes to dependents.
pub const LIBTORCH_LIB_VAR: &str = "DEP_TCH_LIBTORCH_LIB";

/// Set (to anything but `0`) at build time, binaries get no run path: built here for another
/// machine (`cargo xtask gpu-bundle`), they find libtorch through `LD_LIBRARY_PATH`, which
/// their launcher sets, and carry no path of the machine that built them.
pub const NO_RUNPATH_VAR: &str = "FUSEKIT_NO_RUNPATH";

/// Prints the cargo instructions for the current build script, for every target of the
/// package; does nothing when the package is built without torch-sys (for example with the
/// `train` feature off).
pub fn emit() {
    for arg in current_link_args() {
        println!("cargo:rustc-link-arg={arg}");
    }
}

/// As [`emit`], except that the forced `libtorch_cuda` dependency goes to the binaries named,
/// the tests and the benches only: the package's other binaries (`fusekit` itself) get no
/// libtorch dependency they do not reference. The run path, which loads nothing by itself,
/// goes to every target (the library's unit tests need it).
pub fn emit_for_bins(bins: &[&str]) {
    for arg in current_link_args() {
        if arg != CUDA_ARG {
            println!("cargo:rustc-link-arg={arg}");
            continue;
        }
        for bin in bins {
            println!("cargo:rustc-link-arg-bin={bin}={arg}");
        }
        println!("cargo:rustc-link-arg-tests={arg}");
        println!("cargo:rustc-link-arg-benches={arg}");
    }
}

/// Keeps `libtorch_cuda` as a dependency although no symbol of it is referenced.
const CUDA_ARG: &str = "-Wl,--no-as-needed,-ltorch_cuda,--as-needed";

/// [`link_args`] for the libtorch torch-sys built against, as the environment asks.
fn current_link_args() -> Vec<String> {
    println!("cargo:rerun-if-env-changed={LIBTORCH_LIB_VAR}");
    println!("cargo:rerun-if-env-changed={NO_RUNPATH_VAR}");
    let Some(dir) = std::env::var_os(LIBTORCH_LIB_VAR) else {
        return Vec::new();
    };
    // Resolve links (such as the checkout's `.libtorch`) so binaries keep working when copied.
    let dir = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.into());
    let runpath = !matches!(std::env::var(NO_RUNPATH_VAR).as_deref(), Ok(value) if value != "0");
    link_args(&dir, runpath)
}

/// The linker arguments for a libtorch library directory, with or without a run path to it.
///
/// Without one (a binary for another machine), libtorch's own dependencies (the CUDA
/// libraries of PyPI's wheel) need not be on this machine: they are the run-time machine's
/// business, so the linker is told not to resolve them here.
pub fn link_args(lib_dir: &Path, runpath: bool) -> Vec<String> {
    let mut args = if runpath {
        vec![
            "-Wl,--enable-new-dtags".to_owned(),
            format!("-Wl,-rpath,{}", lib_dir.display()),
        ]
    } else {
        vec!["-Wl,--allow-shlib-undefined".to_owned()]
    };
    if lib_dir.join("libtorch_cuda.so").exists() {
        args.push(CUDA_ARG.to_owned());
    }
    args
}

/// Compiles the C++ files of a package's libtorch shim (`files`, relative to the package) into
/// the static library `name`, against the headers of the libtorch torch-sys links (C++17,
/// libtorch's ABI, its headers as system headers: their warnings are not ours to fix), and links
/// the package to that libtorch's `torch_cpu` and `c10`.
pub fn compile_shim(files: &[&str], name: &str) {
    let lib_dir = std::path::PathBuf::from(
        std::env::var_os(LIBTORCH_LIB_VAR).expect("torch-sys did not publish DEP_TCH_LIBTORCH_LIB"),
    );
    let include = lib_dir.join("../include");
    let mut shim = cc::Build::new();
    shim.cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1");
    for file in files {
        println!("cargo:rerun-if-changed={file}");
        shim.file(file);
    }
    for dir in [include.clone(), include.join("torch/csrc/api/include")] {
        shim.flag("-isystem")
            .flag(dir.to_str().expect("non-UTF-8 include path"));
    }
    shim.compile(name);
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_build_gets_only_a_runpath() {
        let dir = std::env::temp_dir().join("fusekit-torch-link-cpu");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            link_args(&dir, true),
            vec![
                "-Wl,--enable-new-dtags".to_owned(),
                format!("-Wl,-rpath,{}", dir.display())
            ]
        );
    }

    #[test]
    fn cuda_build_keeps_torch_cuda() {
        let dir = std::env::temp_dir().join("fusekit-torch-link-cuda");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("libtorch_cuda.so"), b"").unwrap();
        let args = link_args(&dir, true);
        assert_eq!(args.len(), 3);
        assert_eq!(args[0], "-Wl,--enable-new-dtags");
        assert!(args[2].contains("--no-as-needed,-ltorch_cuda"));
    }

    #[test]
    fn a_binary_for_another_machine_gets_no_runpath() {
        let dir = std::env::temp_dir().join("fusekit-torch-link-bundle");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("libtorch_cuda.so"), b"").unwrap();
        let args = link_args(&dir, false);
        assert!(args.iter().all(|arg| !arg.contains("rpath")), "{args:?}");
        assert!(
            args.iter().any(|arg| arg.contains("-ltorch_cuda")),
            "{args:?}"
        );
    }
}
