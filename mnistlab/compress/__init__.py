"""Model compression: pruning, integer weights, quantization-aware training, distillation.

    from mnistlab.compress import CompressConfig, compress, distill
    run = compress(CompressConfig("runs/seed-cnn", prune=0.9, quantize="int8"))

``prune.py`` (magnitude masks, Zhu & Gupta's gradual schedule, structured narrowing),
``quantize.py`` (per-channel integer weights, fake-quantized fine-tuning), ``distill.py``
(Hinton et al. 2015, several teachers), ``core.py`` (the ``compress`` run). The compact file
format itself is ``mnistlab.compact`` (checkpoint.py reads it); ONNX export and ONNX Runtime
int8 quantization are ``mnistlab.export``. No CLI code lives here (see ``cli_compress.py``).
"""

from .core import CompressConfig, CompressError, compress
from .distill import DistillError, DistillLoss, distill
from .prune import PruneError, magnitude_masks, sparsity_table, structured_prune
from .quantize import FakeQuantModel, quantize_weights

__all__ = ["CompressConfig", "CompressError", "compress", "DistillError", "DistillLoss",
           "distill", "PruneError", "magnitude_masks", "sparsity_table", "structured_prune",
           "FakeQuantModel", "quantize_weights"]
