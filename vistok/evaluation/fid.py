"""FID / IS / KID through torch-fidelity's ``inception-v3-compat`` extractor (the ADM-suite network).

Statistics stream: features are summed into (n, sum, sum of outer products) in float64, so 50,000
samples never sit in memory unless KID (which needs the features themselves) is asked for.
Reference statistics save to / load from .npz: ``mu``, ``sigma`` (and ``features`` for KID).
The Frechet distance and IS/KID formulas are torch-fidelity's own.

The Inception weights cannot be downloaded here: they come from a local path. The user's file is
read without unpickling (safetensors, or ``torch.load(weights_only=True)``) and only its tensors are
handed to torch-fidelity.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from vistok.data.images import IMAGE_EXTENSIONS
from vistok.evaluation.task import Task
from vistok.metrics.fid import StreamingStats, frechet_distance
from vistok.registry import register_task
from vistok.io import open_rgb
from vistok.weights import read_state_dict

WEIGHTS_HELP = ("FID needs the weights of torch-fidelity's inception-v3-compat network "
                "(weights-inception-2015-12-05-6726825d.pth, published with the torch-fidelity releases on GitHub). "
                "Download it on a machine with internet access and pass --inception-weights PATH "
                "(or set eval.inception_weights in the config); nothing is downloaded at run time.")


def load_reference(path: str) -> dict:
    """An .npz with mu/sigma (and optionally features). Loaded with allow_pickle=False."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reference statistics '{path}' do not exist (expected an .npz with 'mu' and 'sigma')")
    with np.load(path, allow_pickle=False) as z:
        if "mu" not in z or "sigma" not in z:
            raise ValueError(f"'{path}': expected arrays 'mu' and 'sigma', found {list(z.keys())}")
        return {k: z[k] for k in z.keys()}


def inception_extractor(weights_path: str | None, features=("2048", "logits_unbiased")):
    """torch-fidelity's inception-v3-compat, with weights from a local file read without unpickling."""
    if not weights_path:
        raise FileNotFoundError(WEIGHTS_HELP)
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"Inception weights '{weights_path}' do not exist. {WEIGHTS_HELP}")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    state = read_state_dict(weights_path, "Inception")
    with tempfile.TemporaryDirectory() as tmp:
        clean = os.path.join(tmp, "inception.pth")
        torch.save({k: v.contiguous() for k, v in state.items()}, clean)  # only tensors we just verified
        try:
            net = FeatureExtractorInceptionV3("inception-v3-compat", list(features), feature_extractor_weights_path=clean)
        except RuntimeError as e:
            raise ValueError(f"'{weights_path}' does not hold inception-v3-compat weights: {e}") from e
    return net.eval()


def list_images(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder '{folder}' does not exist")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.lower().endswith(IMAGE_EXTENSIONS) and f != "grid.png")
    if not files:
        raise ValueError(f"image folder '{folder}' holds no images (grid.png is ignored)")
    return files


def read_uint8(paths: list[str]) -> torch.Tensor:
    """PNG/JPEG files -> uint8 B,3,H,W (grey expanded to RGB). Errors name the file."""
    out = []
    for p in paths:
        out.append(torch.from_numpy(np.asarray(open_rgb(p), dtype=np.uint8).copy()).permute(2, 0, 1))
    return torch.stack(out)


@torch.no_grad()
def inception_stats(net, folder: str, batch_size: int = 50, keep_features: bool = False):
    """Streams a folder through the network -> (StreamingStats of pool features, logits tensor). Under
    several processes each rank reads a disjoint shard of the files and the results are reduced."""
    from vistok.dist import all_gather, shard

    stats, logits = StreamingStats(keep_features), []
    files = list_images(folder)
    mine = [files[i] for i in shard(len(files))]
    for i in range(0, len(mine), batch_size):
        feats, lg = net(read_uint8(mine[i:i + batch_size]))
        stats.update(feats)
        logits.append(lg.double())
    parts = [t for t in all_gather(torch.cat(logits) if logits else None) if t is not None]
    return stats.sync(), torch.cat(parts)


def compute_fid(samples: str, reference: str, weights_path: str | None, kid: bool = False,
                batch_size: int = 50, kid_subset_size: int = 1000, isc_splits: int = 10,
                save_stats: str | None = None) -> dict:
    """FID (+ IS, + KID when asked) of a sample folder against a folder or an .npz of statistics;
    ``save_stats`` also writes the samples' statistics (with features when ``kid``)."""
    net = inception_extractor(weights_path)
    sample_stats, logits = inception_stats(net, samples, batch_size, keep_features=kid)
    if save_stats:
        sample_stats.save(save_stats)
    if os.path.isdir(reference):
        ref_stats, _ = inception_stats(net, reference, batch_size, keep_features=kid)
        ref = {"mu": ref_stats.mu_sigma()[0], "sigma": ref_stats.mu_sigma()[1]}
        if kid:
            ref["features"] = np.concatenate(ref_stats.features)
    else:
        ref = load_reference(reference)
    mu, sigma = sample_stats.mu_sigma()
    result = {"fid": frechet_distance(mu, sigma, ref["mu"], ref["sigma"]), "num_samples": sample_stats.n}
    from torch_fidelity.metric_isc import isc_features_to_metric

    isc = isc_features_to_metric(logits, splits=min(isc_splits, len(logits)))
    result["isc_mean"], result["isc_std"] = float(isc["inception_score_mean"]), float(isc["inception_score_std"])
    if kid:
        if "features" not in ref:
            raise ValueError(f"KID needs reference features; '{reference}' holds only mu/sigma (save it with features)")
        from torch_fidelity.metric_kid import kid_features_to_metric

        a = torch.from_numpy(np.concatenate(sample_stats.features))
        b = torch.from_numpy(np.asarray(ref["features"], np.float64))
        size = min(kid_subset_size, len(a), len(b))
        k = kid_features_to_metric(a, b, kid_subsets=100, kid_subset_size=size, verbose=False)
        result["kid_mean"], result["kid_std"] = float(k["kernel_inception_distance_mean"]), float(k["kernel_inception_distance_std"])
    result["protocol"] = "torch-fidelity inception-v3-compat pool3 features; FID vs " + os.path.basename(reference)
    return result


@register_task("fid")
class FIDTask(Task):
    help = "FID/IS (and KID) with torch-fidelity's inception-v3-compat, local weights"
    distributed = True

    @classmethod
    def add_arguments(cls, p) -> None:
        from vistok.cli import ranged

        p.add_argument("--samples", required=True, help="folder of PNG/JPEG samples")
        p.add_argument("--reference", help="folder of reference images, or an .npz with mu/sigma (and features for KID)")
        p.add_argument("--inception-weights", default=os.environ.get("VISTOK_INCEPTION_WEIGHTS", ""),
                       help="local path of the inception-v3-compat weights (.pth or .safetensors)")
        p.add_argument("--kid", action="store_true", help="also KID (needs reference features)")
        p.add_argument("--batch-size", type=ranged(int, 1), default=50)
        p.add_argument("--save-stats", help="write the samples' statistics to this .npz (features too with --kid)")

    @classmethod
    def run(cls, args) -> dict:
        if args.save_stats and not args.reference:
            stats, _ = inception_stats(inception_extractor(args.inception_weights), args.samples, args.batch_size, args.kid)
            stats.save(args.save_stats)
            return {"saved": args.save_stats, "num_images": stats.n}
        if not args.reference:
            raise ValueError("fid: --reference DIR|stats.npz is required (or --save-stats to only write statistics)")
        return compute_fid(args.samples, args.reference, args.inception_weights, kid=args.kid,
                           batch_size=args.batch_size, save_stats=args.save_stats)
