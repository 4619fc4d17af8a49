"""VAT (arXiv 2412.02202): a 3-D variational tokenizer. No public code exists; this follows the paper's description.

    surface points + normals B,P,6 --Fourier features--> point tokens
    [L learned latent tokens; point tokens] --in-context transformer--> latent outputs B,L,dim
    --mu / log-sigma heads, reparameterise--> Gaussian latent z B,L,latent_dim              (stage 1 stops here)
    --1-D multi-scale residual VQ (scales n_1 < ... < n_K = L tokens)--> codes, sum n_k tokens  (stage 2)
    [quantised latents; 3 r^2 triplane tokens] --in-context transformer--> triplane tokens
    --up-sampling x ``triplane_up`` (conv, or a pixel-shuffled patch per token)--> triplane 3,C,R,R
    --bilinear features, summed--> MLP --> occupancy logit

Training: BCE on the batch's query points (uniform + near-surface), + ``kl_weight`` x KL(q(z|x) || N(0, I)) (mean
over latent elements; a plain deterministic latent with ``variational: false``, the ablation), + ``vq_weight`` x
the VQ loss in stage 2. Stage 2 fine-tunes a stage-1 run with the quantizer on (``train.init_from`` with
``init_skip: [quantizer]``); with ``scale_drop`` it also learns to decode from the first k scales, so one model
serves every code budget. The codes take (tokens summed over the scales used) x ceil(log2 K) / 8 bytes.

``decode(codes)`` returns occupancy logits on a R^3 grid over [-1, 1]^3 (index order x, y, z); ``meshes`` runs
marching cubes on them (``vistok.meshes``); ``preview`` renders meshes as images for grids while training.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.metrics.shapes3d import bytes_per_code_sequence
from vistok.nn.incontext import InContextTransformer, fourier_features
from vistok.nn.layout import TokenLayout
from vistok.quantizers.multiscale import MultiScaleResidualVQ, split_scales
from vistok.quantizers.vq import VQ
from vistok.registry import register_model
from vistok.schema import Decay, NonNegFloat, NonNegInt, OneOf, PosInt, PosInts, Prob
from vistok.tokenizers.base import Tokenizer


@dataclasses.dataclass
class VATDecodeOptions:
    """How VAT turns codes into meshes (``sample.py`` builds its flags from this)."""
    resolution: NonNegInt = dataclasses.field(default=0, metadata={
        "help": "marching-cubes grid per axis (0: the model's mesh_resolution)"})
    num_scales: NonNegInt = dataclasses.field(default=0, metadata={
        "help": "decode from the first K scales only: a smaller code budget (0: every scale)"})


def _upsampler(channels: int, factor: int, kind: str = "conv") -> nn.Sequential:
    """Triplane tokens r x r -> planes (r x factor)^2. ``conv``: nearest up-sampling + 3x3 conv per factor 2;
    ``shuffle``: each token already holds its factor x factor patch (``to_plane`` is wider), pixel-shuffled into
    place, then one 3x3 conv to blend the patch seams (every plane cell has its own output weights; it learned
    somewhat faster at the same cost, README "VAT")."""
    if kind == "shuffle":
        return nn.Sequential(nn.PixelShuffle(factor), nn.Conv2d(channels, channels, 3, padding=1))
    layers = []
    for _ in range(int(math.log2(factor))):
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU()]
    return nn.Sequential(*layers, nn.Conv2d(channels, channels, 3, padding=1))


@register_model("vat")
class VAT(Tokenizer):
    input_key = "points"
    SamplingOptions = VATDecodeOptions

    @classmethod
    def default_pipeline(cls, config: dict) -> str:
        return "shape-reconstruction"

    @classmethod
    def pipeline_for(cls, name: str) -> str:
        """A generator over VAT codes makes shapes, not images."""
        return {"class-to-image": "class-to-shape"}.get(name, name)

    def __init__(
        self,
        stage: OneOf(1, 2) = 1,
        variational: bool = True,
        num_freqs: PosInt = 6,
        dim: PosInt = 64,
        heads: PosInt = 4,
        enc_depth: PosInt = 2,
        dec_depth: PosInt = 2,
        latent_dim: PosInt = 8,
        scales: PosInts = (1, 2, 4, 8, 16, 32),
        codebook_size: PosInt = 256,
        vq_decay: Decay = 0.99,
        kmeans_init: bool = True,
        dead_code_threshold: NonNegFloat = 1.0,
        scale_drop: Prob = 0.5,
        triplane_res: PosInt = 8,
        triplane_up: PosInt = 4,
        triplane_channels: PosInt = 32,
        mlp_hidden: PosInt = 64,
        triplane_upsample: OneOf("conv", "shuffle") = "conv",
        kl_weight: NonNegFloat = 1e-3,
        vq_weight: NonNegFloat = 1.0,
        mesh_resolution: PosInt = 64,
    ):
        super().__init__()
        if triplane_up & (triplane_up - 1):
            raise ValueError(f"vat: triplane_up={triplane_up}; expected a power of 2")
        self.stage, self.variational, self.num_freqs = stage, variational, num_freqs
        self.scales, self.num_latents, self.latent_dim = [int(s) for s in scales], int(scales[-1]), latent_dim
        self.codebook_size = codebook_size if stage == 2 else None
        self.num_codes = codebook_size
        self.kl_weight, self.vq_weight, self.mesh_resolution = kl_weight, vq_weight, mesh_resolution
        self.triplane_res, self.triplane_channels = triplane_res, triplane_channels
        self.point_proj = nn.Linear(6 * (1 + 2 * num_freqs), dim)
        self.latent_queries = nn.Parameter(torch.randn(self.num_latents, dim) * 0.02)
        self.encoder = InContextTransformer(dim, enc_depth, heads)
        self.to_mu = nn.Linear(dim, latent_dim)
        self.to_logvar = nn.Linear(dim, latent_dim) if variational else None
        vq = VQ(latent_dim, codebook_size, l2_norm=False, ema=True, decay=vq_decay, kmeans_init=kmeans_init,
                dead_code_threshold=dead_code_threshold)
        self.quantizer = MultiScaleResidualVQ(vq, self.scales, scale_drop, ndim=1)
        self.from_latent = nn.Linear(latent_dim, dim)
        self.latent_pos = nn.Parameter(torch.randn(self.num_latents, dim) * 0.02)
        self.plane_tokens = nn.Parameter(torch.randn(3 * triplane_res ** 2, dim) * 0.02)
        self.decoder = InContextTransformer(dim, dec_depth, heads)
        patch = triplane_up ** 2 if triplane_upsample == "shuffle" else 1
        self.to_plane = nn.Linear(dim, triplane_channels * patch)
        self.upsample = _upsampler(triplane_channels, triplane_up, triplane_upsample)
        self.occupancy_mlp = nn.Sequential(nn.Linear(triplane_channels, mlp_hidden), nn.SiLU(),
                                           nn.Linear(mlp_hidden, mlp_hidden), nn.SiLU(), nn.Linear(mlp_hidden, 1))

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout((self.num_latents,), scales=tuple(self.scales))

    # ---- encoder --------------------------------------------------------------------------------
    def _check_points(self, points: torch.Tensor) -> None:
        if points.dim() != 3 or points.shape[-1] != 6:
            raise ValueError(f"vat: points {tuple(points.shape)}; expected B,P,6 (xyz in [-1, 1] and unit normals)")

    def latent(self, points: torch.Tensor, sample: bool = False):
        """points B,P,6 -> (z, mu, logvar or None), each B,L,latent_dim; z is mu unless ``sample``."""
        self._check_points(points)
        tokens = self.point_proj(fourier_features(points, self.num_freqs))
        h = self.encoder(self.latent_queries.expand(points.shape[0], -1, -1), tokens)
        mu = self.to_mu(h)
        if self.to_logvar is None:
            return mu, mu, None
        logvar = self.to_logvar(h).clamp(-30, 20)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        return z, mu, logvar

    # ---- decoder --------------------------------------------------------------------------------
    def triplane(self, z_hat: torch.Tensor) -> torch.Tensor:
        """Latent tokens B,L,latent_dim -> triplane B,3,C,R,R (planes xy, xz, yz)."""
        b, r = z_hat.shape[0], self.triplane_res
        ctx = self.from_latent(z_hat) + self.latent_pos
        t = self.to_plane(self.decoder(self.plane_tokens.expand(b, -1, -1), ctx))  # B,3r^2,C
        planes = t.reshape(b * 3, r, r, -1).permute(0, 3, 1, 2)
        planes = self.upsample(planes)
        return planes.reshape(b, 3, *planes.shape[1:])

    def occupancy_logits(self, planes: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Triplane B,3,C,R,R and query points B,Q,3 in [-1, 1] -> logits B,Q (positive = inside)."""
        feats = 0
        for k, (a, c) in enumerate(((0, 1), (0, 2), (1, 2))):
            grid = queries[..., [a, c]][:, None]  # B,1,Q,2
            feats = feats + F.grid_sample(planes[:, k], grid, mode="bilinear", align_corners=False)[:, :, 0]
        return self.occupancy_mlp(feats.transpose(1, 2))[..., 0]

    # ---- codes ----------------------------------------------------------------------------------
    def split_codes(self, codes) -> list[torch.Tensor]:
        """Flat codes B,T (T = the tokens of the first k scales) or a list per scale -> [B,n_k per scale]."""
        if isinstance(codes, (list, tuple)):
            return list(codes)
        prefix = np.cumsum(self.scales).tolist()
        if codes.shape[-1] not in prefix:
            raise ValueError(f"vat: {codes.shape[-1]} codes per shape; expected the tokens of the first k scales, "
                             f"one of {prefix} (scales {self.scales})")
        k = prefix.index(codes.shape[-1]) + 1
        return split_scales(codes, self.scales[:k], ndim=1)

    def bytes_per_shape(self, num_scales: int = 0) -> int:
        """Bytes of the codes of the first ``num_scales`` scales (0: all): tokens x ceil(log2 K) / 8."""
        return bytes_per_code_sequence(sum(self.scales[: num_scales or None]), self.num_codes)

    @torch.no_grad()
    def encode(self, points: torch.Tensor) -> torch.Tensor:
        """points B,P,6 -> codes B,sum(n_k) (stage 2), or the latent means B,L,latent_dim (stage 1)."""
        _, mu, _ = self.latent(points)
        if self.stage == 1:
            return mu
        _, codes, _ = self.quantizer(mu)
        return MultiScaleResidualVQ.flatten(codes)

    def decode_latent(self, codes, num_scales: int = 0) -> torch.Tensor:
        """Codes (flat or per scale) -> the quantised latent B,L,latent_dim from the first ``num_scales`` scales;
        stage 1: latents pass through."""
        if self.stage == 1 and torch.is_tensor(codes) and codes.is_floating_point():
            return codes
        per_scale = self.split_codes(codes)
        return self.quantizer.decode_codes(per_scale[: num_scales or None])

    @torch.no_grad()
    def occupancy_grid(self, z_hat: torch.Tensor, resolution: int = 0, chunk: int = 65536) -> torch.Tensor:
        """Latents -> occupancy logits B,R,R,R on the grid linspace(-1, 1, R)^3 (index order x, y, z)."""
        r = resolution or self.mesh_resolution
        axis = torch.linspace(-1, 1, r, device=z_hat.device)
        xyz = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        planes = self.triplane(z_hat)
        out = [self.occupancy_logits(planes, xyz[i:i + chunk].expand(z_hat.shape[0], -1, -1))
               for i in range(0, len(xyz), chunk)]
        return torch.cat(out, 1).reshape(-1, r, r, r)

    @torch.no_grad()
    def decode(self, codes, generator=None, resolution: int = 0, num_scales: int = 0, **_) -> torch.Tensor:
        """Codes -> occupancy logits B,R,R,R over [-1, 1]^3."""
        return self.occupancy_grid(self.decode_latent(codes, num_scales), resolution)

    @torch.no_grad()
    def reconstruct(self, points: torch.Tensor, resolution: int = 0, num_scales: int = 0):
        """points -> (occupancy logits B,R,R,R, codes or None)."""
        z = self.encode(points)
        return self.decode(z, resolution=resolution, num_scales=num_scales), (z if self.stage == 2 else None)

    @staticmethod
    def meshes(grid: torch.Tensor) -> list:
        """Occupancy logits B,R,R,R -> one trimesh mesh per shape (marching cubes at logit 0; may be empty)."""
        from vistok.meshes import grid_to_mesh

        return [grid_to_mesh(g.float().cpu().numpy(), 0.0) for g in grid]

    @torch.no_grad()
    def preview(self, codes, size: int = 64) -> torch.Tensor:
        """Codes -> rendered meshes B,3,size,size in [-1, 1] (image grids of a generator's samples)."""
        return _render(self.meshes(self.decode(codes, resolution=32)), size)

    # ---- training -------------------------------------------------------------------------------
    def forward(self, batch: dict, step: int = 0, **_) -> dict:
        z, mu, logvar = self.latent(batch["points"], sample=self.training)
        out = {}
        loss = 0.0
        if logvar is not None:
            out["kl"] = 0.5 * (mu.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).mean()
            loss = loss + self.kl_weight * out["kl"]
        if self.stage == 2:
            z, _, out["vq"] = self.quantizer(z)
            loss = loss + self.vq_weight * out["vq"]
        logits = self.occupancy_logits(self.triplane(z), batch["queries"])
        out["bce"] = F.binary_cross_entropy_with_logits(logits.float(), batch["occupancy"].float())
        out["loss"] = loss + out["bce"]
        return out

    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        """Held-out BCE, occupancy accuracy and IoU over the query points (uniform + near-surface), codebook use."""
        bce = inter = union = correct = count = 0.0
        used = set()
        for batch in batches:
            z = self.encode(batch["points"])
            if self.stage == 2:
                used |= set(z.unique().tolist())
            logits = self.occupancy_logits(self.triplane(self.decode_latent(z)), batch["queries"]).float()
            occ = batch["occupancy"].float()
            pred = logits > 0
            bce += float(F.binary_cross_entropy_with_logits(logits, occ, reduction="sum"))
            inter += float((pred & (occ > 0.5)).sum())
            union += float((pred | (occ > 0.5)).sum())
            correct += float((pred == (occ > 0.5)).sum())
            count += occ.numel()
        out = {"bce": bce / count, "query_iou": inter / max(union, 1.0), "accuracy": correct / count}
        if self.stage == 2:
            out["usage"] = len(used) / self.num_codes
        return out

    @torch.no_grad()
    def visualize(self, batch: dict, n: int = 8, **_) -> torch.Tensor:
        """Input surface points (top row) over reconstructed meshes (bottom row), rendered."""
        from vistok.meshes import render_points

        pts = batch["points"][:n].float().cpu().numpy()
        top = torch.stack([torch.from_numpy(render_points(p[:, :3], p[:, 3:], 64)) for p in pts])
        top = top.permute(0, 3, 1, 2).float() / 127.5 - 1
        return torch.cat([top, _render(self.meshes(self.reconstruct(batch["points"][:n], resolution=32)[0]), 64)])


def _render(meshes: list, size: int) -> torch.Tensor:
    from vistok.meshes import render_mesh

    images = np.stack([render_mesh(m, size) for m in meshes])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
