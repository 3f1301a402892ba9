//! Compiles the C++ shims (`shim/autocast.cpp`: autocast state; `shim/feed.cpp`: pinned copies
//! on a side stream; `shim/foreach.cpp`: multi-tensor operations) against the libtorch that
//! torch-sys links,
//! and gives the tests and benches of this crate a run path to it (fusekit-torch-link).

fn main() {
    fusekit_torch_link::emit();
    fusekit_torch_link::compile_shim(
        &["shim/autocast.cpp", "shim/feed.cpp", "shim/foreach.cpp"],
        "fusekit_train_shim",
    );
}
