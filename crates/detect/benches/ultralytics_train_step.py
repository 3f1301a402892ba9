"""Times one Ultralytics training step of yolov8n on the CPU, the reference for fusekit's
detector benchmark (crates/detect/benches/detect.rs): forward in train mode, v8DetectionLoss
(through `model.loss`, as the trainer calls it), backward and an SGD step (nesterov, momentum
0.937, weight decay 5e-4, then zero_grad), float32, NCHW (no AMP, no channels_last: Ultralytics
uses neither on the CPU), on random images and targets made before timing (no data loading).

Usage: python ultralytics_train_step.py BATCH IMGSZ ITERATIONS WARMUP THREADS CLASSES BOXES [--serve]

Alone, it runs WARMUP then ITERATIONS steps and prints, as the last line of stdout, a JSON
object of milliseconds per image: the median of each phase (forward, loss, backward, step) and
of the total, and the best total. With --serve (how `cargo bench -p fusekit-detect --bench
detect` runs it, to interleave its steps with fusekit's on a noisy machine), it prints `ready`,
then runs one step per line read from stdin and answers each with that step's JSON.
"""

import json
import os
import statistics
import sys
import time


def main() -> None:
    batch, imgsz, iterations, warmup, threads, nc, boxes = (int(a) for a in sys.argv[1:8])
    serve = "--serve" in sys.argv[8:]
    # Importing ultralytics sets OMP_NUM_THREADS=1 when unset; pin it to the count we compare at.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.loss import v8DetectionLoss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=nc, verbose=False).float().train()
    model.args = get_cfg()
    model.criterion = v8DetectionLoss(model)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.937, nesterov=True, weight_decay=5e-4
    )

    # The same draws, in the same order and from the same seed, as the Rust side (same libtorch).
    torch.manual_seed(0)
    n = batch * boxes
    r = torch.rand(n, 5)
    targets = torch.stack(
        [
            torch.arange(n) // boxes,
            (r[:, 0] * nc).floor().clamp(max=nc - 1),
            0.2 + 0.6 * r[:, 1],
            0.2 + 0.6 * r[:, 2],
            0.05 + 0.25 * r[:, 3],
            0.05 + 0.25 * r[:, 4],
        ],
        1,
    ).float()
    images = torch.rand(batch, 3, imgsz, imgsz)
    data = {"img": images, "batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:]}
    print(
        f"ultralytics: torch {torch.__version__}, {torch.get_num_threads()} threads, {images.dtype}, "
        f"batch {batch}, imgsz {imgsz}, {nc} classes, {n} boxes",
        file=sys.stderr,
    )
    optimizer.zero_grad()

    def step() -> dict[str, float]:
        t0 = time.perf_counter()
        preds = model(data["img"])
        t1 = time.perf_counter()
        loss, _ = model.loss(data, preds)
        loss = loss.sum()
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        t4 = time.perf_counter()
        spans = {"forward": t1 - t0, "loss": t2 - t1, "backward": t3 - t2, "step": t4 - t3, "total": t4 - t0}
        return {name: seconds * 1e3 / batch for name, seconds in spans.items()}

    if serve:
        print("ready", flush=True)
        for _ in sys.stdin:
            print(json.dumps(step()), flush=True)
        return
    samples = [step() for _ in range(warmup + iterations)][warmup:]
    result = {name: statistics.median(s[name] for s in samples) for name in samples[0]}
    result["best"] = min(s["total"] for s in samples)
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
