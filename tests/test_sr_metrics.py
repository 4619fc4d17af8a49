"""SR evaluation conventions against hand-computed values: MATLAB rgb2ycbcr luma, MATLAB bicubic imresize
(antialiased when shrinking, symmetric boundary), Y-PSNR with peak 255 and border crop, SSIM with an 11x11
Gaussian window (sigma 1.5); the sr_pairs data layouts and `evaluate.py sr`."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_cli
from vistok.ops import imresize, tiled_upscale
from vistok.metrics.sr import psnr_y, rgb_to_y, ssim_y


def test_y_is_matlab_rgb2ycbcr_luma():
    rgb = torch.tensor([[1.0, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]).t().reshape(3, 1, 5)
    y = rgb_to_y(rgb)[0]
    torch.testing.assert_close(y, torch.tensor([235.0, 16.0, 81.481, 144.553, 40.966], dtype=torch.float64))


def test_imresize_matches_matlab_bicubic_by_hand():
    ramp = torch.arange(1.0, 17.0).repeat(16, 1)[None]  # 1,16,16: every row 1..16
    half = imresize(ramp, 0.5)
    assert half.shape == (1, 8, 8)
    # output 1: centre u = 1.5; antialiased cubic weights 0.5 * cubic(0.5 * d) at d = 3.5 .. -3.5 over the
    # symmetric-padded inputs [3, 2, 1, 1, 2, 3, 4, 5]:
    w = [-0.0234375, -0.0703125, 0.2265625, 0.8671875, 0.8671875, 0.2265625, -0.0703125, -0.0234375]
    expect = 0.5 * sum(wi * xi for wi, xi in zip(w, [3, 2, 1, 1, 2, 3, 4, 5]))
    assert expect == pytest.approx(1.44921875)
    torch.testing.assert_close(half[0, :, 0], torch.full((8,), 1.44921875), atol=1e-6, rtol=0)
    torch.testing.assert_close(half[0, 0, 3], torch.tensor(7.5), atol=1e-6, rtol=0)  # linear in the interior: 2j - 0.5
    double = imresize(ramp, 2)
    assert double.shape == (1, 32, 32)
    torch.testing.assert_close(double[0, 0, 7], torch.tensor(4.25), atol=1e-6, rtol=0)  # u = j / 2 + 0.25
    flat = imresize(torch.full((3, 9, 12), 0.3), 1 / 3)
    torch.testing.assert_close(flat, torch.full((3, 3, 4), 0.3))


def test_psnr_uses_peak_255_on_y_after_the_border_crop():
    a = torch.full((3, 12, 12), 84 / 219)  # Y = 100
    b = torch.full((3, 12, 12), 94 / 219)  # Y = 110: MSE 100
    assert psnr_y(a, b, 2) == pytest.approx(10 * math.log10(255 ** 2 / 100))
    c = b.clone()
    c[:, :2] = 0  # only inside the border
    assert psnr_y(a, c, 2) == pytest.approx(psnr_y(a, b, 2))
    assert psnr_y(a, c, 1) < psnr_y(a, b, 1)


def _gaussian_ssim(x, y):
    """SSIM written out: 11x11 Gaussian (sigma 1.5) means/variances over valid windows, L = 255."""
    g = np.exp(-(np.arange(11) - 5) ** 2 / (2 * 1.5 ** 2))
    k = np.outer(g, g) / np.outer(g, g).sum()
    win = lambda a: np.lib.stride_tricks.sliding_window_view(a, (11, 11))  # noqa: E731
    f = lambda a: (win(a) * k).sum((-1, -2))  # noqa: E731
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float((((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean())


def test_ssim_is_the_gaussian_window_ssim_on_y():
    a = torch.full((3, 16, 16), 84 / 219)  # Y = 100
    b = torch.full((3, 16, 16), 94 / 219)  # Y = 110
    c1 = (0.01 * 255) ** 2
    assert ssim_y(a, b, 0) == pytest.approx((2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 30, 30, generator=g), torch.rand(3, 30, 30, generator=g)
    y = 0.7 * x + 0.3 * y
    expect = _gaussian_ssim(rgb_to_y(x[:, 2:-2, 2:-2]).numpy(), rgb_to_y(y[:, 2:-2, 2:-2]).numpy())
    assert ssim_y(x, y, 2) == pytest.approx(expect, abs=1e-6)
    assert ssim_y(x, x, 2) == pytest.approx(1.0)


def test_tiles_cover_the_image_and_a_single_tile_is_whole_image_inference():
    from vistok.sr.catanet import CATANet

    torch.manual_seed(0)
    m = CATANet(scale=2, dim=16, qk_dim=16, mlp_dim=32, heads=2, num_centers=[4], group_sizes=[16], patch_sizes=[8],
                kmeans_iters=[2]).eval()
    lr = torch.rand(1, 3, 30, 26)
    with torch.no_grad():
        whole = m.upscale(lr)
        torch.testing.assert_close(tiled_upscale(m, lr, 64, 8), whole)
        tiled = tiled_upscale(m, lr, 16, 4)
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all()
    assert 10 * math.log10(1 / float(((tiled - whole) ** 2).mean())) > 25  # seams blended, content the same


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.mark.slow
def test_evaluate_sr_on_a_benchmark_folder(tmp_path):
    from vistok.sr.catanet import CATANet

    rng = np.random.default_rng(0)
    for name in ("baby", "bird"):  # Set5-style: HR/ and LR_bicubic/X2/ (only bird's LR given)
        hr = (rng.random((26, 30, 3)) * 255).astype(np.uint8)
        _write(tmp_path / "Set5" / "HR" / f"{name}.png", hr)
    _write(tmp_path / "Set5" / "LR_bicubic" / "X2" / "birdx2.png", (rng.random((13, 15, 3)) * 255).astype(np.uint8))
    CATANet(scale=2, dim=16, qk_dim=16, mlp_dim=32, heads=2, num_centers=[4], group_sizes=[16], patch_sizes=[8],
            kmeans_iters=[2]).save_pretrained(str(tmp_path / "sr"))
    out = run_cli(["evaluate.py", "sr", "--model", str(tmp_path / "sr"), "--data", str(tmp_path / "Set5")]).stdout
    res = json.loads(out.strip().splitlines()[-1])
    assert {"psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y"} <= set(res) and res["num_images"] == 2
    assert [r["name"] for r in res["per_image"]] == ["baby.png", "bird.png"]
    assert res["bicubic_psnr_y"] == pytest.approx(np.mean([r["bicubic_psnr_y"] for r in res["per_image"]]))
    bad = run_cli(["evaluate.py", "sr", "--model", str(tmp_path / "sr"), "--data", str(tmp_path / "nope")], check=False)
    assert bad.returncode == 2 and "nope" in bad.stderr
