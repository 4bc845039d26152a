"""Per-layer summary of a model: output shape, parameters and FLOPs of one forward pass."""

from __future__ import annotations

from typing import Any


def summarize(model: Any, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> dict:
    """Rows for every leaf module of a torch model (in call order) and totals; FLOPs count
    a multiply-add as 2."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    shapes: dict[str, tuple] = {}
    order: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = []
    for module in model.modules():
        if not list(module.children()):  # leaves only
            def hook(mod, _inp, out, name=names[module]):
                if isinstance(out, torch.Tensor):
                    shapes[name] = tuple(out.shape)
                if name not in order:
                    order.append(name)

            hooks.append(module.register_forward_hook(hook))
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(input_shape))
    finally:
        for h in hooks:
            h.remove()
    flops = counter.get_flop_counts()
    root = type(model).__name__  # FlopCounterMode names modules '<Class>.<path>'
    rows = []
    for name in order:
        mod = model.get_submodule(name)
        key = f"{root}.{name}"
        rows.append({
            "layer": name,
            "type": type(mod).__name__,
            "output": shapes.get(name),
            "params": sum(p.numel() for p in mod.parameters(recurse=False)),
            "flops": int(sum(flops.get(key, {}).values())),
        })
    return {
        "rows": rows,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops": int(counter.get_total_flops()),
    }


def format_summary(name: str, s: dict) -> str:
    lines = [f"{name}: forward FLOPs per image (a multiply-add counts 2)",
             f"{'layer':<28} {'type':<18} {'output':<18} {'params':>10} {'FLOPs':>12}"]
    for r in s["rows"]:
        out = "x".join(map(str, r["output"][1:])) if r["output"] else "-"
        lines.append(f"{r['layer']:<28} {r['type']:<18} {out:<18} {r['params']:>10,} "
                     f"{r['flops']:>12,}")
    lines.append(f"{'total':<66} {s['params']:>10,} {s['flops']:>12,}")
    lines.append(f"trainable parameters: {s['trainable']:,}")
    return "\n".join(lines)
