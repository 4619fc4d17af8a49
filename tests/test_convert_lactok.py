"""The LaCToK converter on a synthetic checkpoint with LaCToK's key names (read in Alpha-X-95/LaCToK: ``encoder.*`` +
``quantize.embedding.weight`` of LlamaGen's VQ, ``decoder.controlnet.*`` with the stride-1
``controlnet_cond_embedding.{conv_in, blocks.N, conv_out}``, the peft-wrapped UNet under
``decoder.unet.base_model.model.`` with ``base_layer`` / ``lora_A.default`` / ``lora_B.default``, and ``vae.*``) over
a tiny SDXL-like folder: the converted release decodes exactly like the model the checkpoint was made from, encodes
like the LlamaGen converter's VQ, and a checkpoint whose base UNet differs from the folder's is refused."""
import pytest
import torch

from tests.test_convert import official_vq, save
from vistok.convert.lactok import convert_lactok
from vistok.convert.llamagen import convert_vq
from vistok.tokenizers.layton import Layton

K, D, Z = 64, 8, 16


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    from diffusers import AutoencoderKL

    from vistok.nn.unet import small_unet

    root = tmp_path_factory.mktemp("sdxl")
    torch.manual_seed(0)
    small_unet("test", 16, 4, 4, [16, 32], 1, [1], 4, 8, 16).save_pretrained(root / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4).save_pretrained(root / "vae")
    return str(root)


def lactok_checkpoint(sdxl: str):
    """(LaCToK-named state dict, the Layton model it describes, the LlamaGen VQ checkpoint its encoder is)."""
    official = official_vq(K=K, cdim=D, z=Z)
    state = {k: v for k, v in official.items() if not k.startswith("decoder.")}  # LaCToK's VQ has no pixel decoder
    torch.manual_seed(1)
    ref = Layton(image_size=32, vq=dict(image_size=16, ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=Z,
                                        attn_last_level=True, downsample_pad="asymmetric", codebook_size=K,
                                        codebook_dim=D, ema=False),
                 vae={"type": "autoencoder_kl", "path": sdxl, "subfolder": "vae"},
                 unet={"type": "unet2d_condition", "path": sdxl, "subfolder": "unet", "lora": {"r": 4}},
                 cond_embedding_channels=[8, 16, 24], stage=2).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.startswith("controlnet.") or ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
        ref.vq.quantizer.vq.embedding.copy_(official["quantize.embedding.weight"])
    for k, v in ref.controlnet.state_dict().items():
        state["decoder.controlnet." + k] = v.clone()
    for k, v in ref.unet.model.state_dict().items():  # adapters and the frozen base, peft's names
        state["decoder.unet.base_model.model." + k] = v.clone()
    for k, v in ref.vae.model.state_dict().items():
        state["vae." + k] = v.clone()
    return state, ref, official


def test_a_lactok_checkpoint_becomes_a_layton_that_decodes_like_it(sdxl, tmp_path):
    state, ref, official = lactok_checkpoint(sdxl)
    for key in ("decoder.controlnet.controlnet_cond_embedding.conv_in.weight",  # LaCToK's literal names
                "decoder.controlnet.controlnet_cond_embedding.blocks.3.weight",
                "decoder.controlnet.controlnet_cond_embedding.conv_out.weight",
                "decoder.unet.base_model.model.down_blocks.0.resnets.0.conv1.base_layer.weight",
                "decoder.unet.base_model.model.down_blocks.0.resnets.0.conv1.lora_A.default.weight",
                "decoder.unet.base_model.model.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.default.weight",
                "decoder.unet.base_model.model.conv_in.weight", "vae.decoder.conv_out.weight", "quant_conv.weight"):
        assert key in state, key
    model, counts = convert_lactok(save(tmp_path, "LaCTok-T.pth", state), sdxl, image_size=32, vq_image_size=16)
    assert counts["unet_base"] > 0 and counts["vae"] > 0
    assert model.stage == 2 and model.cond_scale == 0.8 and model.consistency_timesteps == [999, 499, 124]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    vq16 = convert_vq(save(tmp_path, "vq.pt", official), image_size=16)
    codes = model.encode(x)
    assert torch.equal(codes, vq16.encode(model.vq_input(x)))  # LlamaGen's VQ on the 2x-downsampled image
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    assert torch.equal(model.decode(codes, generator=g()), ref.decode(codes, generator=g()))


def test_a_checkpoint_whose_base_unet_differs_from_the_folder_is_refused(sdxl, tmp_path):
    state = lactok_checkpoint(sdxl)[0]
    key = "decoder.unet.base_model.model.conv_in.weight"
    state[key] = state[key] + 0.01
    with pytest.raises(ValueError, match="conv_in.weight' differs from the UNet in --sdxl"):
        convert_lactok(save(tmp_path, "bad.pth", state), sdxl, image_size=32, vq_image_size=16)
    state = lactok_checkpoint(sdxl)[0]
    state["decoder.controlnet.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected \\['controlnet.extra.weight'\\]"):
        convert_lactok(save(tmp_path, "extra.pth", state), sdxl, image_size=32, vq_image_size=16)
