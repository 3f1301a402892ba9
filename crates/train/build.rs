//! Compiles the autocast shim (`shim/autocast.cpp`) against the libtorch that torch-sys links,
//! and gives the tests and benches of this crate a run path to it (fusekit-torch-link).

use std::path::PathBuf;

fn main() {
    fusekit_torch_link::emit();
    println!("cargo:rerun-if-changed=shim/autocast.cpp");
    let lib_dir = PathBuf::from(
        std::env::var_os(fusekit_torch_link::LIBTORCH_LIB_VAR)
            .expect("torch-sys did not publish DEP_TCH_LIBTORCH_LIB"),
    );
    let include = lib_dir.join("../include");
    let mut shim = cc::Build::new();
    shim.cpp(true)
        .file("shim/autocast.cpp")
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1");
    // libtorch's headers as system headers: their warnings are not ours to fix.
    for dir in [include.clone(), include.join("torch/csrc/api/include")] {
        shim.flag("-isystem")
            .flag(dir.to_str().expect("non-UTF-8 include path"));
    }
    shim.compile("fusekit_autocast");
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
