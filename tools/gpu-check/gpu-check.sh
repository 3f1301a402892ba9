#!/usr/bin/env bash
# fusekit's one-call device check: `gpu-check.sh [--device cuda|cpu] [--quick]`.
#
# Runs every CUDA path of fusekit that a GPU machine can prove in one call (device facts,
# training in f32 / fp16 / bf16, the out-of-memory fallback, the pinned feed vs pageable, val and
# predict against the CPU, two ranks over Gloo, Ultralytics on the same data) and writes
# report.md and report.json under $OUT. `--device cpu --quick` runs the same steps, smaller,
# on the CPU (a test runs it, so this script cannot rot).
#
# It uses, in this order:
#   - fusekit: $FUSEKIT_BIN, else the bundle's `fusekit` launcher beside this script;
#   - libtorch: $FUSEKIT_TORCH_LIB, else the torch of this machine's python3 (the launcher);
#   - Ultralytics: $FUSEKIT_PYTHON's, else python3's, else the bundle's wheels/ installed into
#     a temporary folder (no network needed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
device=cuda
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="${2:?--device needs cuda or cpu}"; shift 2 ;;
    --device=*) device="${1#--device=}"; shift ;;
    --quick) quick=1; shift ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-check: unknown argument $1 (expected --device cuda|cpu, --quick)" >&2; exit 2 ;;
  esac
done
case "$device" in
  cuda|cpu) ;;
  *) echo "gpu-check: --device must be cuda or cpu, not $device" >&2; exit 2 ;;
esac
: "${OUT:?gpu-check: set OUT to the folder the report goes to}"
mkdir -p "$OUT"

fusekit="${FUSEKIT_BIN:-$here/fusekit}"
if [ ! -x "$fusekit" ]; then
  echo "gpu-check: no fusekit at $fusekit (set FUSEKIT_BIN)" >&2
  exit 2
fi
if [ -z "${FUSEKIT_TORCH_LIB:-}" ] && [ -z "${FUSEKIT_BIN:-}" ]; then
  # Resolve once: the launcher would ask python3 on every call.
  FUSEKIT_TORCH_LIB="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
  export FUSEKIT_TORCH_LIB
fi

python="${FUSEKIT_PYTHON:-python3}"
# The bundle's wheels: the small ones beside this script, polars' runtime in DIR-wheels.
wheels=()
for dir in "$here/wheels" "$here-wheels"; do
  [ -d "$dir" ] && wheels+=("$dir"/*.whl)
done
if ! "$python" -c 'import ultralytics' 2>/dev/null && [ "${#wheels[@]}" -gt 0 ]; then
  site="$(mktemp -d)/site"
  echo "gpu-check: installing Ultralytics from the bundle's wheels into $site" >&2
  if "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target "$site" "${wheels[@]}"; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi

exec "$python" "$here/gpu_check.py" --fusekit "$fusekit" --device "$device" \
  $([ "$quick" = 1 ] && echo --quick) --out "$OUT"
