"""SEED tokenizer (Ge et al., AILab-CVC/SEED): an image -> Q causal codes with word-like semantics, in two stages.

    frozen vision part (EVA ViT-g after ln_vision; the ShapesWorld teacher on CPU) -> image features B,N,D
    -> causal Q-Former (vistok.tokenizers.seed_qformer): Q learnt queries, lower-triangular among themselves
    stage I:  last query -> 256-d  <->  the Q-Former's text [CLS] -> 256-d   (contrastive, BLIP-2's ITC)
    stage II: queries -> Linear-Tanh-Linear -> code_dim -> codebook (Euclidean) -> codes B,Q
              -> Linear-Tanh-Linear up -> + pos -> 4 blocks -> the causal queries again   (1 - cosine)
                                       -> + pos -> 4 blocks -> MLP H->256->128->32 (no bias) -> flatten -> Linear
                                          = the generation embedding (MSE to a frozen image embedding:
                                            SD-2.1-unCLIP's CLIP-ViT-H one at paper scale)

Stage II (``stage: 2``, started from a stage-I run with ``train.init_from``) freezes the Q-Former, the queries
and the stage-I heads (no gradient, eval mode: their weights stay bit-identical) and trains the quantiser and the
heads on 5 L_vq + 2 L_rec + 0.5 L_gen (SEED's code). The codebook's beta sits on the codebook term by default
(``beta_on: codebook``: ||sg(zq) - z||^2 + 0.25 ||zq - sg(z)||^2, SEED's taming-legacy placement); ``commitment``
is the usual one. ``gen_head: qformer`` is SEED's non-default 1-query reverse Q-Former instead of the MLP head.
Codes -> images goes through a decoder component (``vistok.tokenizers.unclip_decoder``) fed
``generation_embedding(codes)``; the ``seed`` pipeline joins the two.
"""
from __future__ import annotations

import typing

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.parts.base import LazyPart, build_part
from vistok.quantizers.vq import EuclideanVQ
from vistok.registry import register_model
from vistok.schema import NonNegFloat, NonNegInt, OneOf, PartSpec, PosFloat, PosInt, Prob, Range
from vistok.tokenizers import seed_qformer as sq
from vistok.tokenizers.base import Tokenizer


def vit_blocks(dim: int, depth: int, heads: int) -> nn.ModuleList:
    """SEED's ``blocks`` / ``blocks_image``: timm ViT blocks (LayerNorm eps 1e-6, MLP ratio 4, qkv bias)."""
    from functools import partial

    from timm.models.vision_transformer import Block

    return nn.ModuleList(Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
                         for _ in range(depth))


@register_model("seed_tokenizer")
class SEEDTokenizer(Tokenizer):
    input_key = "image"

    @classmethod
    def default_pipeline(cls, config: dict) -> str:
        return "seed"

    def __init__(
        self,
        vision: PartSpec = None,
        stage: typing.Annotated[int, Range(1, 2)] = 1,
        qformer: PartSpec = None,
        num_queries: PosInt = 32,
        causal: bool = True,
        hidden: PosInt = 768,
        layers: PosInt = 12,
        heads: PosInt = 12,
        intermediate: PosInt = 3072,
        cross_attention_frequency: PosInt = 2,
        vision_dim: NonNegInt = 0,
        dropout: Prob = 0.1,
        text_vocab: list[str] = (),
        text_len: PosInt = 32,
        embed_dim: PosInt = 256,
        temperature: PosFloat = 0.07,
        label_smoothing: Prob = 0.1,
        codebook_size: PosInt = 8192,
        code_dim: PosInt = 32,
        beta: NonNegFloat = 0.25,
        beta_on: OneOf("codebook", "commitment") = "codebook",
        head_depth: PosInt = 4,
        head_heads: PosInt = 12,
        gen_head: OneOf("mlp", "qformer") = "mlp",
        gen_dim: PosInt = 1024,
        gen_target: PartSpec = None,
        w_vq: NonNegFloat = 5.0,
        w_rec: NonNegFloat = 2.0,
        w_gen: NonNegFloat = 0.5,
    ):
        super().__init__()
        if not vision:
            raise ValueError("seed: model.vision must name the frozen vision part (e.g. {type: vistok, path: "
                             "checkpoints/teacher-shapes}, or {type: blip2_vision, path: .../blip2-itm-vit-g})")
        LazyPart(self, vision, "vision")
        if gen_target:
            LazyPart(self, gen_target, "gen_target")
        self.stage, self.codebook_size, self.num_queries, self.gen_dim = stage, codebook_size, num_queries, gen_dim
        self.causal = causal  # False: bidirectional queries (BLIP-2's), SEED's ablation
        self.text_len, self.label_smoothing = text_len, label_smoothing
        self.w_vq, self.w_rec, self.w_gen = w_vq, w_rec, w_gen
        self.token_shape = (num_queries,)
        self.qf = self._qformer(qformer, num_queries, hidden, layers, heads, intermediate, cross_attention_frequency,
                                vision_dim, dropout, text_vocab, text_len, embed_dim)
        h = self.qf.query_tokens.shape[-1]
        if self.qf.query_tokens.shape[1] != num_queries:
            raise ValueError(f"seed: model.num_queries={num_queries}, the Q-Former in model.qformer has "
                             f"{self.qf.query_tokens.shape[1]} queries")
        self.temp = nn.Parameter(torch.tensor(float(temperature)))
        self.encode_task_layer = nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Linear(h, code_dim))
        self.quantize = EuclideanVQ(code_dim, codebook_size, beta, beta_on)
        self.decode_task_layer = nn.Sequential(nn.Linear(code_dim, code_dim), nn.Tanh(), nn.Linear(code_dim, h))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_queries, h))
        self.blocks = vit_blocks(h, head_depth, head_heads)
        self.pos_embed_image = nn.Parameter(torch.zeros(1, num_queries, h))
        self.blocks_image = vit_blocks(h, head_depth, head_heads)
        self.gen_head_type = gen_head
        if gen_head == "mlp":  # SEED's released head
            self.image_down = nn.Sequential(nn.Linear(h, 256, bias=False), nn.ReLU(), nn.Linear(256, 128, bias=False),
                                            nn.ReLU(), nn.Linear(128, 32, bias=False))
            self.distill_image_proj = nn.Linear(num_queries * 32, gen_dim)
        else:
            self.reverse = self._reverse_qformer(h, heads, intermediate)
            self.distill_image_proj = nn.Linear(h, gen_dim)
        if stage == 2:
            for p in self.stage_one_parameters():
                p.requires_grad_(False)

    # ---- building -----------------------------------------------------------------------------
    def _qformer(self, spec, num_queries, hidden, layers, heads, intermediate, frequency, vision_dim, dropout, vocab,
                 text_len, embed_dim):
        if spec:
            return build_part({**spec, "text": True}, "qformer")
        if not vocab:
            raise ValueError("seed: a Q-Former built from its config (no model.qformer) needs model.text_vocab for "
                             "its text mode (e.g. the ShapesWorld vocabulary)")
        vision_dim = vision_dim or self._lazy_parts["vision"].get().out_dim  # the part is read only when not given
        return sq.CausalQFormer(num_queries, hidden, layers, heads, intermediate, vision_dim, frequency, list(vocab),
                                text_len, embed_dim, dropout)

    @staticmethod
    def _reverse_qformer(h: int, heads: int, intermediate: int) -> nn.Module:
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        m = nn.Module()
        m.qformer = Blip2QFormerModel(Blip2QFormerConfig(hidden_size=h, num_hidden_layers=2, num_attention_heads=heads,
                                                         intermediate_size=intermediate, encoder_hidden_size=h))
        m.query_tokens = nn.Parameter(torch.randn(1, 1, h) * 0.02)
        return m

    def stage_one_parameters(self) -> list[nn.Parameter]:
        """What stage I trains and stage II keeps frozen: the Q-Former with its queries, text mode and
        contrastive heads, and the temperature."""
        return [*self.qf.parameters(), self.temp]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.stage == 2:
            self.qf.eval()  # frozen in stage II: no dropout, bit-identical weights
        return self

    # ---- features -----------------------------------------------------------------------------
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen vision part's features B,N,D (every token: BLIP-2's ViT gives CLS + patches after
        post_layernorm)."""
        vision = self._lazy_parts["vision"].get(images.device)
        with torch.no_grad():
            feats = vision.features(images) if hasattr(vision, "features") else vision.tokens(images)
        return feats.to(self.qf.query_tokens.dtype)

    def causal_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """The causal queries B,Q,H (what stage II quantises and reconstructs)."""
        return sq.causal_queries(self.qf, self.image_features(images), self.causal)

    def text_embeds(self, captions: list[str], device) -> torch.Tensor:
        ids, mask = sq.tokenize(self.qf, captions, self.text_len)
        return sq.text_embedding(self.qf, ids.to(device), mask.to(device))

    # ---- stage II: codes ----------------------------------------------------------------------
    def quantize_queries(self, queries: torch.Tensor):
        """(quantised B,Q,code_dim, codes B,Q, vq loss)."""
        return self.quantize(self.encode_task_layer(queries))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images -> codes B,Q (long): 1-D and causal."""
        self._needs_stage_two("encode")
        with torch.no_grad():
            return self.quantize_queries(self.causal_embeddings(images))[1]

    def _up(self, quantised: torch.Tensor) -> torch.Tensor:
        return self.decode_task_layer(quantised)

    def reconstruct_queries(self, up: torch.Tensor) -> torch.Tensor:
        x = up + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x

    def generation_from_up(self, up: torch.Tensor) -> torch.Tensor:
        x = up + self.pos_embed_image
        for blk in self.blocks_image:
            x = blk(x)
        if self.gen_head_type == "mlp":
            return self.distill_image_proj(self.image_down(x).flatten(1))
        r = self.reverse
        out = r.qformer(query_embeds=r.query_tokens.expand(x.shape[0], -1, -1), encoder_hidden_states=x).last_hidden_state
        return self.distill_image_proj(out[:, 0])

    def generation_embedding(self, codes: torch.Tensor) -> torch.Tensor:
        """codes B,Q -> the embedding a decoder turns into an image (B, gen_dim)."""
        return self.generation_from_up(self._up(self.quantize.lookup(codes.long())))

    def decode(self, codes: torch.Tensor, generator=None, **options):
        raise ValueError("seed: codes become images through the decoder component (the 'seed' pipeline: "
                         "Pipeline.decode(codes)); the tokenizer alone gives generation_embedding(codes)")

    def reconstruct(self, images: torch.Tensor):
        raise ValueError("seed: reconstructing images needs the decoder component (the 'seed' pipeline)")

    def _needs_stage_two(self, what: str) -> None:
        if self.stage != 2:
            raise ValueError(f"seed: {what} needs a stage-II model (stage {self.stage} trains no codebook): train "
                             f"configs/seed/*stage2*.yaml from this run (train.init_from)")

    def gen_target(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen image embedding stage II regresses (``gen_target``; the vision part's pooled one if unset)."""
        key = "gen_target" if "gen_target" in self._lazy_parts else "vision"
        part = self._lazy_parts[key].get(images.device)
        with torch.no_grad():
            return part.embed(images).float()

    # ---- training -----------------------------------------------------------------------------
    def forward(self, batch: dict, step: int = 0, **_) -> dict:
        return self._stage_one(batch) if self.stage == 1 else self._stage_two(batch)

    def _stage_one(self, batch: dict) -> dict:
        images = batch["image"]
        img = sq.image_embedding(self.qf, self.causal_embeddings(images))
        txt = self.text_embeds(list(batch["caption"]), images.device)
        loss = sq.contrastive_loss(img, txt, self.temp, self.label_smoothing)
        return {"loss": loss, "itc": loss.detach(), "temp": self.temp.detach().clamp(0.001, 0.5)}

    def _stage_two(self, batch: dict) -> dict:
        images = batch["image"]
        with torch.no_grad():
            queries = self.causal_embeddings(images)
        quantised, codes, vq = self.quantize_queries(queries)
        up = self._up(quantised)
        rec = (1 - F.cosine_similarity(self.reconstruct_queries(up).float(), queries.float(), dim=-1)).mean()
        gen = F.mse_loss(self.generation_from_up(up).float(), self.gen_target(images))
        loss = self.w_vq * vq + self.w_rec * rec + self.w_gen * gen
        return {"loss": loss, "vq": vq.detach(), "rec": rec.detach(), "gen": gen.detach()}

    # ---- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        """Stage I: image<->text retrieval R@1/R@5 over the held-out batches, with chance (a retrieved caption is a
        hit when its text equals the query's). Stage II: codebook usage and perplexity, the reconstruction cosine
        of the causal embeddings, the generation embedding's cosine to its target."""
        return self._retrieval(batches) if self.stage == 1 else self._codes(batches)

    def _retrieval(self, batches) -> dict:
        from vistok.dist import all_gather
        from vistok.metrics.retrieval import retrieval_metrics

        imgs, txts, caps = [], [], []
        for batch in batches:
            images = batch["image"]
            imgs.append(sq.image_embedding(self.qf, self.causal_embeddings(images)).float().cpu())
            txts.append(self.text_embeds(list(batch["caption"]), images.device).float().cpu())
            caps += list(batch["caption"])
        gathered = all_gather((torch.cat(imgs), torch.cat(txts), caps))
        img = torch.cat([g[0] for g in gathered])
        txt = torch.cat([g[1] for g in gathered])
        return {**retrieval_metrics(img, txt, [c for g in gathered for c in g[2]]), "num_pairs": len(img)}

    def _codes(self, batches) -> dict:
        from vistok.dist import all_sum

        counts = torch.zeros(self.codebook_size)
        rec, gen, n = 0.0, 0.0, 0
        for batch in batches:
            images = batch["image"]
            queries = self.causal_embeddings(images)
            quantised, codes, _ = self.quantize_queries(queries)
            up = self._up(quantised)
            counts += torch.bincount(codes.flatten().cpu(), minlength=self.codebook_size).float()
            rec += float(F.cosine_similarity(self.reconstruct_queries(up).float(), queries.float(), dim=-1).mean(1).sum())
            gen += float(F.cosine_similarity(self.generation_from_up(up).float(), self.gen_target(images), dim=-1).sum())
            n += len(images)
        counts = torch.as_tensor(all_sum(counts.numpy()))
        rec, gen, n = all_sum([rec, gen, float(n)])
        p = counts / counts.sum().clamp(min=1)
        perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
        return {"codebook_usage": float((counts > 0).float().mean()), "perplexity": perplexity,
                "recon_cosine": rec / max(n, 1), "gen_cosine": gen / max(n, 1)}
