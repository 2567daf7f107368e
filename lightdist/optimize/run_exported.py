"""Run an exported model without lightdist's training stack:

    python -m lightdist.optimize.run_exported <dir>/model.onnx                 # the saved samples, checked
    python -m lightdist.optimize.run_exported <dir>/model.pt2 --images x.npy   # uint8 images: N x H x W or N x C x H x W
    python -m lightdist.optimize.run_exported <dir>/model.onnx --images t10k-images-idx3-ubyte.gz
    python -m lightdist.optimize.run_exported <dir>/model.onnx --inputs x.npz   # pre-encoded (text: input0, input1)

A pickled module (model_int8_dynamic.pt: dynamic int8 recurrent models, which no exporter
captures) runs only with --trust-pickle: unpickling runs whatever code the file names.

Needs only the export folder: model.json says the input layout, the normalisation and the
class names. Prints one JSON line per input (label and probability); with no --images, runs
the saved sample inputs and exits 1 if the logits differ from the PyTorch model's by more
than --atol. Text models take pre-encoded inputs (token ids and lengths, named as in
model.json and samples.npz); `lightdist predict` encodes raw text with the run's tokenizer.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from lightdist.errors import LightdistError
from lightdist.optimize.export import SAMPLES, SIDECAR, load_exported


def load_images(path: Path, spec: dict) -> torch.Tensor:
    """uint8 images from .npy or an IDX file, normalised as the data module normalised training images."""
    if path.suffix == ".npy":
        images = np.load(path)
    else:
        from lightdist.vision.idx import read_idx

        images = read_idx(path)
    shape = spec["inputs"][0]["shape"]  # N x C x H x W
    if images.ndim == len(shape) - 1:  # grey images without a channel axis: N x H x W
        images = images[:, None]
    if images.ndim != len(shape) or list(images.shape[1:]) != shape[1:]:
        raise SystemExit(f"{path}: images of shape {list(images.shape)}; the model takes N x {' x '.join(map(str, shape[1:]))}")
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    norm = spec.get("normalize")
    if norm:
        x = (x - torch.tensor(norm["mean"]).view(1, -1, 1, 1)) / torch.tensor(norm["std"]).view(1, -1, 1, 1)
    return x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightdist.optimize.run_exported", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model.onnx, model.pt2 or model.torchscript.pt written by "
                                                 "`lightdist optimize`")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", type=Path, help="uint8 images (.npy, or an IDX file as MNIST ships them)")
    source.add_argument("--inputs", type=Path, help=".npz of model-ready arrays named as model.json's inputs")
    parser.add_argument("--limit", type=int, default=None, help="at most this many inputs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--atol", type=float, default=1e-4, help="tolerance of the sample check")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="also load a pickled module (model_int8_dynamic.pt); unpickling runs any code the "
                             "file names, so only for files you made yourself")
    args = parser.parse_args(argv)
    spec = json.loads((args.model.parent / SIDECAR).read_text())
    try:
        model = load_exported(args.model, args.threads, trust_pickle=args.trust_pickle)
    except LightdistError as exc:  # e.g. a .pt2 archive that would unpickle more than tensors
        print(f"lightdist: error: {exc}", file=sys.stderr)
        return 2
    classes = spec["class_names"]
    if args.images is not None:
        inputs, expected = (load_images(args.images, spec),), None
    else:
        arrays = np.load(args.inputs or args.model.parent / SAMPLES)
        missing = [i["name"] for i in spec["inputs"] if i["name"] not in arrays]
        if missing:
            raise SystemExit(f"{args.inputs}: no array named {', '.join(missing)} (model.json lists the inputs)")
        inputs = tuple(torch.from_numpy(arrays[i["name"]]) for i in spec["inputs"])
        expected = torch.from_numpy(arrays["logits"]) if args.inputs is None else None
    if args.limit:
        inputs = tuple(a[: args.limit] for a in inputs)
    with torch.inference_mode():
        probs = torch.softmax(model(*inputs).float(), dim=-1)
    for i, row in enumerate(probs):
        best = int(row.argmax())
        print(json.dumps({"index": i, "label": classes[best] if best < len(classes) else best,
                          "prob": round(float(row[best]), 6)}))
    if expected is not None:
        with torch.inference_mode():
            diff = float((model(*inputs).float() - expected[: len(inputs[0])]).abs().max())
        print(f"max |logit - PyTorch logit| = {diff:.2e} (tolerance {args.atol:g})", file=sys.stderr)
        return 0 if diff <= args.atol else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
