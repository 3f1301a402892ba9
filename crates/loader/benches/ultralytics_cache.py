"""Times Ultralytics' own RAM caching (BaseDataset.cache_images with cache="ram": decode and
resize the long side to imgsz, one RGB image per call, on its thread pool) and prints the
images/s on the last line.

Usage: python ultralytics_cache.py IMAGES_DIR IMGSZ
"""

import sys
import time
from pathlib import Path

from ultralytics.data.dataset import YOLODataset


def main() -> None:
    images, imgsz = Path(sys.argv[1]), int(sys.argv[2])
    dataset = YOLODataset(img_path=str(images), imgsz=imgsz, data={"names": {0: "person"}, "channels": 3}, task="detect", augment=False)
    for cache in images.parent.glob("labels*.cache"):
        cache.unlink()
    dataset.cache = "ram"
    start = time.perf_counter()
    dataset.cache_images()
    seconds = time.perf_counter() - start
    print(f"cached {dataset.ni} images in {seconds:.2f} s", file=sys.stderr)
    print(dataset.ni / seconds)


if __name__ == "__main__":
    main()
