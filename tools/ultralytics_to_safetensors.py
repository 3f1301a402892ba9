"""Convert an Ultralytics YOLOv8 detection checkpoint (.pt) to a safetensors state dict that
`fusekit train --weights` imports into its RGB and/or IR streams.

Usage: python tools/ultralytics_to_safetensors.py yolov8n.pt yolov8n.safetensors

Needs the `ultralytics` package (the checkpoint is a pickle of its classes) and `safetensors`.
The file keeps Ultralytics' key names (`model.0.conv.weight`, ...) as float32 and drops the
BatchNorm `num_batches_tracked` counters, which fusekit does not use.
"""

import sys

import torch
from safetensors.torch import save_file


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, target = sys.argv[1], sys.argv[2]
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    model = checkpoint.get("ema") or checkpoint["model"] if isinstance(checkpoint, dict) else checkpoint
    state = {
        key: value.float().contiguous()
        for key, value in model.float().state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    save_file(state, target)
    print(f"{source}: {len(state)} tensors -> {target}")


if __name__ == "__main__":
    main()
