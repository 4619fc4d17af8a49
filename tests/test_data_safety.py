"""Nothing of the user's is lost (issue #12): outputs never delete or overwrite what vistok did not write, a
run folder belongs to one training, resume survives corrupt checkpoints, and every CLI error is one line.

Each case hashes the folders it touches before and after, checks the exit code and that the message names
the thing, and that no traceback is printed. CLIs run in-process through ``vistok.cli.run`` (the code path
of ``python X.py``) where a subprocess adds nothing; SIGKILL and the real entry points run as subprocesses.
"""
import hashlib
import importlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.conftest import ROOT, TINY_VQ, run_cli
from vistok.cli import run as cli_run
from vistok.config import load_config
from vistok.training.trainer import train

MNIST = os.path.join(ROOT, "configs/vqgan/mnist.yaml")
TINY_RUN = TINY_VQ + ["data.limit=64", "train.max_steps=4", "train.checkpoint_every=2", "train.checkpoints_total_limit=0"]


def tree(path) -> dict:
    """relative path -> SHA-256 of every file under ``path`` (folders as 'dir')."""
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path)] = "dir"
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def cli(script: str, args: list, capsys) -> tuple[int, str]:
    """``python script.py args`` in-process; returns (exit code, stderr) and checks no traceback was printed."""
    mod = importlib.import_module(script)
    try:
        rc = cli_run(mod.main, [str(a) for a in args])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "run"
    train(load_config(MNIST, TINY_RUN + [f"train.output_dir={out}"]))
    return out


@pytest.fixture(scope="module")
def release_dir(run_dir):
    from vistok.pipelines.release import release

    out = run_dir.parent / "rel"
    release(str(out), tokenizer=str(run_dir))
    return out


@pytest.fixture(scope="module")
def gen_release(release_dir):
    from vistok.pipelines.release import release

    run = release_dir.parent / "gen"
    train(load_config(os.path.join(ROOT, "configs/ar/mnist.yaml"), [
        f"data.tokenizer={release_dir}", "model.vocab_size=32", "model.token_shape=[16,16]", "model.dim=16",
        "model.depth=1", "model.heads=2", "train.max_steps=1", "train.batch_size=16", f"train.output_dir={run}",
        "train.log_with=none", "train.progress=false", "train.eval_every=0", "train.image_every=0",
        "train.mixed_precision=no"]))
    out = release_dir.parent / "gen_rel"
    release(str(out), tokenizer=str(release_dir), generator=str(run))
    return out


# ---- outputs ------------------------------------------------------------------------------------------------
def test_release_into_its_own_run_folder_is_refused(run_dir, capsys):
    before = tree(run_dir)
    rc, err = cli("release", ["--tokenizer", run_dir, "--out", run_dir, "--overwrite"], capsys)
    assert rc == 2 and f"--out {run_dir}: is a training run" in err
    assert tree(run_dir) == before


def test_release_into_the_checkpoints_root_or_a_foreign_folder_is_refused(run_dir, tmp_path, capsys):
    root = os.path.join(ROOT, "checkpoints")
    before = tree(root)
    rc, err = cli("release", ["--tokenizer", run_dir, "--out", root, "--overwrite"], capsys)
    assert rc == 2 and "is the repository's checkpoints/ root" in err and tree(root) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    rc, err = cli("release", ["--tokenizer", run_dir, "--out", mine, "--overwrite"], capsys)
    assert rc == 2 and "not a vistok release" in err and "thesis.tex" in err
    assert tree(mine) == {"thesis.tex": hashlib.sha256(b"years of work").hexdigest()}
    (tmp_path / "afile").write_text("x")
    rc, err = cli("release", ["--tokenizer", run_dir, "--out", tmp_path / "afile"], capsys)
    assert rc == 2 and "is not a folder" in err and (tmp_path / "afile").read_text() == "x"


def test_an_existing_release_is_replaced_only_with_overwrite_and_atomically(run_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "rel"
    assert cli("release", ["--tokenizer", run_dir, "--out", out], capsys)[0] == 0
    first = tree(out)
    rc, err = cli("release", ["--tokenizer", run_dir, "--out", out], capsys)
    assert rc == 2 and "pass --overwrite" in err and tree(out) == first
    # a crash half-way through writing the new release leaves the old one whole, and no temporary folder
    from vistok.modeling import VistokModel

    def dies(self, path, **kw):
        os.makedirs(path, exist_ok=True)
        open(os.path.join(path, "model.safetensors"), "wb").write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(VistokModel, "save_pretrained", dies)
    rc, err = cli("release", ["--tokenizer", run_dir, "--out", out, "--overwrite"], capsys)
    assert rc == 2 and "No space left" in err
    assert tree(out) == first and sorted(os.listdir(tmp_path)) == ["rel"]
    monkeypatch.undo()
    (out / "README.md").write_text("edited card")  # something changed, so that replacing is visible
    assert cli("release", ["--tokenizer", run_dir, "--out", out, "--overwrite"], capsys)[0] == 0
    assert tree(out) == first and sorted(os.listdir(tmp_path)) == ["rel"]


def test_convert_refuses_before_reading_anything(run_dir, capsys):
    before = tree(run_dir)
    rc, err = cli("convert", ["catanet", "--ckpt", "/nonexistent.pth", "--out", run_dir, "--overwrite"], capsys)
    assert rc == 2 and "is a training run" in err and tree(run_dir) == before


def test_files_get_the_users_permissions(run_dir, tmp_path, capsys):
    old = os.umask(0o002)
    try:
        out = tmp_path / "rel"
        assert cli("release", ["--tokenizer", run_dir, "--out", out], capsys)[0] == 0
        run = tmp_path / "run"
        train(load_config(MNIST, TINY_VQ + ["data.limit=32", "train.max_steps=1", f"train.output_dir={run}"]))
    finally:
        os.umask(old)
    for folder in (out, run):
        for root, dirs, files in os.walk(folder):
            for f in files:
                assert stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode) == 0o664, os.path.join(root, f)
            assert stat.S_IMODE(os.stat(root).st_mode) == 0o775, root


def test_samples_never_mix_or_delete_foreign_files(release_dir, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["--pipeline", release_dir, "--out", out, "--num-images", "4"]
    assert cli("sample", args, capsys)[0] == 0
    first = tree(out)
    rc, err = cli("sample", args, capsys)
    assert rc == 2 and "holds earlier samples" in err and "--overwrite" in err and tree(out) == first
    assert cli("sample", args[:-1] + ["2", "--overwrite"], capsys)[0] == 0  # fewer images: no stale ones left
    assert sorted(f for f in os.listdir(out) if f[0].isdigit()) == ["00000.png", "00001.png"]
    (out / "notes.txt").write_text("mine")
    rc, err = cli("sample", args + ["--overwrite"], capsys)
    assert rc == 2 and "notes.txt" in err and "nothing was deleted" in err
    assert (out / "notes.txt").read_text() == "mine" and (out / "00001.png").is_file()
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "a.png")
    rc, err = cli("sample", ["--pipeline", release_dir, "--out", photos], capsys)
    assert rc == 2 and "holds no earlier samples" in err and len(os.listdir(photos)) == 1


def test_an_interrupted_sampling_is_not_scored_and_can_be_replaced(release_dir, tmp_path, capsys):
    out = tmp_path / "s"
    assert cli("sample", ["--pipeline", release_dir, "--out", out, "--num-images", "3"], capsys)[0] == 0
    meta = json.loads((out / "sampling.json").read_text())
    (out / "sampling.json").write_text(json.dumps({**meta, "mode": "in progress", "complete": False}))
    rc, err = cli("evaluate", ["classify", "--samples", out], capsys)
    assert rc == 2 and "did not finish" in err
    assert cli("sample", ["--pipeline", release_dir, "--out", out, "--num-images", "3", "--overwrite"], capsys)[0] == 0


def test_evaluate_out_replaces_only_vistok_results(release_dir, tmp_path, capsys):
    res = tmp_path / "r.json"
    res.write_text('{"my": "own numbers"}')
    rc, err = cli("evaluate", ["recon", "--pipeline", release_dir, "--max-images", "8", "--out", res], capsys)
    assert rc == 2 and "not a vistok result" in err and res.read_text() == '{"my": "own numbers"}'
    res.unlink()
    assert cli("evaluate", ["recon", "--pipeline", release_dir, "--max-images", "8", "--out", res], capsys)[0] == 0
    first = res.read_text()
    assert json.loads(first)["task"] == "recon"
    rc, err = cli("evaluate", ["recon", "--pipeline", release_dir, "--max-images", "8", "--out", res], capsys)
    assert rc == 2 and "--overwrite" in err and res.read_text() == first
    assert cli("evaluate", ["recon", "--pipeline", release_dir, "--max-images", "8", "--out", res, "--overwrite"], capsys)[0] == 0


# ---- runs ---------------------------------------------------------------------------------------------------
def test_an_existing_run_is_never_restarted_over(run_dir):
    from vistok.training.run_lock import RunBusy

    before = tree(run_dir)
    with pytest.raises(RunBusy, match=r"already holds a training run; continue it with train.resume=latest, or choose a fresh"):
        train(load_config(MNIST, TINY_RUN + [f"train.output_dir={run_dir}"]))
    assert tree(run_dir) == before


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    from vistok.training.run_lock import RunBusy

    hf = tmp_path.parent / (tmp_path.name + "-hf")
    other = hf / "checkpoints" / "checkpoint-500"  # another tool's run: pruning must never reach it
    other.mkdir(parents=True)
    (other / "trainer_state.json").write_text('{"step": 500}')
    with pytest.raises(RunBusy, match="not a training run .*checkpoints"):
        train(load_config(MNIST, TINY_RUN + [f"train.output_dir={hf}"]))
    assert (other / "trainer_state.json").read_text() == '{"step": 500}'

    (tmp_path / "paper.pdf").write_text("x")
    with pytest.raises(RunBusy, match="not a training run .*paper.pdf"):
        train(load_config(MNIST, TINY_RUN + [f"train.output_dir={tmp_path}"]))
    assert sorted(os.listdir(tmp_path)) == ["paper.pdf"]


def test_a_resume_that_does_not_fit_rewrites_nothing(run_dir):
    from vistok.checkpoints import CorruptCheckpoint

    before = tree(run_dir)
    with pytest.raises(CorruptCheckpoint, match=r"checkpoint-4' does not fit this config"):
        train(load_config(MNIST, TINY_RUN + ["model.codebook_size=48", "train.max_steps=6", "train.resume=latest",
                                             f"train.output_dir={run_dir}"]))
    assert tree(run_dir) == before  # config.yaml is written only after the state has loaded


def test_lock_refuses_a_live_training_and_takes_over_a_dead_ones(tmp_path, caplog):
    from vistok.training.run_lock import LOCK_NAME, RunBusy, _start_time

    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": other.pid, "host": socket.gethostname(), "started": _start_time(other.pid), "time": "now"}
        (run / LOCK_NAME).write_text(json.dumps(lock))
        cfg = load_config(MNIST, TINY_RUN + [f"train.output_dir={run}", "train.resume=latest"])
        with pytest.raises(RunBusy, match=f"being trained by process {other.pid}"):
            train(cfg)
    finally:
        other.kill()
        other.wait()
    assert sorted(os.listdir(run)) == [LOCK_NAME]  # nothing else written
    with caplog.at_level("WARNING"):
        summary = train(cfg)  # the same lock, its process now dead: taken over
    assert summary["step"] == 4 and "taking over the lock" in caplog.text and not (run / LOCK_NAME).exists()
    (run / LOCK_NAME).write_text(json.dumps({**lock, "host": "gpu-node-17"}))
    cfg6 = load_config(MNIST, TINY_RUN + [f"train.output_dir={run}", "train.resume=latest", "train.max_steps=6"])
    with pytest.raises(RunBusy, match="host gpu-node-17.*train.force_unlock=true"):
        train(cfg6)
    summary = train(load_config(MNIST, TINY_RUN + [f"train.output_dir={run}", "train.resume=latest", "train.max_steps=6",
                                                   "train.force_unlock=true"]))
    assert summary["start_step"] == 4 and summary["step"] == 6


# ---- resume ---------------------------------------------------------------------------------------------------
def _weights(run, step):
    return load_file(os.path.join(run, "checkpoints", f"checkpoint-{step}", "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    train(load_config(MNIST, TINY_RUN + ["train.max_steps=6", f"train.output_dir={run}"]))
    return run


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_optimizer", "garbage_state"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted, caplog, damage):
    run = tmp_path / "run"
    train(load_config(MNIST, TINY_RUN + [f"train.output_dir={run}"]))  # checkpoints 2 and 4
    ck = run / "checkpoints" / "checkpoint-4"
    if damage == "truncate":
        w = ck / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif damage == "flip":  # same size, one byte changed: only the manifest's SHA-256 sees it
        w = ck / "optimizer.bin"
        b = bytearray(w.read_bytes())
        b[len(b) // 2] ^= 0xFF
        w.write_bytes(bytes(b))
    elif damage == "delete_optimizer":
        (ck / "optimizer.bin").unlink()
    else:
        (ck / "trainer_state.json").write_text("{not json")
    with caplog.at_level("WARNING"):
        summary = train(load_config(MNIST, TINY_RUN + ["train.max_steps=6", "train.resume=latest", f"train.output_dir={run}"]))
    assert summary["start_step"] == 2 and summary["step"] == 6
    assert f"checkpoint '{ck}'" in caplog.text and "resuming from the previous complete checkpoint" in caplog.text
    assert "checkpoint-2" in caplog.text
    ref, got = _weights(uninterrupted, 6), _weights(run, 6)
    assert all(torch.equal(ref[k], got[k]) for k in ref)  # still exact
    assert (run / "checkpoints" / "checkpoint-4.corrupt").is_dir()  # kept aside for inspection, never pruned


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path, uninterrupted):
    run = tmp_path / "run"
    args = ["train.py", "--config", "configs/vqgan/mnist.yaml", *TINY_RUN, "train.max_steps=6", f"train.output_dir={run}"]
    killed = run_cli(args, env_extra={"VISTOK_FAULT_KILL_IN_CHECKPOINT": "4"}, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert sorted(os.listdir(run / "checkpoints")) == ["checkpoint-2", "checkpoint-4.tmp"]  # half written
    run_cli(args + ["train.resume=latest"])  # the lock of the killed process is taken over
    ref, got = _weights(uninterrupted, 6), _weights(run, 6)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert sorted(os.listdir(run / "checkpoints")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_missing_rng_state_is_an_error_unless_allowed(tmp_path, caplog):
    from vistok.checkpoints import CorruptCheckpoint, manifest, read_state

    run = tmp_path / "run"
    train(load_config(MNIST, TINY_RUN + [f"train.output_dir={run}"]))
    ck = run / "checkpoints" / "checkpoint-4"
    (ck / "random_states_0.pkl").unlink()
    state = read_state(str(ck))  # a checkpoint written without it (consistent manifest): not corrupt, just inexact
    (ck / "trainer_state.json").write_text(json.dumps({**state, "files": manifest(str(ck))}))
    cfg = TINY_RUN + ["train.max_steps=6", "train.resume=latest", f"train.output_dir={run}"]
    with pytest.raises(CorruptCheckpoint, match="checkpoint-4' has no RNG state .*train.resume_inexact=true"):
        train(load_config(MNIST, cfg))
    with caplog.at_level("WARNING"):
        assert train(load_config(MNIST, cfg + ["train.resume_inexact=true"]))["start_step"] == 4
    assert "no longer exactly reproducible" in caplog.text


@pytest.mark.parametrize("error", [RuntimeError("[enforce fail at inline_container.cc:783] . unexpected pos 1024 vs 512"),
                                   OSError(28, "No space left on device")])
def test_any_failure_while_writing_a_checkpoint_is_named_and_cleaned(tmp_path, monkeypatch, error):
    from accelerate import Accelerator

    from vistok.training.trainer import CheckpointWriteError

    real_save, calls = Accelerator.save_state, []

    def fails(self, output_dir=None, **kw):
        calls.append(output_dir)
        if len(calls) == 2:
            real_save(self, output_dir, **kw)  # most files written, then the disk is full
            raise error
        return real_save(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", fails)
    run = tmp_path / "run"
    with pytest.raises(CheckpointWriteError, match=rf"could not write checkpoint .*checkpoint-4 \({type(error).__name__}.*"
                                                   rf"latest complete checkpoint is kept: .*checkpoint-2"):
        train(load_config(MNIST, TINY_RUN + [f"train.output_dir={run}"]))
    assert sorted(os.listdir(run / "checkpoints")) == ["checkpoint-2"]


# ---- validation before work -------------------------------------------------------------------------------------
def test_a_generator_that_does_not_fit_its_tokenizer_fails_before_encoding(release_dir, tmp_path):
    run = tmp_path / "gen"
    cfg = load_config(os.path.join(ROOT, "configs/ar/mnist.yaml"), [
        f"data.tokenizer={release_dir}", "model.vocab_size=99", "model.dim=16", "model.depth=1", "model.heads=2",
        f"train.output_dir={run}", "train.log_with=none", "train.progress=false", "train.mixed_precision=no"])
    with pytest.raises(ValueError, match=rf"model does not fit data.tokenizer '{release_dir}': generator vocab_size 99 "
                                         rf"!= tokenizer codebook_size 32"):
        train(cfg)
    assert not (run / "token_cache").exists()


def test_init_from_a_missing_path_is_not_a_hub_lookup(tmp_path):
    cfg = load_config(MNIST, TINY_RUN + [f"train.init_from={tmp_path / 'nope'}", f"train.output_dir={tmp_path / 'r'}"])
    with pytest.raises(FileNotFoundError, match=r"nope' does not exist \(expected a release, model or training-run folder\)"):
        train(cfg)


def test_a_read_only_release_can_be_trained_on(release_dir, tmp_path):
    ro = tmp_path / "ro"
    import shutil

    shutil.copytree(release_dir, ro)
    for root, dirs, files in os.walk(ro):
        for f in files:
            os.chmod(os.path.join(root, f), 0o444)
        os.chmod(root, 0o555)
    try:
        before = tree(ro)
        run = tmp_path / "gen"
        summary = train(load_config(os.path.join(ROOT, "configs/ar/mnist.yaml"), [
            f"data.tokenizer={ro}", "model.vocab_size=32", "model.token_shape=[16,16]", "model.dim=16", "model.depth=1",
            "model.heads=2", "train.max_steps=2", "train.batch_size=16", f"train.output_dir={run}", "train.log_with=none",
            "train.progress=false", "train.eval_every=0", "train.image_every=0", "train.mixed_precision=no"]))
        assert summary["step"] == 2 and tree(ro) == before and os.listdir(run / "token_cache")
    finally:
        for root, dirs, files in os.walk(ro):
            os.chmod(root, 0o755)


@pytest.mark.parametrize("option, value", [("--num-images", "0"), ("--per-class", "0"), ("--batch-size", "0"),
                                           ("--top-k", "-3"), ("--cfg-scale", "nan"), ("--temperature", "-1"),
                                           ("--top-p", "2"), ("--seed", "-1")])
def test_bad_sampling_options_are_named(option, value, gen_release, tmp_path, capsys):
    rc, err = cli("sample", ["--pipeline", gen_release, "--out", tmp_path / "o", option, value], capsys)
    assert rc == 2 and f"argument {option}: '{value}'" in err and ("expected a" in err)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, release_dir, run_dir):
    proc = run_cli(["train.py", "--config", "configs/vqgan/mnist.yaml", "train.checkpoint_every=0"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: command-line override 'train.checkpoint_every=0'" in proc.stderr and "expected a value in [1, inf)" in proc.stderr
    proc = run_cli(["sample.py", "--pipeline", str(run_dir), "--out", str(tmp_path / "o")], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "is a training run, not a release" in proc.stderr
    assert "--out" not in proc.stderr.split("release it first")[1].split("then")[0] or str(run_dir) not in \
        proc.stderr.split("--out")[-1]  # never suggests releasing into the run folder itself
    proc = run_cli(["sample.py", "--pipeline", str(run_dir), "--out", str(tmp_path / "o"), "--debug"], check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


# ---- images -----------------------------------------------------------------------------------------------------
def test_every_image_mode_is_converted_or_refused_by_path(tmp_path):
    from vistok.io import open_rgb

    ramp16 = (np.arange(16 * 16).reshape(16, 16) * 256).astype(np.uint16)  # 0 .. 65280
    Image.fromarray(ramp16).save(tmp_path / "grey16.png")
    got = np.asarray(open_rgb(tmp_path / "grey16.png"))
    assert got.shape == (16, 16, 3) and got[..., 0].max() == round(65280 / 65535 * 255) and got[0, 1, 0] == 1
    pal = Image.new("P", (4, 4))
    pal.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    pal.save(tmp_path / "pal.png")
    assert tuple(np.asarray(open_rgb(tmp_path / "pal.png"))[0, 0]) == (255, 0, 0)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent red: white after compositing, not red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    assert tuple(np.asarray(open_rgb(tmp_path / "alpha.png"))[0, 0]) == (255, 255, 255)
    Image.fromarray(np.full((4, 4), 3.0, np.float32), "F").save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float.tif': .*outside \[0, 1\]"):
        open_rgb(tmp_path / "float.tif")
    Image.fromarray(np.full((4, 4), 0.5, np.float32), "F").save(tmp_path / "half.tif")
    assert np.asarray(open_rgb(tmp_path / "half.tif"))[0, 0, 0] == 128
