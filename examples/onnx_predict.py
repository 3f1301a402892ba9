"""Detect objects in one RGB + IR pair with a model written by `fusekit export`, using only
ONNX Runtime, NumPy and Pillow. It reproduces `fusekit predict`: letterbox, run, decode, NMS,
boxes back in image pixels, and prints one JSON record shaped like a predictions.jsonl line.

    python examples/onnx_predict.py model.onnx rgb.jpg ir.jpg [--conf 0.25] [--iou 0.7]

8-bit IR images; fusekit's 16-bit IR normalisation (ir_norm) is not repeated here.
"""

import argparse
import ast
import json
import math

import numpy as np
import onnxruntime as ort
from PIL import Image


def letterbox(image, size, pad_value):
    """HxWxC uint8 -> (CxSxS float 0-1, gain (x, y), pad (left, top)) as fusekit's cache does:
    long side to `size` (bilinear, short side rounded up), centred on grey `pad_value`."""
    h, w = image.shape[:2]
    r = size / max(w, h)
    nw, nh = (w, h) if r == 1 else (min(math.ceil(w * r), size), min(math.ceil(h * r), size))
    if (nw, nh) != (w, h):
        planes = [Image.fromarray(image[:, :, c]).resize((nw, nh), Image.BILINEAR)
                  for c in range(image.shape[2])]
        image = np.stack([np.asarray(p) for p in planes], axis=2)
    left, top = (size - nw) // 2, (size - nh) // 2
    canvas = np.full((size, size, image.shape[2]), pad_value, np.uint8)
    canvas[top:top + nh, left:left + nw] = image
    tensor = canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    return tensor, (nw / w, nh / h), (left, top)


def iou(box, boxes):
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area(box) + area(boxes) - inter)


def nms(boxes, scores, classes, iou_threshold, max_det):
    """Class-aware greedy NMS, highest score first (ties by index)."""
    keep = []
    for i in sorted(range(len(scores)), key=lambda k: (-scores[k], k)):
        if len(keep) == max_det:
            break
        same = [k for k in keep if classes[k] == classes[i]]
        if not same or (iou(boxes[i], boxes[same]) <= iou_threshold).all():
            keep.append(i)
    return keep


def predict(model, rgb_path, ir_path, conf=0.25, iou_threshold=0.7, max_det=300):
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    size = ast.literal_eval(meta["imgsz"])[0]
    names = ast.literal_eval(meta["names"])
    pad = int(meta["pad_value"])
    ir_mode = "L" if int(meta["ir_channels"]) == 1 else "RGB"
    rgb = np.asarray(Image.open(rgb_path).convert("RGB"))
    ir = np.asarray(Image.open(ir_path).convert(ir_mode))
    ir = ir[:, :, None] if ir.ndim == 2 else ir
    feeds, fit = {}, None
    for name, image in (("rgb", rgb), ("ir", ir)):
        tensor, gain, offset = letterbox(image, size, pad)
        fit = fit or (gain, offset)
        feeds[name] = tensor
    half = session.get_inputs()[0].type == "tensor(float16)"
    feeds = {i.name: feeds[i.name].astype(np.float16 if half else np.float32)
             for i in session.get_inputs()}
    output = session.run(None, feeds)[0][0].astype(np.float32)  # [4 + nc, anchors]
    scores_all = output[4:]
    classes = scores_all.argmax(0)
    scores = scores_all.max(0)
    keep = np.nonzero(scores > conf)[0]
    order = keep[np.argsort(-scores[keep], kind="stable")][:30000]
    cx, cy, w, h = output[:4, order]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    kept = nms(boxes, scores[order], classes[order], iou_threshold, max_det)
    (gx, gy), (left, top) = fit
    height, width = rgb.shape[:2]
    detections = []
    for k in kept:
        x1, y1, x2, y2 = boxes[k]
        box = [float(np.clip((x1 - left) / gx, 0, width)), float(np.clip((y1 - top) / gy, 0, height)),
               float(np.clip((x2 - left) / gx, 0, width)), float(np.clip((y2 - top) / gy, 0, height))]
        c = int(classes[order[k]])
        detections.append({"class": c, "name": names.get(c), "score": float(scores[order[k]]),
                           "box": box})
    return {"rgb": rgb_path, "ir": ir_path, "width": width, "height": height,
            "detections": detections}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("rgb")
    parser.add_argument("ir")
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--iou", type=float, default=0.7)
    parser.add_argument("--max-det", type=int, default=300)
    args = parser.parse_args()
    print(json.dumps(predict(args.model, args.rgb, args.ir, args.conf, args.iou, args.max_det)))
