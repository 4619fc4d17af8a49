"""The house is open (issue #13): a model type, a data type, a pipeline type and an evaluation task defined
outside the vistok package (a module on PYTHONPATH in a temporary folder) are trained with train.py, released
with release.py, sampled with sample.py and scored with evaluate.py, as subprocesses; no file under vistok/
names them, and the CLIs and the pipeline base name no model."""
import json
import os
import re
import textwrap

import pytest

from tests.conftest import ROOT, run_cli

PLUGIN = textwrap.dedent('''
    """A toy system that lives outside vistok: dots on 8x8 images, a conv autoencoder, its own pipeline and score."""
    import os

    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.utils.data import Dataset

    from vistok.evaluation.task import Task
    from vistok.modeling import VistokModel
    from vistok.pipelines.base import Pipeline
    from vistok.image_files import save_images
    from vistok.schema import PosInt


    class Dots(Dataset):
        def __init__(self, split: str = "train", size: PosInt = 96):
            self.n, self.offset = size, 0 if split == "train" else 1000

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(self.offset + i)
            y, x = torch.randint(1, 7, (2,), generator=g).tolist()
            img = -torch.ones(1, 8, 8)
            img[:, y - 1:y + 2, x - 1:x + 2] = 1.0
            return {"image": img, "label": 0}


    class Blob(VistokModel):
        kind = "blobber"
        drive_priority = 1

        @classmethod
        def default_pipeline(cls, config):
            return "dots_plugin:BlobPipeline"

        def __init__(self, width: PosInt = 16):
            super().__init__()
            self.enc = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, 4, 3, stride=2, padding=1))
            self.dec = nn.Sequential(nn.ConvTranspose2d(4, width, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(width, 1, 3, padding=1))

        def reconstruct(self, x):
            return torch.tanh(self.dec(self.enc(x)))

        def forward(self, batch, step=0, **_):
            loss = F.mse_loss(self.reconstruct(batch["image"]), batch["image"])
            return {"loss": loss}


    class BlobPipeline(Pipeline):
        requires = {"model": "blobber"}

        @classmethod
        def add_arguments(cls, parser):
            parser.add_argument("--num-images", type=int, default=8)

        def sample(self, args, options, out, state):
            from vistok.data.base import build_dataset

            data = build_dataset(self.data, "test")
            x = torch.stack([data[i]["image"] for i in range(args.num_images)])
            save_images(self.model.reconstruct(x).clamp(-1, 1), out, grid_pairs=x)
            return {"mode": "reconstruct", "num_images": args.num_images}


    class BlobScore(Task):
        help = "held-out MSE of a dots release against the all-background baseline"

        @classmethod
        def add_arguments(cls, p):
            p.add_argument("--pipeline", required=True)

        @classmethod
        def run(cls, args):
            from vistok.data.base import build_dataset

            pipe = Pipeline.from_pretrained(args.pipeline)
            x = torch.stack([build_dataset(pipe.data, "test")[i]["image"] for i in range(32)])
            with torch.no_grad():
                mse = float(F.mse_loss(pipe.model.reconstruct(x), x))
            return {"mse": mse, "baseline_mse": float(F.mse_loss(-torch.ones_like(x), x)),
                    "pipeline_type": pipe.pipeline_type}
''')

CONFIG = textwrap.dedent('''
    model: {type: "dots_plugin:Blob", width: 16}
    data: {type: "dots_plugin:Dots", size: 96}
    train: {max_steps: 60, batch_size: 16, lr: 0.01, log_every: 5, checkpoint_every: 60, eval_every: 0,
            image_every: 0, log_with: none, progress: false, mixed_precision: "no", warmup_steps: 0}
''')


@pytest.mark.slow
def test_a_system_outside_vistok_trains_releases_samples_and_scores(tmp_path):
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "dots_plugin.py").write_text(PLUGIN)
    (tmp_path / "dots.yaml").write_text(CONFIG)
    env = {"PYTHONPATH": f"{ROOT}{os.pathsep}{plug}"}
    run, rel, out = tmp_path / "run", tmp_path / "rel", tmp_path / "samples"
    trained = json.loads(run_cli(["train.py", "--config", str(tmp_path / "dots.yaml"), f"train.output_dir={run}"],
                                 env_extra=env).stdout.strip().splitlines()[-1])
    losses = [loss for _, loss in trained["losses"]]
    assert losses[-1] < 0.5 * losses[0], losses  # it learned
    released = json.loads(run_cli(["release.py", "--stage", f"model={run}", "--out", str(rel)], env_extra=env)
                          .stdout.strip().splitlines()[-1])
    assert released["pipeline_type"] == "dots_plugin:BlobPipeline" and released["components"] == ["model"]
    meta = json.loads((rel / "pipeline.json").read_text())
    assert meta["components"]["model"]["model_type"] == "dots_plugin:Blob" and meta["data"]["type"] == "dots_plugin:Dots"
    help_text = run_cli(["sample.py", "--pipeline", str(rel), "--help"], env_extra=env).stdout
    assert "inputs of a 'dots_plugin:BlobPipeline' pipeline" in help_text and "--num-images" in help_text
    run_cli(["sample.py", "--pipeline", str(rel), "--out", str(out), "--num-images", "6"], env_extra=env)
    assert sorted(f for f in os.listdir(out) if f.endswith(".png")) == [f"{i:05d}.png" for i in range(6)] + ["grid.png"]
    score = json.loads(run_cli(["evaluate.py", "dots_plugin:BlobScore", "--pipeline", str(rel)], env_extra=env)
                       .stdout.strip().splitlines()[-1])
    assert score["task"] == "dots_plugin:BlobScore" and score["mse"] < 0.5 * score["baseline_mse"], score
    for root, _, files in os.walk(os.path.join(ROOT, "vistok")):
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(root, f), encoding="utf-8").read()
                assert "dots_plugin" not in text and "Blob" not in text, os.path.join(root, f)


def test_the_cli_and_the_pipeline_base_name_no_model():
    from vistok.registry import names

    models = [n for n in names("model") if ":" not in n]
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, models)) + r")\b")
    for rel in ("sample.py", "evaluate.py", "release.py", "vistok/pipelines/base.py"):
        code = open(os.path.join(ROOT, rel), encoding="utf-8").read()
        code = re.sub(r'"""[\s\S]*?"""', "", code)  # docstrings may show examples
        code = "\n".join(line.split("#")[0] for line in code.splitlines())
        found = sorted(set(pattern.findall(code)))
        assert not found, f"{rel} names models {found}"
