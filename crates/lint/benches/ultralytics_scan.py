"""Times Ultralytics' own label scan (YOLODataset.cache_labels: verify_image_label over every
RGB image on its thread pool) and prints the best images/s of N runs on the last line.

Usage: python ultralytics_scan.py IMAGES_DIR RUNS
"""

import sys
import tempfile
import time
from pathlib import Path

from ultralytics.data.dataset import YOLODataset


def main() -> None:
    images, runs = Path(sys.argv[1]), int(sys.argv[2])
    # Building the dataset scans once and writes labels.cache next to the labels; remove it
    # so that the dataset folder is left as it was.
    dataset = YOLODataset(img_path=str(images), data={"names": {0: "person"}, "channels": 3}, task="detect", augment=False)
    for cache in images.parent.glob("labels*.cache"):
        cache.unlink()
    best = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            start = time.perf_counter()
            result = dataset.cache_labels(Path(tmp) / "labels.cache")
            best = min(best, time.perf_counter() - start)
    found = result["results"][0]
    print(f"scanned {found} images", file=sys.stderr)
    print(len(dataset.im_files) / best)


if __name__ == "__main__":
    main()
