"""The samplers of one trained DDPM side by side: DDIM, Euler, Heun and DPM-Solver++(2M) at 10,
20 and 50 steps against ancestral sampling over all 1,000, each timed and measured (feature
FID and KID beside their real-vs-real floors, precision and recall) on the same number of
samples from the same seed. Prints a Markdown table (the README's) and writes it as JSON.
Times are wall-clock and CPU seconds (the process's, all threads): on a shared machine the CPU
seconds say more about the work; the network calls say it exactly.

    python benchmarks/bench_samplers.py --checkpoint runs/results/ddpm-digits/checkpoint.h5
    python benchmarks/bench_samplers.py --steps 10 --samplers dpm-solver++ ddim --n 200
    python benchmarks/bench_samplers.py --time-only --n 64    # the times alone, no measures
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from minigen import metrics
from minigen.ddpm import DDPMLoop
from minigen.run import draw_samples, load_run_data, load_trained, sample_defaults

SAMPLERS = ("ddim", "euler", "heun", "dpm-solver++")
SEED = 2024


def network_calls(sampler: str, steps: int) -> int:
    return 2 * steps - 1 if sampler == "heun" else steps


def measure(loop, dataset, n: int, label: str, calls: int, time_only: bool = False,
            **options) -> dict:
    chosen = dict(sample_defaults(DDPMLoop), **options)
    draw_samples(loop, 2, chosen, SEED)  # compiles the kernels: untimed
    started, cpu_started = time.perf_counter(), time.process_time()
    samples = draw_samples(loop, n, chosen, SEED)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    row = {"label": label, "network_calls": calls, "seconds": seconds,
           "cpu_seconds": cpu_seconds, **options}
    if not time_only:
        quality = metrics.evaluate(samples, dataset)
        row.update({key: quality[key] for key in ("fid", "fid_floor", "kid", "kid_floor",
                                                  "precision", "recall", "memorization",
                                                  "classes_covered")})
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def table(rows: list[dict]) -> list[str]:
    lines = ["| sampler | steps | network calls | time | feature FID (floor) | KID (floor) | "
             "precision | recall |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        quality = (f"{row['fid']:.1f} ({row['fid_floor']:.1f}) | {row['kid']:.0f} "
                   f"({row['kid_floor']:.0f}) | {row['precision']:.2f} | {row['recall']:.2f}"
                   if "fid" in row else "– | – | – | –")
        lines.append(f"| {row['label']} | {row.get('sampling_steps', 1000)} | "
                     f"{row['network_calls']} | {row['seconds']:.1f} s ({row['cpu_seconds']:.1f} "
                     f"s CPU) | {quality} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/results/ddpm-digits/checkpoint.h5")
    parser.add_argument("--n", type=int, default=500, help="samples per sampler")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    parser.add_argument("--spacing", default="leading", help="--timestep-spacing of them all")
    parser.add_argument("--also-trailing", nargs="*", default=["dpm-solver++"], metavar="SAMPLER",
                        help="samplers measured again with trailing spacing")
    parser.add_argument("--no-ancestral", action="store_true", help="skip the 1,000-step row")
    parser.add_argument("--time-only", action="store_true", help="time the samplers only")
    parser.add_argument("--json", default="runs/bench_samplers.json")
    args = parser.parse_args(argv)
    loop, config, step = load_trained(args.checkpoint, DDPMLoop)
    dataset = load_run_data(config)
    print(f"{args.checkpoint}: step {step}, {args.n} samples per row", file=sys.stderr)
    rows = []
    if not args.no_ancestral:
        rows.append(measure(loop, dataset, args.n, "ancestral (DDPM)", config["timesteps"],
                            args.time_only, sampler="ddpm"))
    runs = [(sampler, args.spacing) for sampler in args.samplers]
    runs += [(sampler, "trailing") for sampler in args.also_trailing if args.spacing != "trailing"]
    for sampler, spacing in runs:
        for steps in args.steps:
            label = sampler if spacing == args.spacing else f"{sampler}, {spacing}"
            rows.append(measure(loop, dataset, args.n, label, network_calls(sampler, steps),
                                args.time_only, sampler=sampler, sampling_steps=steps, timestep_spacing=spacing))
            os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
            with open(args.json, "w") as handle:
                json.dump({"checkpoint": args.checkpoint, "step": step, "n": args.n,
                           "load_average": os.getloadavg()[0], "rows": rows}, handle, indent=2)
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
