# Recipes for people who have `just`; each delegates to `cargo xtask`, which needs nothing
# beyond the Rust toolchain and python3.

# Install libtorch once (torch from PyPI, under ~/.cache/fusekit) and link it as .libtorch.
setup:
    cargo xtask setup

# Build fusekit, generate the sample dataset if missing, lint, split and cache it.
demo:
    cargo xtask demo

# fmt, clippy and the whole test suite: what CI runs.
test:
    cargo xtask test

# Benchmarks against their references (Ultralytics, the decode floor); see BENCHMARKS.md.
bench:
    cargo xtask bench
