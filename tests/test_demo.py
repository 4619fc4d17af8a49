"""`make demo`'s whole chain in --quick mode: tokenizer train -> release -> reconstruct -> evaluate;
generator train on cached codes -> pipeline release -> class-conditional sampling -> classify -> report.
The demo scripts run as the user runs them (subprocesses, stage by stage); the checks on their releases call
the CLIs in this process."""
import json
import os

import pytest
import torch
from PIL import Image

import numpy as np

from tests.conftest import call_cli, psnr_baselines, run_cli

pytestmark = pytest.mark.slow  # every test here trains a demo (one to three minutes on two cores)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    out, rel = root / "demo", root / "rel"
    proc = run_cli(["scripts/demo.py", "--quick", "--out", str(out), "--release", str(rel)])
    return out, rel, proc


def test_demo_quick_writes_the_contract(quick_demo):
    out, rel, proc = quick_demo
    metrics = json.loads((out / "metrics.json").read_text())
    tok, gen = metrics["tokenizer"], metrics["generator"]
    for key in ("psnr", "ssim", "codebook_usage", "perplexity", "fd_lenet"):
        assert isinstance(tok[key], float), key
    for key in ("class_accuracy", "fd_lenet", "fd_lenet_floor"):
        assert isinstance(gen[key], float), key
    assert 0 < tok["codebook_usage"] <= 1
    # 30 tiny steps learn the average digit, not yet the input (about 12.9 dB; black 11.0, the mean image 13.1):
    # require more than half the way from an all-black output to the mean image, which an untrained decoder
    # (grey, about 6 dB) or a black one never reaches
    from vistok.data.base import build_dataset
    from vistok.pipelines.base import Pipeline

    held_out = build_dataset(Pipeline.from_pretrained(f"{rel}-tokenizer").data, "test")
    base = psnr_baselines(torch.stack([held_out[i]["image"] for i in range(tok["num_images"])]))
    assert tok["psnr"] > (base["black"] + base["mean"]) / 2, (tok["psnr"], base)
    assert gen["num_samples"] == 500 and gen["fd_lenet_floor"] < gen["fd_lenet"]
    assert {"train tokenizer", "release pipeline", "train generator", "classify cfg"} <= set(metrics["timings_seconds"])
    report = (out / "report.md").read_text()
    assert "samples/grid.png" in report and "samples_cfg/grid.png" in report
    assert os.path.isfile(out / "samples_cfg" / "grid.png")
    meta = json.loads((rel / "pipeline.json").read_text())
    assert set(meta["components"]) == {"tokenizer", "generator"} and meta["pipeline_type"] == "class-to-image"
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"tokenizer": tok, "generator": gen}


def test_same_seed_same_images_and_labels_recorded(quick_demo, tmp_path):
    _, rel, _ = quick_demo
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        call_cli(["sample.py", "--pipeline", rel, "--out", tmp_path / name, "--class-labels", "1", "2", "3",
                  "--seed", seed, "--cfg-scale", "2", "--top-k", "10", "--npz"])
    read = lambda n: np.stack([np.asarray(Image.open(tmp_path / n / f"{i:05d}.png")) for i in range(3)])  # noqa: E731
    assert np.array_equal(read("a"), read("b")) and not np.array_equal(read("a"), read("c"))
    settings = json.loads((tmp_path / "a" / "sampling.json").read_text())
    assert settings["labels"] == [1, 2, 3] and settings["cfg_scale"] == 2.0 and settings["top_k"] == 10
    assert np.load(tmp_path / "a" / "samples.npz")["arr_0"].shape == (3, 32, 32, 3)
    bad = call_cli(["sample.py", "--pipeline", rel, "--out", tmp_path / "d", "--class-labels", "10"], check=False)
    assert bad.returncode == 2 and "out of range" in bad.stderr


def test_demo_shapes_quick(tmp_path):
    out, rel = tmp_path / "shapes", tmp_path / "rel"
    proc = run_cli(["scripts/demo_shapes.py", "--quick", "--out", str(out), "--release", str(rel), "--images-per-prompt", "1"])
    metrics = json.loads((out / "metrics.json").read_text())
    g = metrics["geneval"]
    assert set(g) >= {"overall", "single_object", "two_object", "counting", "colors", "position", "color_attr",
                      "detector_ceiling"}
    assert g["detector_ceiling"] >= 0.99
    # the figures are GenEval's rules applied to the samples written (recomputed from the folder)
    from vistok.evaluation.geneval import TASKS, evaluate_folder, read_folder
    from vistok.evaluation.shapes_detector import ShapesDetector

    detector = ShapesDetector()
    again, _ = evaluate_folder(str(out / "geneval"), detector)
    assert {t: again[t] for t in (*TASKS, "overall")} == {t: g[t] for t in (*TASKS, "overall")}
    # No learning check is possible at this size: 20 quick steps learn no text, and the detector (which needs the
    # palette colour and a shape fit) finds no object in its smears, so the score is about 0, as for blank
    # canvases. What can be checked: the sampler drew something (a collapsed sampler or decoder writes background)
    prompts = list(read_folder(str(out / "geneval")))
    drawn = [np.asarray(Image.open(f).convert("RGB")) for _, files in prompts for f in files]
    assert sum(int((img.max(-1) >= 60).sum()) for img in drawn) > 0.05 * sum(img.shape[0] * img.shape[1] for img in drawn)
    assert metrics["sampling"]["num_images"] == 132
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == g
    assert (out / "geneval" / "grid.png").is_file() and "geneval/grid.png" in (out / "report.md").read_text()


def test_two_ranks_sample_disjoint_files_equal_to_one_process(quick_demo, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    _, rel, _ = quick_demo
    args = ["sample.py", "--pipeline", str(rel), "--class-labels", "1", "2", "3", "4", "5", "--batch-size", "2",
            "--seed", "3", "--cfg-scale", "2"]
    call_cli(args + ["--out", tmp_path / "one"])
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args,
                           "--out", str(tmp_path / "two")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i in range(5):
        a = np.asarray(Image.open(tmp_path / "one" / f"{i:05d}.png"))
        b = np.asarray(Image.open(tmp_path / "two" / f"{i:05d}.png"))
        assert np.array_equal(a, b)
    assert json.loads((tmp_path / "two" / "sampling.json").read_text())["num_processes"] == 2


@pytest.mark.slow
def test_demo_seed_quick(tmp_path):
    """`make demo-seed`'s chain: both SEED stages, the decoder, the release and the three evaluations."""
    out, rel = tmp_path / "seed", tmp_path / "rel"
    proc = run_cli(["scripts/demo_seed.py", "--quick", "--out", str(out), "--release", str(rel), "--eval-items", "64",
                    "--decode-items", "16", "--caption-items", "16", "--images-per-prompt", "1"])
    metrics = json.loads((out / "metrics.json").read_text())
    s1, s2, dec = metrics["stage1"], metrics["stage2"], metrics["decode"]
    assert s1["stage"] == 1 and s1["num_pairs"] == 64 and s2["stage"] == 2 and 0 < s2["codebook_usage"] <= 1
    # chance is the held-out captions' own: recomputed from the split the evaluation read
    from vistok.data.shapes import ShapesWorld
    from vistok.metrics.retrieval import chance_recall

    caps = [ShapesWorld("test", size=256, max_objects=2).scene(i)["caption"] for i in range(64)]
    assert abs(chance_recall(caps, caps)["R@1"] - s1["chance_R@1"]) < 1e-9
    assert dec["num_scenes"] == 16 and dec["real_scenes_ceiling"] >= 0.9
    assert json.loads((rel / "pipeline.json").read_text())["pipeline_type"] == "seed"
    assert (out / "decoded.png").is_file() and "decoded.png" in (out / "report.md").read_text()
    assert json.loads(proc.stdout.strip().splitlines()[-1])["decode"]["decoded_match"] == dec["decoded_match"]
    # SEED-LLaMA on those codes: released with them, GenEval of its images, captions of held-out scenes scored
    t2i, i2t = metrics["text_to_image"], metrics["image_to_text"]
    assert json.loads((tmp_path / "rel-llama" / "pipeline.json").read_text())["pipeline_type"] == "seed-text-to-image"
    assert t2i["num_images"] == 132 and 0 <= t2i["overall"] <= 1 and t2i["detector_ceiling"] >= 0.9
    assert i2t["num_captions"] == i2t["sampled"]["num_captions"] == 16 and i2t["floor"]["caption"] and "SEED-LLaMA" in (out / "report.md").read_text()


@pytest.mark.slow
def test_demo_layton_quick(tmp_path):
    """`make demo-layton`'s chain: KL and VQ releases, both Layton stages, the decoder comparison on shared codes,
    LaytonGen released over the Layton codes and scored by GenEval, then sample.py's decoding flags."""
    out, rel = tmp_path / "layton", tmp_path / "rel"
    proc = run_cli(["scripts/demo_layton.py", "--quick", "--out", str(out), "--release", str(rel)],
                   timeout=1800)  # 16 CLI stages, each importing torch and diffusers: minutes on a busy runner
    metrics = json.loads((out / "metrics.json").read_text())
    d = metrics["decoders"]
    assert {"vqgan_decoder", "stage1_ddim4", "stage1_walk3", "stage2_walk1", "stage2_walk2", "stage2_walk3"} <= set(d)
    assert d["setup"]["tokens_per_image"] == 16 and d["originals"]["read_back"] >= 0.9
    assert all(0 <= d[k]["read_back"] <= 1 and d[k]["psnr"] > 0 and d[k]["seconds_per_image"] > 0
               for k in d if k.startswith(("vqgan", "stage")))
    assert json.loads((tmp_path / "rel-gen" / "pipeline.json").read_text())["pipeline_type"] == "text-to-image"
    g = metrics["laytongen"]
    assert g["num_images"] == 4 and 0 <= g["overall"] <= 1 and "LaytonGen" in (out / "report.md").read_text()
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["stage2_walk3"]["psnr"] == d["stage2_walk3"]["psnr"]
    # the release samples through sample.py with Layton's decoding flags, and they are recorded
    for steps in ("1", "2"):
        run_cli(["sample.py", "--pipeline", str(rel), "--out", str(tmp_path / f"recon{steps}"), "--num-images", "4",
                 "--decode-steps", steps, "--seed", "0"])
        settings = json.loads((tmp_path / f"recon{steps}" / "sampling.json").read_text())
        assert settings["decode_steps"] == int(steps) and (tmp_path / f"recon{steps}" / "grid.png").is_file()
    one, two = (np.asarray(Image.open(tmp_path / f"recon{s}" / "00000.png")) for s in ("1", "2"))
    assert one.shape == (32, 32, 3) and not np.array_equal(one, two)


@pytest.mark.slow
def test_demo_vat_quick(tmp_path):
    """`make demo-vat`'s chain: both VAT stages, the tokenizer release and its code-budget table, reconstructed
    meshes, the next-scale generator released with it as a class-to-shape pipeline, generated meshes that load,
    their render grid, and the generated-shape scores."""
    import trimesh

    out, rel = tmp_path / "vat", tmp_path / "rel"
    proc = run_cli(["scripts/demo_vat.py", "--quick", "--out", str(out), "--release", str(rel)], timeout=1800)
    metrics = json.loads((out / "metrics.json").read_text())
    b = metrics["budgets"]["budgets"]
    assert sorted(b, key=lambda k: int(k.split("_")[1])) == [f"scales_{k}" for k in range(1, 7)]
    assert [b[f"scales_{k}"]["bytes"] for k in range(1, 7)] == [1, 3, 7, 15, 31, 63]  # 256 codes: one byte each
    assert all(0 <= r["fscore@0.02"] <= 1 and 0 <= r["iou"] <= 1 for r in b.values())
    assert json.loads((rel / "pipeline.json").read_text())["pipeline_type"] == "class-to-shape"
    assert json.loads((tmp_path / "rel-tokenizer" / "pipeline.json").read_text())["pipeline_type"] == "shape-reconstruction"
    generated = sorted((out / "generated").glob("*.obj"))
    assert len(generated) == 6 and (out / "generated" / "grid.png").is_file() and (out / "reconstructed" / "grid.png").is_file()
    assert all(isinstance(trimesh.load(f, force="mesh"), trimesh.Trimesh) for f in generated)
    g = metrics["generated"]
    assert g["num_generated"] == 6 and 0 <= g["coverage"] <= 1 and 0 <= g["recognised_as_requested"] <= 1
    assert "grid.png" in (out / "report.md").read_text()
    assert json.loads(proc.stdout.strip().splitlines()[-1])["coverage"] == g["coverage"]
