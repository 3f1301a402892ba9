"""Reference outputs from Ultralytics for fusekit's parity tests.

Usage: python reference.py OUT_DIR SCALE NC SEED

Builds an Ultralytics YOLOv8 detection model from its yaml (no download) with a fixed seed,
and writes to OUT_DIR:
- model.safetensors: its state dict (num_batches_tracked dropped);
- stepped.safetensors: the state dict after one SGD step (Ultralytics' parameter groups with
  lr 0.01 / 0.02 / 0.05, momentum 0.9, weight decay 5e-4, clipping at 10) on the first set;
- reference.safetensors: random images, two target sets (several boxes with some on the image
  border and one image without boxes; no boxes at all), the eval-mode decoded output, the
  train-mode raw outputs and v8DetectionLoss's three parts (after gains) for each target set.
Run by crates/detect/tests/parity.rs when FUSEKIT_PYTHON names a python with ultralytics.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from types import SimpleNamespace

from ultralytics.cfg import get_cfg
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.loss import v8DetectionLoss
from ultralytics.utils.nms import non_max_suppression


def main() -> None:
    out, scale, nc, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(seed)
    model = DetectionModel(f"yolov8{scale}.yaml", nc=nc, verbose=False)
    model.args = get_cfg()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(out / "model.safetensors"))

    generator = torch.Generator().manual_seed(seed + 1)
    images = torch.rand(2, 3, 96, 64, generator=generator)
    # image, class, x, y, w, h (normalised); boxes touching the left/top and right/bottom
    # borders, a tiny one, all in image 0; image 1 has none.
    several = torch.tensor(
        [
            [0, 0, 0.10, 0.10, 0.20, 0.20],
            [0, 1 % nc, 0.50, 0.40, 0.50, 0.30],
            [0, 2 % nc, 0.90, 0.95, 0.20, 0.10],
            [0, 0, 0.30, 0.70, 0.02, 0.02],
            [1, 1 % nc, 0.40, 0.60, 0.30, 0.20],
            [1, 0, 0.70, 0.30, 0.25, 0.35],
        ]
    )
    empty = torch.zeros(0, 6)

    model.eval()
    with torch.no_grad():
        decoded = model(images)[0]
    model.train()
    preds = model(images)
    criterion = v8DetectionLoss(model)
    captured = {}
    assign = criterion.assigner.forward

    def capture(*args, **kwargs):
        result = assign(*args, **kwargs)
        captured.setdefault("scores", result[2].float())
        captured.setdefault("foreground", result[3].float())
        return result

    criterion.assigner.forward = capture
    tensors = {
        "images": images,
        "decoded": decoded,
        "train_boxes": preds["boxes"].detach(),
        "train_scores": preds["scores"].detach(),
    }
    # NMS on one fixed set of random predictions (centre-xywh boxes, class probabilities), with
    # the validator's settings but conf 0.25 so that many boxes compete.
    candidates = torch.cat(
        (torch.rand(2, 2, 400, generator=generator) * 96, 4 + torch.rand(2, 2, 400, generator=generator) * 30,
         torch.rand(2, nc, 400, generator=generator)),
        1,
    )
    tensors["nms_input"] = candidates
    for i, kept in enumerate(non_max_suppression(candidates, 0.25, 0.7, multi_label=True, max_det=300)):
        tensors[f"nms_output_{i}"] = kept
    for name, targets in (("several", several), ("empty", empty)):
        batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:]}
        _, parts = criterion(preds, batch)
        tensors[f"targets_{name}"] = targets
        tensors[f"loss_{name}"] = torch.stack([parts[k] for k in criterion.loss_names]).detach()
        if name == "several":
            tensors["assigned_scores"] = captured["scores"]
            tensors["assigned_foreground"] = captured["foreground"]
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, str(out / "reference.safetensors"))

    # One optimizer step with Ultralytics' own parameter groups (weight, bn, bias), distinct
    # learning rates per group, gradient clipping at 10, as its trainer steps.
    trainer = BaseTrainer.__new__(BaseTrainer)
    trainer.args = SimpleNamespace(optimizer="SGD", lr0=0.01, momentum=0.9)
    optimizer = trainer.build_optimizer(model, name="SGD", lr=0.01, momentum=0.9, decay=5e-4)
    assert [g["param_group"] for g in optimizer.param_groups] == ["weight", "bn", "bias"]
    for group, lr in zip(optimizer.param_groups, (0.01, 0.02, 0.05)):
        group["lr"] = lr
    targets = several
    loss, _ = criterion(preds, {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:]})
    optimizer.zero_grad()
    loss.sum().backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
    optimizer.step()
    stepped = {k: v.contiguous().float() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(stepped, str(out / "stepped.safetensors"))


if __name__ == "__main__":
    main()
