"""Pre-tokenized datasets: encode a split once with a released tokenizer, cache the codes, train on them.

``data: {type: tokens, tokenizer: checkpoints/NAME[, flip: true]}`` reads the tokenizer release, builds the data it
was trained on (pipeline.json ``data``) and encodes each split once. The cache is a safetensors file
(``codes`` int32 N,h,w, or ``latents`` float32 for a continuous tokenizer, and ``labels`` int64 N; captions, when
the data has them, in a JSON file beside it) keyed by a hash of the tokenizer weights and config and the split;
``flip`` also caches each training image's mirror image and serves one of the two at random (MAR/xAR's
augmentation; leave it off for digits and text). The cache lives in ``cache_dir``: the trainer defaults it
to ``<run>/token_cache/``; outside training (``scripts/pretokenize.py``) it is ``$VISTOK_CACHE/tokens``
(default ``~/.cache/vistok/tokens``). The release itself is only read, so a read-only release can be trained
on, and replacing a release never deletes a cache; the key (weights, config and data of the release) means a
changed tokenizer never reuses stale codes. ``decode`` turns codes back into images (image grids while training).

``text_encoder`` (a frozen text part, usually ``${model.text_encoder}``) also encodes each distinct caption once
and caches the features beside the codes (``<cache>.text-<fingerprint>.safetensors``: ``features`` U,L,D and
``index`` N), as LlamaGen pre-extracts its T5 features; items then carry ``text_features`` and the generator never
loads the encoder to train.

Encoding runs in chunks of ``chunk`` items, each saved atomically under ``<cache>.parts/`` before the
merge: an interrupted encoding resumes from its finished chunks, and under torchrun / accelerate launch
(an initialised process group, e.g. inside the trainer, or ``scripts/pretokenize.py``) the ranks encode
disjoint chunks and rank 0 merges them.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from vistok.registry import register_dataset
from vistok.io import atomic_write_json
from vistok.schema import PartSpec, PosInt


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@torch.no_grad()
def encode_dataset(tokenizer, dataset, batch_size: int = 256, flip: bool = False):
    """-> ({"codes" int32 | "latents" float32: N,... (N,2,... with ``flip``: also the mirrored image),
    "labels" int64}, captions list or None)."""
    out, labels, captions = [], [], []
    key = getattr(tokenizer, "input_key", "image")  # images, point clouds ...
    for i in range(0, len(dataset), batch_size):
        items = [dataset[j] for j in range(i, min(len(dataset), i + batch_size))]
        images = torch.stack([it[key] for it in items])
        z = tokenizer.encode(images)
        if flip:
            z = torch.stack([z, tokenizer.encode(images.flip(-1))], 1)
        out.append(z.float() if z.is_floating_point() else z.to(torch.int32))
        labels.append(torch.tensor([it["label"] for it in items], dtype=torch.long))
        captions += [it["caption"] for it in items if "caption" in it]
    z = torch.cat(out)
    key = "latents" if z.is_floating_point() else "codes"
    return {key: z, "labels": torch.cat(labels)}, (captions if captions else None)


def build_token_cache(tokenizer, dataset, cache: str, batch_size: int = 256, chunk: int = 10000, flip: bool = False) -> None:
    """Encode ``dataset`` into ``cache`` (see the module doc): resumable, and spread over the ranks of an
    initialised process group (every rank must call it)."""
    import shutil

    import torch.distributed as dist

    from vistok.dist import world

    rank, size = world()
    parts = cache + ".parts"
    os.makedirs(parts, exist_ok=True)
    n_chunks = (len(dataset) + chunk - 1) // chunk
    for c in range(rank, n_chunks, size):
        path = os.path.join(parts, f"chunk-{c:06d}.safetensors")
        if os.path.isfile(path):
            continue  # done before an interruption
        idx = range(c * chunk, min(len(dataset), (c + 1) * chunk))
        tensors, captions = encode_dataset(tokenizer, _Slice(dataset, idx), batch_size, flip)
        if captions is not None:
            atomic_write_json(path + ".captions.json", captions)
        tmp = path + f".{os.getpid()}.tmp"
        save_file(tensors, tmp)
        os.replace(tmp, path)
    if size > 1:
        dist.barrier()
    if rank == 0:
        data = [load_file(os.path.join(parts, f"chunk-{c:06d}.safetensors")) for c in range(n_chunks)]
        merged = {k: torch.cat([d[k] for d in data]) for k in data[0]}
        cap_files = [os.path.join(parts, f"chunk-{c:06d}.safetensors.captions.json") for c in range(n_chunks)]
        if all(os.path.isfile(f) for f in cap_files):  # written first: the cache file's presence means both are complete
            atomic_write_json(cache + ".captions.json", [c for f in cap_files for c in json.load(open(f, encoding="utf-8"))])
        tmp = cache + f".{os.getpid()}.tmp"
        save_file(merged, tmp)
        os.replace(tmp, cache)
        shutil.rmtree(parts, ignore_errors=True)
    if size > 1:
        dist.barrier()


class _Slice(Dataset):
    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("VISTOK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vistok"), "tokens")


def cache_key(release: str, data: dict | None) -> str:
    """Weights, config (e.g. a new latent scale) and the data config of a tokenizer release."""
    stage = os.path.join(release, "tokenizer")
    data_hash = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return _file_hash(os.path.join(stage, "model.safetensors")) + _file_hash(os.path.join(stage, "config.json"))[:8] + data_hash


@register_dataset("tokens")
class TokenDataset(Dataset):
    def __init__(self, tokenizer: str, split: str = "train", batch_size: PosInt = 256, chunk: PosInt = 10000,
                 flip: bool = False, cache_dir: str = "", text_encoder: PartSpec = None):
        from vistok.data.base import build_dataset

        model, data_cfg = _release_tokenizer(tokenizer)
        self.tokenizer = model.eval()
        key = cache_key(tokenizer, data_cfg)
        self.flip = flip and split == "train"  # mirrored images too (not for digits); one of the two per draw
        cache = os.path.join(cache_dir or default_cache_dir(), f"{split}-{key}{'-flip' if self.flip else ''}.safetensors")
        captions_path = cache + ".captions.json"
        if not os.path.isfile(cache):
            build_token_cache(self.tokenizer, build_dataset(data_cfg, split), cache, batch_size, chunk, self.flip)
        data = load_file(cache)
        captions = json.load(open(captions_path, encoding="utf-8")) if os.path.isfile(captions_path) else None
        self.key = "latents" if "latents" in data else "codes"  # continuous tokenizers cache latents
        self.codes = data[self.key].long() if self.key == "codes" else data[self.key]
        self.labels, self.captions = data["labels"], captions
        self.split, self.cache = split, cache
        self.text_spec = text_encoder
        self.text_features = self.text_index = None
        if text_encoder:
            if captions is None:
                raise ValueError(f"data.text_encoder: the data of '{tokenizer}' has no captions to encode")
            self.text_features, self.text_index = cached_text_features(text_encoder, captions, cache, batch_size)

    @staticmethod
    def check_model(cfg: dict, model) -> None:
        """Before anything is encoded: the generator must speak the release's vocabulary on its token layout."""
        tokenizer = _release_tokenizer(cfg["tokenizer"])[0]
        try:
            if hasattr(model, "check_fits"):
                model.check_fits({"tokenizer": tokenizer})
        except ValueError as e:
            raise ValueError(f"model does not fit data.tokenizer '{cfg['tokenizer']}': {e}") from None
        check_text_encoder(cfg.get("text_encoder"), getattr(model, "encoded_text", None))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        x = self.codes[i]
        if self.flip:
            x = x[int(torch.randint(0, 2, ()))]
        item = {self.key: x, "label": int(self.labels[i])}
        if self.captions is not None:
            item["caption"] = self.captions[i]
        if self.text_features is not None:
            item["text_features"] = self.text_features[self.text_index[i]]
        return item

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes -> images for grids while training (the tokenizer's ``preview``: decoded images, rendered meshes)."""
        return self.tokenizer.preview(codes.to(next(self.tokenizer.parameters()).device))

    def __repr__(self) -> str:
        return f"TokenDataset({self.cache!r}, n={len(self)})"


def check_text_encoder(spec: dict | None, encoded_text) -> None:
    """The features the data caches must be the ones the generator reads: same encoder weights and options."""
    if not spec:
        return
    if encoded_text is None:
        raise ValueError("data.text_encoder is set, but the model has no text_encoder (model.text_encoder) to read "
                         "the cached features")
    from vistok.parts.base import LazyPart

    def comparable(s):
        return {k: s.get(k) for k in ("type", "fingerprint", "max_length", "feature", "subfolder")}

    theirs, ours = comparable(LazyPart(torch.nn.Module(), spec, "text_encoder").spec()), comparable(encoded_text.lazy.spec())
    if theirs != ours:
        raise ValueError(f"data.text_encoder {theirs} is not the model's text_encoder {ours}: the cached features would "
                         f"not be the ones the generator reads (use data.text_encoder: ${{model.text_encoder}})")


@torch.no_grad()
def cached_text_features(spec: dict, captions: list[str], cache: str, batch_size: int = 256):
    """(features U,L,D of the distinct captions, index N into them), from ``<cache>.text-<key>.safetensors`` or
    encoded now with the text part ``spec`` (written atomically; the key is the encoder's fingerprint and options)."""
    from vistok.dist import world
    from vistok.parts.base import LazyPart

    owner = torch.nn.Module()
    lazy = LazyPart(owner, spec, "text_encoder")
    found = lazy.spec()
    key = hashlib.sha256(json.dumps({k: v for k, v in found.items() if k != "path"}, sort_keys=True).encode()).hexdigest()[:16]
    path = f"{cache}.text-{key}.safetensors"
    distinct = sorted(set(captions))
    if not os.path.isfile(path) and world()[0] == 0:
        enc = lazy.get()
        feats = torch.cat([enc.encode(distinct[i:i + batch_size]) for i in range(0, len(distinct), batch_size)])
        tmp = path + f".{os.getpid()}.tmp"
        save_file({"features": feats.contiguous()}, tmp)
        os.replace(tmp, path)
    _wait_for(path)
    position = {c: i for i, c in enumerate(distinct)}
    return load_file(path)["features"], torch.tensor([position[c] for c in captions], dtype=torch.long)


def _wait_for(path: str) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text feature cache '{path}' was not written")


def _release_tokenizer(path: str):
    """(the tokenizer of the release at ``path``, the data config it was trained on), read through the release
    format alone (no pipeline class)."""
    from vistok.release_format import component_of_kind

    try:
        return component_of_kind(path, "tokenizer")
    except ValueError as e:
        raise ValueError(f"data.tokenizer: {e}") from None
