"""`mnistlab predict`: classify image files with a trained model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..limits import DEFAULT_THRESHOLD, DEFAULT_TOP_K
from .common import EXIT_PARTIAL, command


def register(sub) -> None:
    p = command(sub, "predict", "classify image files with a trained model",
                description="Classify images (PNG, JPEG, BMP, GIF, WebP; files or folders) "
                "after preparing them as MNIST digits were made. Exit status: 0 all "
                "predicted, 1 some images failed (each reported), 2 bad checkpoint or "
                "arguments.")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="a run directory (uses its best checkpoint) or a checkpoint path")
    p.add_argument("images", metavar="IMAGE", nargs="+",
                   help="image files, or folders searched recursively")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="alternatives to show")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per image on stdout (errors too, with an 'error' key)")
    p.add_argument("--save-input", metavar="DIR",
                   help="save the 28x28 image the model saw for each input, as PNG")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="flag predictions below this probability as unsure")
    p.add_argument("--runtime", default="torch", metavar="torch|onnx",
                   help="torch, or onnx: the run's ONNX export (mnistlab export RUN) or a .onnx "
                        "file, run by ONNX Runtime (the onnx extra)")
    p.set_defaults(func=run)


def _unique_name(folder: Path, stem: str, used: set[str]) -> Path:
    name, n = f"{stem}.png", 1
    while name in used:
        name, n = f"{stem}-{n}.png", n + 1
    used.add(name)
    return folder / name


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import ConfigError
    from ..predict import Predictor, find_images
    from ..preprocess import PreprocessError, to_png

    out, err = sys.stdout, sys.stderr
    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold: must be in 0..1, got {args.threshold}")
    if args.top_k < 1:
        raise ConfigError(f"--top-k: must be at least 1, got {args.top_k}")
    save_dir = Path(args.save_input) if args.save_input else None
    if save_dir is not None and save_dir.exists() and not save_dir.is_dir():
        raise ConfigError(f"--save-input: {save_dir} exists and is not a folder")
    predictor = Predictor.load(args.checkpoint, threshold=args.threshold, top_k=args.top_k,
                               runtime=args.runtime)
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    items = find_images(args.images)
    used: set[str] = set()
    failures = 0
    chunk = 256  # images preprocessed, then classified in one batch, then printed

    def report_error(path: Path, message: str) -> None:
        nonlocal failures
        failures += 1
        if args.json:
            print(json.dumps({"file": str(path), "error": message}), file=out)
        else:
            print(f"{path}: error: {message}", file=err)

    for start in range(0, len(items), chunk):
        # (path, model input or None, error or None), in the order given
        entries: list[tuple[Path, np.ndarray | None, str | None]] = []
        for path, problem in items[start : start + chunk]:
            if problem:
                entries.append((path, None, problem))
                continue
            try:
                entries.append((path, predictor.preprocess(path), None))
            except PreprocessError as e:  # its message starts with the path already
                entries.append((path, None, str(e).removeprefix(f"{path}: ")))
        good = [x for _, x, _ in entries if x is not None]
        preds = iter(predictor.predict_arrays(np.stack(good)) if good else [])
        for path, _x, problem in entries:
            if problem is not None:
                report_error(path, problem)
                continue
            pred = next(preds)
            saved = None
            if save_dir is not None:
                saved = _unique_name(save_dir, path.stem, used)
                saved.write_bytes(to_png(pred.input))
            if args.json:
                rec = {"file": str(path), **pred.to_dict(predictor.classes)}
                if saved is not None:
                    rec["input_file"] = str(saved)
                print(json.dumps(rec), file=out)
            else:
                alts = ", ".join(f"{c} {p:.1%}" for c, p in pred.top_k)
                flag = "  (unsure)" if pred.unsure else ""
                print(f"{path}: {pred.label} ({pred.confidence:.1%}){flag}  [{alts}]", file=out)
        out.flush()
    if failures and not args.json:
        print(f"{failures} of {len(items)} image(s) could not be predicted", file=err)
    return EXIT_PARTIAL if failures else 0
