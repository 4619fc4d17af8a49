#!/usr/bin/env python
"""Write an image folder (ImageNet layout or flat with a captions file) as webdataset-layout tar shards.

    python scripts/make_shards.py --root /data/imagenet --split train --out /data/imagenet-shards \
        [--per-shard 5000] [--captions captions.jsonl]

Each sample: <key>.<original extension> (the file's bytes, not re-encoded), <key>.cls (class id, ImageNet
layout) and <key>.txt (caption, when given). Shards are written as <split>-000000.tar.tmp then renamed, so an
interrupted run leaves only complete shards; re-running skips shards already written (resumes). Train on
them with `data.type=shards data.root=OUT`. Last line: JSON with the shard and sample counts.
"""
import argparse
import io
import json
import os
import re
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vistok.cli import add_debug, run  # noqa: E402
from vistok.data.images import ImageFolder  # noqa: E402


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True)
    p.add_argument("--per-shard", type=int, default=5000)
    p.add_argument("--captions", default="")
    add_debug(p)
    args = p.parse_args(argv)
    own = re.compile(rf"^{re.escape(args.split)}-\d{{6}}\.tar(\.tmp)?$")
    foreign = sorted(f for f in os.listdir(args.out) if not own.match(f)) if os.path.isdir(args.out) else []
    if foreign:  # resuming only ever skips our own finished shards
        raise ValueError(f"--out {args.out}: holds {', '.join(foreign[:5])}, which are not {args.split} shards of this "
                         f"script; nothing was written (choose a new or empty folder)")
    ds = ImageFolder(args.root, args.split, image_size=1, captions=args.captions, flip=False)
    os.makedirs(args.out, exist_ok=True)
    n_shards, written = (len(ds) + args.per_shard - 1) // args.per_shard, 0
    for s in range(n_shards):
        final = os.path.join(args.out, f"{args.split}-{s:06d}.tar")
        if os.path.isfile(final):
            continue
        with tarfile.open(final + ".tmp", "w") as tar:
            for i in range(s * args.per_shard, min(len(ds), (s + 1) * args.per_shard)):
                path = ds.files[i]
                key = f"{i:09d}"
                with open(path, "rb") as f:
                    add(tar, f"{key}.{path.rsplit('.', 1)[-1].lower()}", f.read())
                if ds.labels[i] >= 0:
                    add(tar, f"{key}.cls", str(ds.labels[i]).encode())
                if ds.captions is not None:
                    add(tar, f"{key}.txt", ds.captions[os.path.relpath(path, ds.base)].encode("utf-8"))
        os.replace(final + ".tmp", final)
        written += 1
    print(json.dumps({"out": args.out, "shards": n_shards, "written_now": written, "samples": len(ds),
                      "classes": len(ds.classes)}))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
