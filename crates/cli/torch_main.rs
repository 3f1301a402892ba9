//! `fusekit-torch`: every fusekit command, libtorch linked (`fusekit` hands its libtorch
//! commands to this binary).

fn main() -> std::process::ExitCode {
    fusekit::torch_main()
}
