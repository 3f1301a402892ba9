//! Link arguments: libtorch's (fusekit-torch-link) for `fusekit-torch`, the tests and the
//! benches; for `fusekit`, which must not load libtorch, `--exclude-libs ALL`.
//!
//! `fusekit` links the same libraries as `fusekit-torch` but never calls into libtorch, and
//! the linker drops a shared library nothing live references (`--as-needed`). What would keep
//! libtorch's inline functions alive in it is their export: a definition in an executable that
//! a linked shared library also defines is exported (it may interpose), and exported symbols
//! are kept. Symbols of static archives (every rlib, the C++ shims) are not exported with
//! `--exclude-libs ALL`, so they are collected when unused, and libtorch is not needed.

fn main() {
    fusekit_torch_link::emit_for_bins(&["fusekit-torch"]);
    println!("cargo:rustc-link-arg-bin=fusekit=-Wl,--exclude-libs,ALL");
}
