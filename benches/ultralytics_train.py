"""Reference side of `cargo bench -p fusekit --bench train`: Ultralytics training yolov8n.

Usage:
  python ultralytics_train.py init NC OUT.pt
      Builds yolov8n for NC classes from its yaml with torch seed 0 and saves it as an
      Ultralytics checkpoint (the same initial weights for both trainers; convert it for
      fusekit with tools/ultralytics_to_safetensors.py).
  python ultralytics_train.py train WEIGHTS.pt DATA.yaml EPOCHS BATCH IMGSZ THREADS PROJECT
      Trains with augmentation off (mosaic, flips, HSV, scale, translate all 0), SGD lr0 0.01,
      no warmup, cache=ram, on the CPU with THREADS intra-op threads, and prints as the last
      line of stdout a JSON object: per epoch the training-loop seconds (the time between
      Ultralytics' epoch-start and epoch-end callbacks: data loading, forward, loss, backward,
      optimizer; no validation), the images trained and the epoch's mean box, cls and dfl losses.
"""

import json
import os
import sys
import time


def init(nc: int, out: str) -> None:
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=nc, verbose=False)
    torch.save({"model": model, "train_args": {}, "epoch": -1}, out)


def train(weights: str, data: str, epochs: int, batch: int, imgsz: int, threads: int, project: str) -> None:
    import torch
    from ultralytics import YOLO

    torch.set_num_threads(threads)
    model = YOLO(weights)
    epochs_out = []
    started = {}

    def on_start(trainer) -> None:
        started["t"] = time.perf_counter()

    def on_end(trainer) -> None:
        seconds = time.perf_counter() - started["t"]
        losses = trainer.tloss.values() if isinstance(trainer.tloss, dict) else trainer.tloss
        box, cls, dfl = (float(v) for v in losses)
        epochs_out.append(
            {
                "epoch": trainer.epoch + 1,
                "seconds": seconds,
                "images": len(trainer.train_loader.dataset),
                "box": box,
                "cls": cls,
                "dfl": dfl,
            }
        )

    def on_train_start(trainer) -> None:
        # Ultralytics sets min(8, cores - 1) threads for CPU training; compare at THREADS.
        torch.set_num_threads(threads)

    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_train_epoch_start", on_start)
    model.add_callback("on_train_epoch_end", on_end)
    model.train(
        data=data,
        epochs=epochs,
        batch=batch,
        imgsz=imgsz,
        device="cpu",
        workers=threads,
        cache="ram",
        mosaic=0.0,
        close_mosaic=0,
        fliplr=0.0,
        hsv_h=0.0,
        hsv_s=0.0,
        hsv_v=0.0,
        scale=0.0,
        translate=0.0,
        warmup_epochs=0,
        optimizer="SGD",
        lr0=0.01,
        momentum=0.937,
        amp=False,
        val=False,
        plots=False,
        seed=0,
        deterministic=True,
        project=project,
        name="ultralytics",
        exist_ok=True,
        verbose=False,
    )
    print(json.dumps({"epochs": epochs_out, "threads": torch.get_num_threads()}))


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["init"] and len(args) == 3:
        init(int(args[1]), args[2])
    elif args[:1] == ["train"] and len(args) == 8:
        os.environ["OMP_NUM_THREADS"] = args[6]
        train(args[1], args[2], int(args[3]), int(args[4]), int(args[5]), int(args[6]), args[7])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
