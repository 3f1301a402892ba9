"""Loads the files `fusekit export` wrote and runs them on the inputs the Rust test saved.

usage: export_check.py DIR
DIR holds model.onnx (and optionally model.torchscript) and cases: case<k>_<input>.npy inputs and
case<k>_expected.npy, fusekit's own output on them. Prints one JSON object: the ONNX checker's
verdict, the metadata, and the largest relative difference per format and case.
"""

import json
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort


def relative_difference(actual, expected):
    return float(np.max(np.abs(actual.astype(np.float64) - expected) / np.maximum(1.0, np.abs(expected))))


def main(folder):
    folder = pathlib.Path(folder)
    cases = sorted({p.name.split("_")[0] for p in folder.glob("case*_expected.npy")})
    report = {"cases": cases}
    model = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    report["checker"] = "ok"
    report["opset"] = model.opset_import[0].version
    report["metadata"] = {p.key: p.value for p in model.metadata_props}
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    report["inputs"] = [[i.name, i.type, i.shape] for i in session.get_inputs()]
    half = session.get_inputs()[0].type == "tensor(float16)"
    report["onnx"] = {}
    for case in cases:
        feeds = {i.name: np.load(folder / f"{case}_{i.name}.npy") for i in session.get_inputs()}
        if half:
            feeds = {k: v.astype(np.float16) for k, v in feeds.items()}
        out = session.run(None, feeds)[0]
        report["onnx"][case] = relative_difference(out, np.load(folder / f"{case}_expected.npy"))
    script = folder / "model.torchscript"
    if script.exists():
        import torch

        extra = {"config.txt": ""}
        module = torch.jit.load(str(script), _extra_files=extra)
        report["torchscript_metadata"] = json.loads(extra["config.txt"])
        names = report["torchscript_metadata"]["inputs"].split(",")
        case = cases[0]
        with torch.no_grad():
            out = module(*[torch.from_numpy(np.load(folder / f"{case}_{n}.npy")) for n in names])
        report["torchscript"] = relative_difference(out.numpy(), np.load(folder / f"{case}_expected.npy"))
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
