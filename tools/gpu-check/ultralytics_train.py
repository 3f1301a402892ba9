"""Ultralytics' yolov8n (RGB) trained from scratch on the check's data, for the images/s
fusekit is compared with. Prints one JSON object: images/s over the training batches after
the first five (fewer on a short run; model build, cuDNN autotuning and loader start-up
excluded),
and the AMP setting Ultralytics ended up using.
"""

import argparse
import json
import time

from ultralytics import YOLO


def main():
    parser = argparse.ArgumentParser()
    for name in ["data", "imgsz", "batch", "epochs", "fraction", "device", "amp", "project"]:
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args()
    marks = []

    def on_batch_end(trainer):
        marks.append(time.perf_counter())

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_batch_end", on_batch_end)
    state = {}

    def on_train_start(trainer):
        state["amp"] = bool(trainer.amp)

    model.add_callback("on_train_start", on_train_start)
    batch = int(args.batch)
    model.train(data=args.data, imgsz=int(args.imgsz), batch=batch, epochs=int(args.epochs),
                fraction=float(args.fraction), device=args.device, amp=args.amp == "True",
                cache="ram", workers=8, val=False, plots=False, pretrained=False,
                project=args.project, name="train", exist_ok=True, verbose=False,
                warmup_epochs=0, close_mosaic=0)
    timed = marks[min(5, len(marks) // 3):]
    rate = (len(timed) - 1) * batch / (timed[-1] - timed[0]) if len(timed) > 1 else None
    print(json.dumps({"images_per_second": round(rate, 1) if rate else None,
                      "batches": len(marks), "batch": batch, "amp": state.get("amp")}))


if __name__ == "__main__":
    main()
