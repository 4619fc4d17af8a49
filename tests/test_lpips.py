"""LPIPS from local files (randomly initialised VGG-16 weights saved to a temporary file), and the
tokenizers' optional LPIPS term."""
import pytest
import torch
from torchvision.models import vgg16

from vistok.nn.lpips import LPIPS, load_lpips
from vistok.tokenizers.vqgan import VQGAN


@pytest.fixture(scope="module")
def vgg_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in vgg16(weights=None).features.state_dict().items()}, d / "vgg16.pth")
    return d


def test_lpips_is_a_distance_that_grows_with_the_corruption(vgg_dir):
    net = load_lpips(str(vgg_dir))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    noise = torch.randn(4, 3, 32, 32, generator=g)
    same, small, large = net(x, x), net(x, (x + 0.05 * noise).clamp(-1, 1)), net(x, (x + 0.5 * noise).clamp(-1, 1))
    assert same.abs().max() < 1e-6 and bool((small > 0).all()) and bool((large > small).all())
    assert net(x[:, :1], x[:, :1]).shape == (4,)  # grey images are repeated to RGB


@pytest.mark.slow
def test_lpips_calibrated_weights_and_named_errors(vgg_dir, tmp_path):
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(lin, tmp_path / "lin.pth")
    net = LPIPS(str(vgg_dir / "vgg16.pth"), str(tmp_path / "lin.pth"))
    assert torch.equal(net.lins[2], lin["lin2.model.1.weight"].flatten())
    del lin["lin4.model.1.weight"]
    torch.save(lin, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="lin4.model.1.weight"):
        LPIPS(str(vgg_dir / "vgg16.pth"), str(tmp_path / "bad.pth"))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        LPIPS(str(tmp_path / "nowhere.pth"))


@pytest.mark.slow
def test_vqgan_lpips_term_trains_and_stays_out_of_the_weights(vgg_dir):
    torch.manual_seed(0)
    m = VQGAN(image_size=16, in_channels=1, ch=8, ch_mult=[1, 2], num_res_blocks=1, z_channels=8, attn_mid=False,
              codebook_size=16, codebook_dim=4, ema=False, lpips_weight=1.0, lpips_path=str(vgg_dir))
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    first = None
    for _ in range(15):
        out = m({"image": x})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else float(out["lpips"])
    assert float(out["lpips"]) < first
    assert not any("lpips" in k or "features" in k for k in m.state_dict())
    with pytest.raises(ValueError, match="lpips_path"):
        VQGAN(image_size=16, in_channels=1, ch=8, ch_mult=[1, 2], num_res_blocks=1, z_channels=8, codebook_size=16,
              codebook_dim=4, lpips_weight=1.0)({"image": x})
