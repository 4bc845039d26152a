"""`mnistlab export`: parse, call mnistlab.export, print."""

from __future__ import annotations

import argparse
import json

from .common import command


def register(sub) -> None:
    p = command(sub, "export", "export a run to ONNX or TorchScript (dynamic batch, checked)",
                description="Export a trained run's best checkpoint with a dynamic batch size and "
                "its class names and normalization as metadata; the exported model must "
                "reproduce the PyTorch logits on validation images (within 1e-4, or 98%% top-1 "
                "agreement for int8). See docs/compression.md.")
    p.add_argument("run", metavar="RUN", help="a run directory or checkpoint")
    p.add_argument("--format", default="onnx", metavar="onnx|torchscript",
                   help="onnx (ONNX Runtime runs it: predict/serve --runtime onnx) or "
                        "torchscript")
    p.add_argument("--int8", default="none", metavar="none|dynamic|static",
                   help="onnx: also write an int8 model with ONNX Runtime's quantization: "
                        "dynamic (dense layers) or static (all layers, calibrated on training "
                        "images)")
    p.add_argument("--calibration", type=int, default=512, metavar="N",
                   help="--int8 static: training images used to calibrate")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="output file (default RUN/export/model[.int8-MODE].onnx or "
                        "model.torchscript.pt)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the parity check (it needs the run's dataset)")
    p.add_argument("--data-dir", help="where the run's dataset is (for the parity check)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = export(args.run, args.format, output=args.output, int8=args.int8,
                    calibration=args.calibration, check=not args.no_check,
                    data_dir=args.data_dir, log=lambda s: None)
    if args.json:
        print(json.dumps({"path": str(result.path), "format": result.format, "int8": result.int8,
                          "bytes": result.bytes, "parity": result.parity,
                          "files": [str(f) for f in result.files]}))
        return 0
    print(f"exported: {result.path} ({result.bytes:,} bytes)")
    if result.parity:
        print("parity check: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in result.parity.items()))
    return 0
