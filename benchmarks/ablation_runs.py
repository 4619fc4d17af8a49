"""What the seeded ablations share (seed_causal_ablation.py, vat_latent_ablation.py): the loop over seeds and
variants, ``--summarise`` (re-summarise an earlier OUT/results.json without training), and the summary: per variant
the mean and spread (min, max) over seeds of each figure, every run's figures, written to OUT/results.json and
printed as the last line."""
import json
import os
import statistics

from demo import train_stage  # scripts/ (the caller puts it on sys.path)


def add_arguments(p, out: str, steps: list[int]) -> None:
    p.add_argument("--out", default=out)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, nargs=3, default=steps, metavar=("STAGE1", "STAGE2", "GENERATOR"))
    p.add_argument("--summarise", action="store_true", help="only recompute the summary of OUT/results.json")


def train(name: str, timings: dict, config: str, out_dir: str, steps: int, *overrides: str) -> dict:
    """``train.py --config CONFIG`` for ``steps`` steps into ``out_dir`` (resumable, one checkpoint and one evaluation
    at the end) -> its train_summary.json metrics."""
    return train_stage(name, timings, config, out_dir, *overrides, "train.image_every=0", f"train.max_steps={steps}",
                       f"train.checkpoint_every={steps}", f"train.eval_every={steps}")["metrics"]


def run_all(args, variants: tuple[str, ...], run) -> tuple[list[dict], dict]:
    """Every (seed, variant) through ``run(variant, seed, args, timings)`` -> (rows, timings); with ``--summarise``
    the rows of the earlier results instead (and its seeds and steps into ``args``)."""
    timings, rows = {}, []
    if args.summarise:
        prev = json.load(open(os.path.join(args.out, "results.json")))
        rows, timings = prev["runs"], {"all": prev["seconds"]}
        args.seeds, args.steps = prev["seeds"], prev["steps"]
    for seed in [] if args.summarise else args.seeds:
        for variant in variants:
            rows.append(run(variant, seed, args, timings))
            print(json.dumps(rows[-1]), flush=True)
    return rows, timings


def summarise(rows: list[dict], key: str) -> dict:
    vals = [r[key] for r in rows]
    return {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}


def write_summary(args, variants: tuple[str, ...], rows: list[dict], keys: list[str], timings: dict, **extra) -> dict:
    out = {v: {k: summarise([r for r in rows if r["variant"] == v], k) for k in keys} for v in variants}
    out.update(seeds=args.seeds, steps=args.steps, runs=rows, seconds=round(sum(timings.values()), 1), **extra)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out))
    return out
