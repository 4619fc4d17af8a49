"""`make demo`'s whole chain (train -> release -> sample -> evaluate -> report) in --quick mode."""
import json
import os

from tests.conftest import run_cli


def test_demo_quick_writes_the_contract(tmp_path):
    out, rel = tmp_path / "demo", tmp_path / "rel"
    proc = run_cli(["scripts/demo.py", "--quick", "--out", str(out), "--release", str(rel)])
    metrics = json.loads((out / "metrics.json").read_text())
    tok = metrics["tokenizer"]
    for key in ("psnr", "ssim", "codebook_usage", "perplexity", "fd_lenet"):
        assert isinstance(tok[key], float), key
    assert tok["psnr"] > 10 and 0 < tok["codebook_usage"] <= 1  # 30 tiny steps: learnt something, not much
    assert set(metrics["timings_seconds"]) >= {"train tokenizer", "release", "sample", "evaluate"}
    report = (out / "report.md").read_text()
    assert "samples/grid.png" in report and os.path.isfile(out / "samples" / "grid.png")
    assert os.path.isfile(rel / "pipeline.json") and os.path.isfile(rel / "tokenizer" / "model.safetensors")
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {k: v for k, v in tok.items()}
