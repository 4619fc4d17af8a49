"""Evaluation: metric definitions, the FID path through torch-fidelity's real network (random weights),
FD-LeNet on real vs corrupted digits, and the CLI's JSON contract."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vistok.data.mnist import MNIST
from vistok.metrics.fid import StreamingStats
from vistok.evaluation.fid import compute_fid, inception_extractor
from vistok.metrics.image import ReconstructionMeter, codebook_stats, psnr_per_image
from tests.conftest import call_cli, run_cli


def test_psnr_and_codebook_stats():
    x = torch.zeros(2, 1, 16, 16)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 -> 20 dB
    y[1] += 0.01  # MSE 1e-4 -> 40 dB
    assert torch.allclose(psnr_per_image(x, y), torch.tensor([20.0, 40.0]), atol=1e-4)
    usage, ppl = codebook_stats(torch.tensor([5, 5, 0, 0]))
    assert usage == 0.5 and abs(ppl - 2.0) < 1e-9
    m = ReconstructionMeter(4)
    m.update(x * 2 - 1, y * 2 - 1, torch.tensor([[0, 1], [1, 1]]))
    out = m.compute()
    assert abs(out["psnr"] - 30.0) < 1e-3 and out["codebook_usage"] == 0.5 and out["ssim"] < 1


def test_streaming_stats_match_numpy():
    f = np.random.default_rng(0).normal(size=(50, 7))
    s = StreamingStats()
    s.update(f[:20])
    s.update(f[20:])
    mu, sigma = s.mu_sigma()
    assert np.allclose(mu, f.mean(0)) and np.allclose(sigma, np.cov(f, rowvar=False))


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """inception-v3-compat with Kaiming-initialised weights, saved as a plain state dict."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    orig_load, orig_url = fe.FeatureExtractorInceptionV3.load_state_dict, fe.load_state_dict_from_url
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None
    fe.load_state_dict_from_url = lambda *a, **k: {}
    try:
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    finally:
        fe.FeatureExtractorInceptionV3.load_state_dict, fe.load_state_dict_from_url = orig_load, orig_url
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight)
    path = tmp_path_factory.mktemp("inception") / "inception_random.pth"
    torch.save(net.state_dict(), path)
    return str(path)


def _write_pngs(folder, images):
    os.makedirs(folder, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(os.path.join(folder, f"{i:05d}.png"))


@pytest.mark.slow
def test_fid_end_to_end_with_random_inception(random_inception, tmp_path):
    digits = ((MNIST("test").images[:10, 0] + 1) * 127.5).round().byte().numpy()
    noise = np.random.default_rng(0).integers(0, 256, size=(10, 32, 32), dtype=np.uint8)
    _write_pngs(tmp_path / "a", digits)
    _write_pngs(tmp_path / "b", noise)
    same = compute_fid(str(tmp_path / "a"), str(tmp_path / "a"), random_inception)
    diff = compute_fid(str(tmp_path / "a"), str(tmp_path / "b"), random_inception, kid=True, kid_subset_size=5)
    assert abs(same["fid"]) < 1e-3 * diff["fid"] and diff["fid"] > 0
    assert diff["isc_mean"] >= 1.0 and "kid_mean" in diff
    # statistics saved to .npz give the same FID as the folder
    proc = run_cli(["evaluate.py", "fid", "--samples", str(tmp_path / "b"), "--save-stats", str(tmp_path / "b.npz"),
                    "--inception-weights", random_inception])
    assert json.loads(proc.stdout.strip().splitlines()[-1])["num_images"] == 10
    via_npz = compute_fid(str(tmp_path / "a"), str(tmp_path / "b.npz"), random_inception)
    assert abs(via_npz["fid"] - diff["fid"]) < 1e-6 * diff["fid"]


def test_fid_without_weights_says_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("VISTOK_INCEPTION_WEIGHTS", "")
    proc = call_cli(["evaluate.py", "fid", "--samples", tmp_path, "--reference", tmp_path], check=False)
    assert proc.returncode == 2 and "--inception-weights" in proc.stderr and "torch-fidelity" in proc.stderr


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/vistok_pwned_marker",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = "/tmp/vistok_pwned_marker"
    if os.path.exists(marker):
        os.unlink(marker)
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"w": _Exploit()}, f)
    with pytest.raises(ValueError, match="weights-only"):
        inception_extractor(str(evil))
    assert not os.path.exists(marker)


@pytest.mark.slow
def test_classify_real_digits_vs_noise(tmp_path):
    test = MNIST("train", limit=200)  # real digits the classifier has not been scored on as held-out
    digits = ((test.images[:, 0] + 1) * 127.5).round().byte().numpy()
    _write_pngs(tmp_path / "real", digits)
    (tmp_path / "real" / "sampling.json").write_text(json.dumps({"labels": test.labels.tolist()}))
    _write_pngs(tmp_path / "noise", np.random.default_rng(1).integers(0, 256, (200, 32, 32), dtype=np.uint8))
    real = json.loads(run_cli(["evaluate.py", "classify", "--samples", str(tmp_path / "real"),
                               "--out", str(tmp_path / "r.json")]).stdout.strip().splitlines()[-1])
    noise = json.loads(run_cli(["evaluate.py", "classify", "--samples", str(tmp_path / "noise")]).stdout.strip().splitlines()[-1])
    assert real["class_accuracy"] > 0.95
    assert real["fd_lenet"] < 3 * real["fd_lenet_floor"] < noise["fd_lenet"]
    assert json.loads((tmp_path / "r.json").read_text()) == real


def test_colour_and_brightness_errors_are_in_8_bit_levels():
    from vistok.metrics.image import colour_errors_per_image

    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    brighter = x + 10 / 255
    red = x.clone()
    red[:, 0] += 30 / 255
    colour, brightness = colour_errors_per_image(x, brighter)
    assert torch.allclose(colour, torch.full((3,), 10.0), atol=1e-3) and torch.allclose(brightness, colour, atol=1e-3)
    colour, brightness = colour_errors_per_image(x, red)  # one channel: a third of it, weighed 0.299 in luma
    assert torch.allclose(colour, torch.full((3,), 10.0), atol=1e-3)
    assert torch.allclose(brightness, torch.full((3,), 0.299 * 30), atol=1e-3)
    shuffled = x[:, :, torch.randperm(8)]  # moved pixels keep their means: no drift
    assert float(colour_errors_per_image(x, shuffled)[0].max()) < 1e-3
    grey = x[:, :1]
    assert torch.allclose(colour_errors_per_image(grey, grey + 5 / 255)[1], torch.full((3,), 5.0), atol=1e-3)
