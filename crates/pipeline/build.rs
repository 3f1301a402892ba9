//! With the `train` feature, links this crate's test binaries to libtorch with a run path
//! (fusekit-torch-link); without it, does nothing.

fn main() {
    fusekit_torch_link::emit();
}
