"""Official CATANet checkpoints (EquationWalker/CATANet, BasicSR: ``{"params": state_dict}``, also
``params_ema``) -> vistok's ``catanet``. Per block i:

    blocks.<i>.0 (TAB): norm, conv1x1, irca_attn.to_k/to_v, iasa_attn.to_q/to_k/to_v/proj,
                        mlp.norm, mlp.fn.{fc1, dwconv.depthwise_conv.0, fc2}, means, initted
        -> blocks.<i>.tab: norm, conv, center_k/center_v, q/k/v/proj, ffn_norm, ffn.{fc1, dw, fc2},
                           centers, centers_ready
    blocks.<i>.1 (LRSA): layer.0.norm, layer.0.fn.to_q/to_k/to_v/proj, layer.1.norm, layer.1.fn.{...}
        -> blocks.<i>.lrsa: attn_norm, attn.q/k/v/proj, ffn_norm, ffn.{fc1, dw, fc2}
    mid_convs.<i> -> blocks.<i>.conv;  first_conv -> shallow;  last_conv -> last
    upconv (x2, x3) -> up.0;  upconv1, upconv2 (x4) -> up.0, up.1

The centres (``means``) and their ``initted`` flag are buffers of the release and are carried over, so eval
uses the trained centres. The per-block settings (centres, group sizes, patch sizes, k-means rounds) are not
stored; the paper's are assumed (a centre count is checked against the ``means`` shape).
"""
from __future__ import annotations

from vistok.convert.common import Taker, count_indexed, load_converted, read_checkpoint
from vistok.registry import register_converter

PAPER = dict(dim=40, qk_dim=36, mlp_dim=96, heads=4)


def _ffn(t: Taker, old: str, new: str) -> None:
    t.copy(f"{old}.fc1", f"{new}.fc1")
    t.copy(f"{old}.dwconv.depthwise_conv.0", f"{new}.dw")
    t.copy(f"{old}.fc2", f"{new}.fc2")


def convert_catanet(path: str, **overrides):
    from vistok.sr.catanet import CATANet

    state = read_checkpoint(path)  # BasicSR nests the weights under "params" (or "params_ema")
    for key in ("first_conv.weight", "last_conv.weight", "blocks.0.0.means"):
        if key not in state:
            raise KeyError(f"{path}: missing key '{key}' (expected an official CATANet checkpoint)")
    scale = 4 if "upconv1.weight" in state else int(round((state["upconv.weight"].shape[0] / state["first_conv.weight"].shape[0]) ** 0.5))
    depth = count_indexed(state, "blocks")
    centers = [int(state[f"blocks.{i}.0.means"].shape[0]) for i in range(depth)]
    dim = int(state["first_conv.weight"].shape[0])
    args = dict(PAPER, dim=dim, qk_dim=int(state["blocks.0.1.layer.0.fn.to_q.weight"].shape[0]),
                mlp_dim=int(state["blocks.0.0.mlp.fn.fc1.weight"].shape[0]), num_centers=centers)
    args.update(overrides)
    if depth != 8 and not {"group_sizes", "patch_sizes", "kmeans_iters"} <= set(overrides):
        raise ValueError(f"{path}: {depth} blocks; the per-block group/patch sizes are only known for the paper's 8 "
                         f"(pass group_sizes=, patch_sizes=, kmeans_iters=)")
    model = CATANet(scale=scale, in_channels=int(state["first_conv.weight"].shape[1]), **args)
    t = Taker(state, path)
    t.copy("first_conv", "shallow")
    t.copy("last_conv", "last")
    ups = ["upconv1", "upconv2"] if scale == 4 else ["upconv"]
    for j, name in enumerate(ups):
        t.copy(name, f"up.{j}")
    for i in range(depth):
        tab, lrsa, old = f"blocks.{i}.tab", f"blocks.{i}.lrsa", f"blocks.{i}"
        t.copy(f"{old}.0.norm", f"{tab}.norm")
        t.copy(f"{old}.0.conv1x1", f"{tab}.conv", ("weight",))
        t.copy(f"{old}.0.irca_attn.to_k", f"{tab}.center_k", ("weight",))
        t.copy(f"{old}.0.irca_attn.to_v", f"{tab}.center_v", ("weight",))
        for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("proj", "proj")):
            t.copy(f"{old}.0.iasa_attn.{a}", f"{tab}.{b}", ("weight",))
            t.copy(f"{old}.1.layer.0.fn.{a}", f"{lrsa}.attn.{b}", ("weight",))
        t.copy(f"{old}.0.mlp.norm", f"{tab}.ffn_norm")
        _ffn(t, f"{old}.0.mlp.fn", f"{tab}.ffn")
        t.out[f"{tab}.centers"] = t.get(f"{old}.0.means")
        t.out[f"{tab}.centers_ready"] = t.get(f"{old}.0.initted").bool().reshape(())
        t.copy(f"{old}.1.layer.0.norm", f"{lrsa}.attn_norm")
        t.copy(f"{old}.1.layer.1.norm", f"{lrsa}.ffn_norm")
        _ffn(t, f"{old}.1.layer.1.fn", f"{lrsa}.ffn")
        t.copy(f"mid_convs.{i}", f"blocks.{i}.conv")
    return load_converted(model, t.finish(), path)


@register_converter("catanet")
class CATANetConverter:
    help = "BasicSR CATANet checkpoints -> catanet (a super-resolution pipeline)"

    @staticmethod
    def add_arguments(p) -> None:
        p.add_argument("--ckpt", required=True, help="CATANet checkpoint (CATANet-x2.pth ...)")

    @staticmethod
    def convert(args) -> tuple[dict, dict, dict]:
        return {"sr": convert_catanet(args.ckpt)}, {"sr": args.ckpt}, {}
