"""A tiny text-to-image pipeline end to end: ShapesWorld tokenizer -> cached codes with captions ->
text-conditional AR -> release -> GenEval prompts sampled in the official layout -> GenEval score."""
import json
import os

import pytest

from vistok.config import load_config
from vistok.data.text import shapes_vocabulary
from vistok.pipelines.release import release
from vistok.training.trainer import train
from tests.conftest import ROOT, run_cli

QUIET = ["train.log_with=none", "train.progress=false", "train.image_every=0", "train.eval_every=0",
         "train.mixed_precision=no", "train.warmup_steps=2"]


@pytest.mark.slow
def test_text_to_image_pipeline_end_to_end(tmp_path):
    tok_run, gen_run = tmp_path / "tok", tmp_path / "gen"
    train(load_config(os.path.join(ROOT, "configs/vqgan/shapes.yaml"), QUIET + [
        "model.ch=8", "model.z_channels=16", "model.codebook_size=64", "model.kmeans_init=false", "data.size=64",
        "train.batch_size=32", "train.max_steps=10", "train.checkpoint_every=10", f"train.output_dir={tok_run}"]))
    release(str(tmp_path / "tok_rel"), tokenizer=str(tok_run))
    train(load_config(os.path.join(ROOT, "configs/ar/shapes.yaml"), QUIET + [
        "model.vocab_size=64", "model.dim=32", "model.depth=1", "model.heads=2", "model.text_depth=1",
        f"data.tokenizer={tmp_path / 'tok_rel'}", "train.batch_size=32", "train.max_steps=10",
        "train.checkpoint_every=10", f"train.output_dir={gen_run}"]))
    caches = os.listdir(gen_run / "token_cache")  # the codes are cached in the generator's run, not in the release
    assert any(c.startswith("train-") for c in caches) and not os.path.exists(tmp_path / "tok_rel" / "token_cache")
    release(str(tmp_path / "pipe"), tokenizer=str(tok_run), generator=str(gen_run))
    prompts = tmp_path / "prompts.jsonl"
    metas = [{"tag": "single_object", "prompt": "a red circle", "include": [{"class": "circle", "count": 1}]},
             {"tag": "position", "prompt": "a blue square left of a green triangle",
              "include": [{"class": "triangle", "count": 1}, {"class": "square", "count": 1, "position": ["left of", 0]}]}]
    prompts.write_text("\n".join(json.dumps(m) for m in metas) + "\n")
    run_cli(["sample.py", "--pipeline", str(tmp_path / "pipe"), "--out", str(tmp_path / "gen_out"), "--prompts",
             str(prompts), "--images-per-prompt", "2", "--cfg-scale", "2"])
    assert sorted(os.listdir(tmp_path / "gen_out" / "00001" / "samples")) == ["0000.png", "0001.png"]
    assert json.loads((tmp_path / "gen_out" / "00000" / "metadata.jsonl").read_text()) == metas[0]
    proc = run_cli(["evaluate.py", "geneval", "--samples", str(tmp_path / "gen_out"), "--ceiling"])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["num_images"] == 4 and set(result) >= {"single_object", "position", "overall", "detector_ceiling"}
    assert result["detector_ceiling"] == 1.0
    # bad prompts are named
    (tmp_path / "bad.jsonl").write_text(json.dumps({"tag": "single_object", "prompt": "a purple hexagon",
                                                    "include": [{"class": "hexagon", "count": 1}]}) + "\n")
    bad = run_cli(["sample.py", "--pipeline", str(tmp_path / "pipe"), "--out", str(tmp_path / "x"), "--prompts",
                   str(tmp_path / "bad.jsonl")], check=False)
    assert bad.returncode == 2 and "unknown word" in bad.stderr
    (tmp_path / "empty.jsonl").write_text("")
    empty = run_cli(["sample.py", "--pipeline", str(tmp_path / "pipe"), "--out", str(tmp_path / "y"), "--prompts",
                     str(tmp_path / "empty.jsonl")], check=False)
    assert empty.returncode == 2 and "is empty" in empty.stderr


def test_shapes_vocabulary_matches_the_config():
    cfg = load_config(os.path.join(ROOT, "configs/ar/shapes.yaml"))
    assert list(cfg.model.text_vocab) == shapes_vocabulary()
