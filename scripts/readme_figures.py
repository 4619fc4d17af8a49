#!/usr/bin/env python
"""Copy the figures in results/*.json into README.md's tables (between <!-- fig:NAME --> markers).

    python scripts/readme_figures.py
"""
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    path = os.path.join(ROOT, "results", name)
    return json.load(open(path)) if os.path.isfile(path) else None


def table(rows):
    return "\n".join(["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def main():
    blocks = {}
    demo = load("demo_metrics.json")
    if demo:
        t = demo["tokenizer"]
        blocks["demo"] = table([("tokenizer", f"`{t.get('type', 'vqgan')}`"), ("held-out PSNR (dB)", f"{t['psnr']:.2f}"), ("SSIM", f"{t['ssim']:.4f}"),
                                ("codebook usage", f"{t['codebook_usage']:.1%}"), ("perplexity", f"{t['perplexity']:.0f}"),
                                ("FD-LeNet (reconstructions vs originals)", f"{t['fd_lenet']:.2f}"),
                                ("training time (s)", f"{demo['train']['seconds']:.0f} ({demo['train']['steps']} steps, "
                                                      f"{demo['train']['steps_per_second']} steps/s)"),
                                ("whole demo stages (s)", json.dumps(demo["timings_seconds"]))])
    if demo and "generator" in demo:
        g = demo["generator"]
        blocks["generator"] = "\n".join([
            f"| figure | CFG {g['cfg_scale']} | no CFG |", "|---|---|---|",
            f"| LeNet reads the requested digit (500 samples) | {g['class_accuracy']:.1%} | {g['class_accuracy_no_cfg']:.1%} |",
            f"| FD-LeNet vs the 500 held-out digits | {g['fd_lenet']:.1f} | {g['fd_lenet_no_cfg']:.1f} |",
            f"| floor: 500 real training digits vs the same | {g['fd_lenet_floor']:.1f} | {g['fd_lenet_floor']:.1f} |",
            f"| generator training (s) | {demo['train_generator']['seconds']:.0f} ({demo['train_generator']['steps']} steps) | |"])
    lenet = load("fd_lenet.json")
    if lenet:
        blocks["lenet"] = table([("held-out accuracy (500 digits)", f"{lenet['heldout_accuracy']:.1%}"),
                                 ("FD floor: 500 real training digits vs the 500 held-out", f"{lenet['fd_floor_500_train_vs_heldout']:.1f}"),
                                 ("FD: held-out digits blurred (sigma 1) vs themselves", f"{lenet['fd_blur_sigma1']:.0f}"),
                                 ("FD: uniform noise vs held-out", f"{lenet['fd_uniform_noise']:.0f}")])
    bench = load("trainer_overhead.json")
    if bench:
        blocks["bench"] = table([("overhead: median of paired ratios (trainer time / bare loop time - 1)", f"{bench['overhead']:+.1%}"),
                                 ("ratio of the medians - 1", f"{bench['ratio_of_medians']:+.1%}"),
                                 ("per-repeat ratios", ", ".join(f"{r:+.1%}" for r in bench["per_repeat_overhead"])),
                                 ("bare loop steps/s", bench["bare_steps_per_s"]),
                                 ("trainer steps/s", bench["trainer_steps_per_s"]), ("steps x repeats", f"{bench['steps']} x {bench['repeats']}")])
    vq = load("demo_vqgan_metrics.json")
    if vq:
        t, g = vq["tokenizer"], vq["generator"]
        blocks["demo_vqgan"] = table([
            ("held-out PSNR (dB) / SSIM", f"{t['psnr']:.2f} / {t['ssim']:.4f}"),
            ("codebook usage / perplexity", f"{t['codebook_usage']:.1%} / {t['perplexity']:.0f}"),
            ("FD-LeNet (reconstructions vs originals)", f"{t['fd_lenet']:.2f}"),
            (f"LeNet reads the requested digit, CFG {g['cfg_scale']} / none", f"{g['class_accuracy']:.1%} / {g['class_accuracy_no_cfg']:.1%}"),
            ("FD-LeNet of samples, CFG / none (floor)", f"{g['fd_lenet']:.1f} / {g['fd_lenet_no_cfg']:.1f} ({g['fd_lenet_floor']:.1f})"),
            ("training: tokenizer / generator (s)", f"{vq['train']['seconds']:.0f} / {vq['train_generator']['seconds']:.0f}")])
    ab = load("tokenflow_ablation.json")
    if ab:
        blocks["ablation"] = "\n".join([
            "| variant | linear-probe accuracy | PSNR (dB) | codebook usage |", "|---|---|---|---|",
            f"| dual (semantic + pixel) | {ab['probe_acc_dual']:.1%} (spread {ab['probe_acc_dual_spread']:.1%}) | "
            f"{ab['psnr_dual']:.2f} (spread {ab['psnr_dual_spread']:.2f}) | {ab['codebook_usage_dual']:.1%} |",
            f"| pixel-only, same budget | {ab['probe_acc_pixel']:.1%} (spread {ab['probe_acc_pixel_spread']:.1%}) | "
            f"{ab['psnr_pixel']:.2f} (spread {ab['psnr_pixel_spread']:.2f}) | {ab['codebook_usage_pixel']:.1%} |",
            f"| seeds x steps | {len(ab['seeds'])} x {ab['steps']}" + (" (partial run)" if ab.get("partial") else "") + " | | |"])
    ars = load("ar_sampling.json")
    if ars:
        blocks["ar_sampling"] = table([("speed-up of the KV cache, 64 tokens", f"{ars['speedup_64']}x"),
                                       ("speed-up of the KV cache, 256 tokens", f"{ars['speedup_256']}x"),
                                       ("cached tokens/s at 256 (batch 8, CFG)", ars["tokens_per_s_cached_256"]),
                                       ("same tokens both ways", f"{ars['same_tokens_64']} / {ars['same_tokens_256']}"),
                                       ("model", ars["model"])])
    mp = load("multiprocess.json")
    if mp:
        blocks["multiprocess"] = table([
            ("throughput, 2 processes / 1 process (median of repeats)", f"{mp['throughput_ratio_2_over_1']}x"),
            ("per repeat", ", ".join(f"{r}x" for r in mp["per_repeat"])),
            ("steps/s: 1 process / 2 processes", f"{mp['steps_per_s_1']} / {mp['steps_per_s_2']}"),
            ("set-up", f"{mp['threads']}; global batch {mp['global_batch']}, {mp['steps']} steps")])
    dx = load("demo_xar_metrics.json")
    if dx:
        g, t = dx["generator"], dx["tokenizer"]
        blocks["demo_xar"] = table([
            ("KL tokenizer held-out PSNR (dB) / SSIM", f"{t['psnr']:.2f} / {t['ssim']:.4f}"),
            (f"LeNet reads the requested digit (500 samples, CFG {g['cfg_scale']} ramped)", f"{g['class_accuracy']:.1%}"),
            ("FD-LeNet vs held-out (floor)", f"{g['fd_lenet']:.1f} ({g['fd_lenet_floor']:.1f})"),
            ("xAR", f"next-{g['entity']}, {'noisy context' if g['noisy_context'] else 'teacher forcing'}, "
                    f"{dx['train']['xar_steps']} steps ({dx['train']['xar_seconds']:.0f} s)"),
            ("sampling", f"{g['images_per_s']} images/s (20 Euler-Maruyama steps per cell, 16 cells)")])
    xs = load("xar_sampling.json")
    if xs:
        blocks["xar_sampling"] = table([
            (f"next-cell ({xs['entities_cell']} entities) vs next-token ({xs['entities_token']}), images/s ratio", f"{xs['cell_vs_token_speedup']}x"),
            ("KV cache vs recomputing the prefix (next-cell)", f"{xs['cache_speedup']}x"),
            ("images/s: cell / token / cell recomputed", f"{xs['images_per_s_cell']} / {xs['images_per_s_token']} / {xs['images_per_s_cell_recompute']}"),
            ("cached = recomputed samples", xs["cached_equals_recomputed"]), ("model", xs["model"])])
    xa = load("xar_ablation.json")
    if xa:
        blocks["xar_ablation"] = "\n".join([
            "| figure | noisy context | teacher forcing |", "|---|---|---|",
            f"| LeNet reads the requested digit (500 samples) | {xa['acc_noisy']:.1%} | {xa['acc_teacher']:.1%} |",
            f"| FD-LeNet vs held-out (lower is better) | {xa['fd_noisy']:.1f} | {xa['fd_teacher']:.1f} |",
            f"| seeds / steps | {xa['seeds']} / {xa['steps']} | {xa['seeds']} / {xa['steps']} |"])
    xe = load("xar_entities.json")
    if xe:
        kinds = [k for k in ("token", "cell", "subsample", "scale", "image") if k in xe]
        blocks["xar_entities"] = "\n".join(
            ["| entity | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|",
             "| LeNet accuracy | " + " | ".join(f"{xe[k]['acc']:.1%}" for k in kinds) + " |",
             "| FD-LeNet | " + " | ".join(f"{xe[k]['fd_lenet']:.1f}" for k in kinds) + " |",
             "| sampling images/s | " + " | ".join(f"{xe[k]['images_per_s']}" for k in kinds) + " |",
             "| training s | " + " | ".join(f"{xe[k]['train_seconds']:.0f}" for k in kinds) + " |"])
    cw = load("catanet_vs_window.json")
    if cw:
        toy = cw["x2_toy"]
        blocks["catanet"] = "\n".join([
            "| x2, held-out photos (chelsea, rocket, camera), whole images | CATANet | window attention | bicubic |", "|---|---|---|---|",
            f"| Y-PSNR (dB) | {cw['psnr_catanet']:.3f} | {cw['psnr_window']:.3f} | {cw['psnr_bicubic']:.3f} |",
            f"| Y-SSIM | {cw['ssim_catanet']:.4f} | {cw['ssim_window']:.4f} | {toy['catanet'].get('bicubic_ssim_y', float('nan')):.4f} |",
            f"| training s ({cw['steps']} steps) / held-out inference s | {toy['catanet']['train_seconds']:.0f} / {toy['catanet']['eval_seconds']:.1f} | "
            f"{toy['window']['train_seconds']:.0f} / {toy['window']['eval_seconds']:.1f} | |",
            f"| x4 paper size on a {cw['x4_input']}x{cw['x4_input']} input: seconds ({cw['x4_params']['catanet']:,} / {cw['x4_params']['window']:,} params) | "
            f"{cw['x4_seconds_catanet']} | {cw['x4_seconds_window']} | |",
            f"| time ratio window / CATANet | {cw['time_ratio_window_over_catanet']} | | |"])
    ct = load("catanet_toy.json")
    if ct:
        blocks["catanet_toy"] = "\n".join(
            ["| held-out photo (whole image, x2) | Y-PSNR (dB) | bicubic | gain | Y-SSIM | bicubic |", "|---|---|---|---|---|---|"]
            + [f"| {r['name']} | {r['psnr_y']:.2f} | {r['bicubic_psnr_y']:.2f} | {r['psnr_y'] - r['bicubic_psnr_y']:+.2f} | "
               f"{r['ssim_y']:.4f} | {r['bicubic_ssim_y']:.4f} |" for r in ct["per_image"]]
            + [f"| **mean** | **{ct['psnr_y']:.2f}** | {ct['bicubic_psnr_y']:.2f} | **{ct['psnr_y'] - ct['bicubic_psnr_y']:+.2f}** | "
               f"{ct['ssim_y']:.4f} | {ct['bicubic_ssim_y']:.4f} |"])
    sc = load("selective_scan.json")
    if sc:
        blocks["selective_scan"] = table([
            (f"vs a per-step loop through autograd ({sc['seq_case']}), forward + backward", f"{sc['speedup_vs_sequential']}x "
             f"({sc['seconds_ours_seq_case']} s vs {sc['seconds_loop']} s)"),
            (f"vs mamba-ssm {sc.get('mamba_ssm_source', '')} `selective_scan_ref` ({sc.get('ref_case', '')})",
             f"{sc['speedup_vs_mamba_ref']}x ({sc.get('seconds_ours_ref_case')} s vs {sc.get('seconds_mamba_ref')} s)"),
            ("max abs difference vs loop / vs reference (float32)", f"{sc['max_abs_diff_vs_loop']:.1e} / {sc.get('max_abs_diff_vs_mamba_ref', 0):.1e}")])
    runs = [r for r in (load("tokenunify_ablation_ft100.json"), load("tokenunify_ablation.json")) if r]
    if runs:
        rows = ["| held-out procedural EM volumes | fine-tuning steps | scratch | random-token pretraining | TokenUnify mixture |",
                "|---|---|---|---|---|"]
        for tu in runs:
            rows += [f"| VOI (bits, lower is better) | {tu['finetune_steps']} | {tu['voi_scratch']:.3f} | {tu['voi_random_token']:.3f} | "
                     f"{tu['voi_tokenunify']:.3f} |",
                     f"| ARAND (lower is better) | {tu['finetune_steps']} | {tu['arand_scratch']:.3f} | {tu['arand_random_token']:.3f} | "
                     f"{tu['arand_tokenunify']:.3f} |"]
        rows.append(f"| pretraining steps (each) | | 0 | {runs[0]['pretrain_steps']} | {runs[0]['pretrain_steps']} |")
        blocks["tokenunify"] = "\n".join(rows)
    shapes = load("demo_shapes_metrics.json")
    if shapes:
        g = shapes["geneval"]
        tasks = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
        blocks["geneval"] = "\n".join(
            ["| task | " + " | ".join(tasks) + " | overall | detector ceiling |", "|---" * (len(tasks) + 3) + "|",
             "| score | " + " | ".join(f"{g[t]:.3f}" for t in tasks) + f" | **{g['overall']:.3f}** | {g['detector_ceiling']:.3f} |"])
    path = os.path.join(ROOT, "README.md")
    text = open(path).read()
    for name, body in blocks.items():
        pattern = re.compile(rf"<!-- fig:{name} -->.*?<!-- /fig:{name} -->", re.S)
        text = pattern.sub(lambda _: f"<!-- fig:{name} -->\n{body}\n<!-- /fig:{name} -->", text)
    open(path, "w").write(text)
    print(json.dumps({"updated": sorted(blocks)}))


if __name__ == "__main__":
    main()
