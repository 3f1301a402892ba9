"""The steps of gpu-check.sh; see that script for what it checks and how to run it.

Each step records what it measured, or why it failed, in one report; a failed step does not
stop the others. The exit status is 1 when a required step failed.
"""

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Sizes:
    """How big each step is: the full check for an H200, or a quick one for a CPU."""

    def __init__(self, quick, device):
        self.quick = quick
        if quick:
            self.pairs, self.image, self.imgsz = 32, "320x256", 96
            self.batch, self.limit, self.epochs = 8, 16, 2
            self.oom_batch, self.oom_limit = 8, 16
        else:
            self.pairs, self.image, self.imgsz = 1400, "640x512", 640
            self.batch, self.limit, self.epochs = 16, 512, 2
            # f32 yolov8n mid at 640: about 0.35 GB per image in training, so a micro-batch
            # of 1024 exceeds an H200's 141 GB and the fallback halves it until it fits.
            self.oom_batch, self.oom_limit = 1024, 1024
        self.amp_modes = ["off", "fp16", "bf16"]
        self.fusions = ["mid", "rgb"]


class Check:
    def __init__(self, fusekit, device, sizes, out):
        self.fusekit = fusekit
        self.device = device
        self.sizes = sizes
        self.out = Path(out)
        self.work = self.out / "work"
        self.steps = []
        self.failed = False
        self.train_runs = []

    def run(self, args, log, timeout=900, env=None):
        """Runs fusekit (with `env` added to the environment); returns (exit status, stdout,
        stderr, seconds) and keeps the output in logs/."""
        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        try:
            done = subprocess.run(
                [self.fusekit, *args],
                cwd=self.work,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, **(env or {})},
            )
            code, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as error:
            code, stdout, stderr = 124, error.stdout or "", f"timed out after {timeout} s"
            stdout = stdout if isinstance(stdout, str) else stdout.decode(errors="replace")
        (logs / f"{log}.out").write_text(stdout)
        (logs / f"{log}.err").write_text(stderr)
        return code, stdout, stderr, time.monotonic() - start

    def step(self, name, required, function):
        print(f"gpu-check: {name} ...", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            result = function()
            status = result.pop("status", "ok")
        except StepFailed as error:
            result, status = {"error": str(error)}, "failed"
        except Exception as error:  # a bug in this script must not hide the other steps
            result, status = {"error": f"{type(error).__name__}: {error}"}, "failed"
        result["seconds"] = round(time.monotonic() - start, 1)
        if status == "failed" and required:
            self.failed = True
        self.steps.append({"step": name, "status": status, "required": required, **result})
        print(f"gpu-check: {name}: {status}", file=sys.stderr, flush=True)


class StepFailed(Exception):
    pass


def tail(text, lines=12):
    return "\n".join(text.strip().splitlines()[-lines:])


def require(check, args, log, timeout=900, env=None):
    code, stdout, stderr, seconds = check.run(args, log, timeout, env)
    if code != 0:
        raise StepFailed(f"`fusekit {' '.join(args)}` exited {code}:\n{tail(stderr)}")
    return stdout, stderr, seconds


class MemorySampler:
    """Peak GPU memory in use while alive, sampled from nvidia-smi (None without it)."""

    def __init__(self, enabled):
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.peak = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self):
        while not self.stop.is_set():
            try:
                text = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=5,
                ).stdout
                used = max(int(v) for v in text.split())
                self.peak = used if self.peak is None else max(self.peak, used)
            except (ValueError, subprocess.SubprocessError, OSError):
                pass
            self.stop.wait(0.2)

    def __enter__(self):
        if self.enabled:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.enabled:
            self.thread.join()


def device_facts(check):
    stdout, _, _ = require(check, ["device", "--format", "json"], "device")
    facts = json.loads(stdout)
    if check.device == "cuda" and not facts["cuda"]:
        raise StepFailed("libtorch sees no CUDA device")
    return {"facts": facts}


def prepare_data(check):
    s = check.sizes
    check.work.mkdir(parents=True, exist_ok=True)
    _, _, synth_s = require(check, ["synth", "--out", "data", "--pairs", str(s.pairs),
                                    "--size", s.image, "--scenes", "20"], "synth")
    require(check, ["split", "data", "--val", "0.1"], "split")
    _, _, cache_s = require(check, ["cache", "build", "data", "--imgsz", str(s.imgsz),
                                    "--out", "cache"], "cache", timeout=1200)
    return {"pairs": s.pairs, "image": s.image, "imgsz": s.imgsz,
            "synth_seconds": round(synth_s, 1), "cache_seconds": round(cache_s, 1)}


def results_losses(run_dir):
    with open(run_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = ["train/box_loss", "train/cls_loss", "train/dfl_loss"]
    return [[float(row[k]) for k in keys] for row in rows]


def train(check, name, fusion, amp, extra=(), batch=None, limit=None, epochs=None, env=None):
    s = check.sizes
    args = ["train", "--cache", "cache", "--fusion", fusion, "--amp", amp,
            "--device", check.device, "--batch", str(batch or s.batch),
            "--limit", str(limit or s.limit), "--epochs", str(epochs or s.epochs),
            "--warmup-epochs", "0", "--close-mosaic", "0", "--project", "runs", "--name", name,
            "--format", "json", *extra]
    with MemorySampler(check.device == "cuda") as memory:
        code, stdout, stderr, seconds = check.run(args, name, timeout=1200, env=env)
    return code, stdout, stderr, seconds, memory.peak


def train_modes(check):
    runs = []
    failed = False
    for fusion in check.sizes.fusions:
        for amp in check.sizes.amp_modes:
            name = f"{fusion}-{amp}"
            code, stdout, stderr, seconds, peak = train(check, name, fusion, amp)
            entry = {"fusion": fusion, "amp": amp, "seconds": round(seconds, 1)}
            if code != 0:
                refused = "needs a CUDA device" in stderr
                entry["status"] = "refused" if refused and check.device == "cpu" else "failed"
                entry["error"] = tail(stderr, 3)
                failed |= entry["status"] == "failed"
                runs.append(entry)
                continue
            summary = json.loads(stdout.strip().splitlines()[-1])
            losses = results_losses(check.work / "runs" / name)
            finite = all(math.isfinite(v) for row in losses for v in row)
            entry.update({
                "status": "ok" if finite else "failed",
                "precision": summary.get("precision"),
                "feed": summary.get("feed"),
                "images_per_second": round(summary["images_per_second"], 1),
                "data_wait": round(summary["data_wait"], 4),
                "peak_gpu_memory_mib": peak,
                "train_losses": losses,
                "losses_finite": finite,
                "losses_falling": len(losses) > 1 and sum(losses[-1]) < sum(losses[0]),
            })
            failed |= not finite
            runs.append(entry)
    check.train_runs = runs
    return {"status": "failed" if failed else "ok", "runs": runs}


def out_of_memory(check):
    s = check.sizes
    extra = ["--simulate-oom-above", str(s.oom_batch // 2)] if check.device == "cpu" else []
    code, stdout, stderr, seconds, peak = train(
        check, "oom", "mid", "off", extra, batch=s.oom_batch, limit=s.oom_limit, epochs=1)
    notes = [line for line in stderr.splitlines() if "out of memory with a micro-batch" in line]
    if code != 0:
        raise StepFailed(f"training at batch {s.oom_batch} failed:\n{tail(stderr)}")
    if not notes:
        raise StepFailed(f"batch {s.oom_batch} fitted in memory: no out-of-memory error to "
                         "fall back from (raise the batch)")
    return {"simulated": check.device == "cpu", "batch": s.oom_batch, "fallbacks": notes,
            "peak_gpu_memory_mib": peak}


def copy_rates(check):
    """torch's host-to-device GB/s of a batch-shaped u8 tensor, pinned vs pageable."""
    import torch

    s = check.sizes
    batch = torch.randint(0, 255, (s.batch, 4, s.imgsz, s.imgsz), dtype=torch.uint8)
    pinned = batch.pin_memory()

    def rate(source):
        for _ in range(3):
            source.to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(50):
            source.to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        return 50 * source.numel() / (time.perf_counter() - start) / 1e9

    return {"batch_bytes": batch.numel(), "pageable_gb_s": round(rate(batch), 2),
            "pinned_gb_s": round(rate(pinned), 2)}


def feed(check):
    """fusekit's pinned, side-stream feed against PIN_MEMORY=false (pageable copies on the
    compute stream): the same training run's images/s and data wait, and validation metrics
    that must not change with the feed. On the CPU both are views; the step still runs."""
    pageable = {"PIN_MEMORY": "false"}
    name = "mid-bf16-pageable"
    code, stdout, stderr, seconds, peak = train(check, name, "mid", "bf16", env=pageable)
    if code != 0:
        raise StepFailed(f"training with PIN_MEMORY=false failed:\n{tail(stderr)}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    pinned_run = next((r for r in check.train_runs if (r["fusion"], r["amp"]) == ("mid", "bf16")
                       and r["status"] == "ok"), None)
    result = {
        "pageable_run": {"feed": summary.get("feed"),
                         "images_per_second": round(summary["images_per_second"], 1),
                         "data_wait": round(summary["data_wait"], 4)},
        "pinned_run": pinned_run and {k: pinned_run[k] for k in
                                      ("feed", "images_per_second", "data_wait")},
    }
    weights = "runs/mid-off/weights/best.safetensors"
    metrics = {}
    for label, env in [("default", None), ("pageable", pageable)]:
        stdout, _, _ = require(check, ["val", "--weights", weights, "--cache", "cache/val.fkc",
                                       "--device", check.device, "--format", "json"],
                               f"val-feed-{label}", env=env)
        found = json.loads(stdout.strip().splitlines()[-1])
        metrics[label] = [find_number(found, k) or 0.0 for k in ("map50", "map50_95")]
    difference = max(abs(a - b) for a, b in zip(metrics["default"], metrics["pageable"]))
    result["val_metric_diff"] = difference
    problems = []
    if difference > 1e-4:
        problems.append(f"validation metrics differ by {difference} between the feeds")
    if check.device == "cuda":
        result["torch_copy"] = copy_rates(check)
        if summary.get("feed") != "pageable":
            problems.append(f"PIN_MEMORY=false trained with the {summary.get('feed')} feed")
        if pinned_run and pinned_run["feed"] != "pinned":
            problems.append(f"the default feed on CUDA was {pinned_run['feed']}, not pinned")
    if problems:
        result["error"] = "; ".join(problems)
        result["status"] = "failed"
    return result


def predictions(path):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row.get("rgb", str(i)): row for i, row in enumerate(rows)}


def boxes_of(row):
    return sorted((d["class"], d["score"], d["box"]) for d in row.get("detections", []))


def val_predict_agree(check):
    weights = "runs/mid-off/weights/best.safetensors"
    if not (check.work / weights).exists():
        raise StepFailed("no weights from the mid f32 run")
    metrics = {}
    devices = ["cpu"] if check.device == "cpu" else ["cpu", check.device]
    for device in devices:
        stdout, _, _ = require(check, ["val", "--weights", weights, "--cache", "cache/val.fkc",
                                       "--device", device, "--format", "json"], f"val-{device}")
        metrics[device] = json.loads(stdout.strip().splitlines()[-1])
        require(check, ["predict", "--weights", weights, "--source", "data", "--device",
                        device, "--no-images", "--out", f"predict-{device}", "--conf", "0.01",
                        "--format", "json"], f"predict-{device}")
    keys = ["map50", "map50_95", "precision", "recall"]
    found = {d: {k: find_number(metrics[d], k) for k in keys} for d in metrics}
    if len(devices) == 1:
        return {"metrics": found, "compared": "no: the CPU is the reference (run --device cuda)"}
    metric_diff = max(abs((found["cpu"][k] or 0) - (found[check.device][k] or 0)) for k in keys)
    cpu = predictions(check.work / "predict-cpu" / "predictions.jsonl")
    other = predictions(check.work / f"predict-{check.device}" / "predictions.jsonl")
    box_diff, score_diff, count_mismatch = 0.0, 0.0, 0
    for key, row in cpu.items():
        a, b = boxes_of(row), boxes_of(other.get(key, {}))
        if len(a) != len(b):
            count_mismatch += 1
            continue
        for (ca, sa, ba), (cb, sb, bb) in zip(a, b):
            score_diff = max(score_diff, abs(sa - sb))
            box_diff = max(box_diff, max(abs(x - y) for x, y in zip(ba, bb)))
    # TF32 / cuDNN kernels differ from the CPU's: a few 1e-3 in scores, under a pixel in boxes.
    tolerance = {"metric": 0.01, "score": 0.01, "box_px": 1.0, "count_mismatch_share": 0.05}
    agree = (metric_diff <= tolerance["metric"] and score_diff <= tolerance["score"]
             and box_diff <= tolerance["box_px"]
             and count_mismatch <= tolerance["count_mismatch_share"] * max(len(cpu), 1))
    return {"status": "ok" if agree else "failed", "metrics": found,
            "max_metric_diff": round(metric_diff, 5), "max_score_diff": round(score_diff, 5),
            "max_box_diff_px": round(box_diff, 3), "pairs": len(cpu),
            "pairs_with_other_box_count": count_mismatch, "tolerance": tolerance}


def find_number(value, key):
    """The first number under `key` anywhere in a JSON value."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k.lower().replace("-", "_") == key and isinstance(v, (int, float)):
                return float(v)
        for v in value.values():
            found = find_number(v, key)
            if found is not None:
                return found
    if isinstance(value, list):
        for v in value:
            found = find_number(v, key)
            if found is not None:
                return found
    return None


def two_ranks(check):
    device = "cuda:0" if check.device == "cuda" else "cpu"
    stdout, _, seconds = require(check, [
        "train", "--cache", "cache", "--nproc", "2", "--dist-backend", "gloo", "--device",
        device, "--batch", str(check.sizes.batch), "--limit", str(check.sizes.limit),
        "--epochs", "1", "--project", "runs", "--name", "ranks", "--format", "json"], "ranks")
    return {"backend": "gloo", "device": device, "seconds": round(seconds, 1),
            "nccl": "not run: NCCL needs one GPU per rank and this machine has one"
            if check.device == "cuda" else "not run: no CUDA"}


def ultralytics(check, python):
    s = check.sizes
    fraction = min(1.0, s.limit / max(1, count_lines(check.work / "data" / "train.txt")))
    amp = check.device == "cuda"
    command = [python, str(HERE / "ultralytics_train.py"), "--data",
               str(check.work / "data" / "split.yaml"), "--imgsz", str(s.imgsz), "--batch",
               str(s.batch), "--epochs", str(s.epochs), "--fraction", f"{fraction:.4f}",
               "--device", "0" if check.device == "cuda" else "cpu", "--amp", str(amp),
               "--project", str(check.work / "ultralytics")]
    probe = subprocess.run([python, "-c", "import ultralytics; print(ultralytics.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return {"status": "skipped", "why": f"{python} cannot import ultralytics "
                "(the bundle's wheels/ were not installed)"}
    with MemorySampler(check.device == "cuda") as memory:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800,
                              cwd=check.work, env={**os.environ, "YOLO_OFFLINE": "1"})
    (check.out / "logs" / "ultralytics.err").write_text(done.stderr)
    if done.returncode != 0:
        raise StepFailed(f"ultralytics exited {done.returncode}:\n{tail(done.stderr)}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["version"] = probe.stdout.strip()
    result["peak_gpu_memory_mib"] = memory.peak
    return result


def count_lines(path):
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def markdown(report):
    lines = [f"# fusekit device check ({report['mode']})", ""]
    facts = next((s.get("facts") for s in report["steps"] if s["step"] == "device"), None)
    if facts:
        for d in facts.get("devices", []):
            lines.append(f"- {d['name']}: compute capability {d['capability'][0]}."
                         f"{d['capability'][1]}, {d['total_memory'] / 2**30:.0f} GiB")
        lines.append(f"- CUDA runtime {facts.get('cuda_runtime')}, driver {facts.get('cuda_driver')}"
                     f", cuDNN {facts.get('cudnn_version')}, {facts.get('cpu_threads')} CPU threads")
    lines += ["", "| step | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in report["steps"]]
    train_step = next((s for s in report["steps"] if s["step"] == "train"), {})
    if train_step.get("runs"):
        lines += ["", "| fusion | amp | precision | feed | images/s | data wait | peak MiB | losses |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in train_step["runs"]:
            if r["status"] != "ok":
                lines.append(f"| {r['fusion']} | {r['amp']} | {r['status']} | | | | | "
                             f"{r.get('error', '').splitlines()[-1:]} |")
                continue
            trend = "falling" if r["losses_falling"] else "not falling"
            lines.append(f"| {r['fusion']} | {r['amp']} | {r['precision']} | {r['feed']} | "
                         f"{r['images_per_second']} | {r['data_wait']:.1%} | "
                         f"{r['peak_gpu_memory_mib']} | finite, {trend} |")
    fed = next((s for s in report["steps"] if s["step"].startswith("feed")), {})
    if fed.get("pageable_run"):
        p = fed["pageable_run"]
        lines += ["", f"PIN_MEMORY=false (mid bf16): {p['feed']} feed, {p['images_per_second']} "
                  f"images/s, {p['data_wait']:.1%} data wait; validation metrics differ by "
                  f"{fed.get('val_metric_diff')}"]
    if fed.get("torch_copy"):
        c = fed["torch_copy"]
        lines.append(f"torch copies of a {c['batch_bytes'] / 1e6:.1f} MB batch: pinned "
                     f"{c['pinned_gb_s']} GB/s, pageable {c['pageable_gb_s']} GB/s")
    reference = next((s for s in report["steps"] if s["step"] == "ultralytics"), {})
    if reference.get("images_per_second"):
        lines += ["", f"Ultralytics {reference.get('version')} (RGB yolov8n, amp "
                  f"{reference.get('amp')}): {reference['images_per_second']} images/s"]
    for s in report["steps"]:
        if s["status"] == "failed":
            lines += ["", f"## {s['step']} failed", "", "```", s.get("error", ""), "```"]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fusekit", required=True)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    sizes = Sizes(args.quick, args.device)
    check = Check(os.path.abspath(args.fusekit), args.device, sizes, args.out)
    if check.work.exists():
        shutil.rmtree(check.work)
    check.work.mkdir(parents=True)
    python = os.environ.get("FUSEKIT_PYTHON", sys.executable)
    started = time.monotonic()
    check.step("device", True, lambda: device_facts(check))
    check.step("data", True, lambda: prepare_data(check))
    check.step("train", True, lambda: train_modes(check))
    check.step("out-of-memory fallback", True, lambda: out_of_memory(check))
    check.step("feed: pinned vs pageable", True, lambda: feed(check))
    check.step("val and predict vs cpu", True, lambda: val_predict_agree(check))
    check.step("two ranks (gloo)", True, lambda: two_ranks(check))
    check.step("ultralytics", False, lambda: ultralytics(check, python))
    report = {"mode": f"{args.device}{' quick' if args.quick else ''}",
              "seconds": round(time.monotonic() - started, 1), "passed": not check.failed,
              "steps": check.steps}
    out = Path(args.out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    shutil.rmtree(check.work / "cache", ignore_errors=True)  # large; the rest stays for reading
    print(markdown(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
