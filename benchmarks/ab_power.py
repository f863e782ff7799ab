"""A/A false-positive rate and power of the A/B tests under sticky routing, key-level against per-record.

    .venv/bin/python -m benchmarks.ab_power [--seeds 1000] [--bootstrap-seeds 200] [--resamples 200]
        [--keys 200] [--alpha 0.05] [--power 0.8]

1. for records per key 1, 5, 10 and 20 (each key ``1 + Poisson(m - 1)`` records; half the
   variance of the continuous metric between keys; a per-key error propensity Beta of mean 10 %
   and concentration 2), draws ``--seeds`` A/A splits of ``--keys`` keys per arm
   (``monitoring/ab_simulation.py``) and prints how often each test rejects at ``--alpha``: the
   per-record tests the job used to run (Welch, two proportions, Mann-Whitney on records) and
   the key-level ones it runs now (cluster-robust t on the mean and the rate, Mann-Whitney on
   key means);
2. the bootstrap of the median, resampling records against resampling keys, over
   ``--bootstrap-seeds`` A/A splits at 10 records per key;
3. at 10 records per key, the minimum detectable effects the job would state (averaged over 50
   pilot A/A draws) planted in ``--seeds`` fresh splits: the share detected, against ``--power``.

Each figure is a share of seeded runs; its binomial standard error is printed beside it.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy.stats import norm

from lakeserve.monitoring import ab
from lakeserve.monitoring.ab_simulation import Design, draw, rejection_rates, stated_mde

SHOWN = [
    ("welch_records", "Welch t, records"),
    ("z_records", "two-proportion z, records"),
    ("mann_whitney_records", "Mann-Whitney, records"),
    ("cluster_t_mean", "cluster-robust t, mean"),
    ("cluster_t_rate", "cluster-robust t, rate"),
    ("mann_whitney_keys", "Mann-Whitney, key means"),
]


def main() -> None:
    args = _args()
    began = time.monotonic()
    se = math.sqrt(args.alpha * (1 - args.alpha) / args.seeds)
    print(f"A/A false-positive rate at alpha {args.alpha} over {args.seeds} seeds, {args.keys} keys per arm "
          f"(binomial SE at alpha: {100 * se:.1f} pp)")
    sizes = (1, 5, 10, 20)
    table = {m: rejection_rates(Design(keys=args.keys, records_per_key=m), range(args.seeds), args.alpha, args.power)
             for m in sizes}
    print(f"| test | {' | '.join(f'{m} rec/key' for m in sizes)} |")
    print(f"|---|{'---|' * len(sizes)}")
    for name, label in SHOWN:
        print(f"| {label} | " + " | ".join(f"{100 * table[m][name]:.1f} %" for m in sizes) + " |")
    _bootstrap(args)
    _power(args)
    print(f"({time.monotonic() - began:.0f} s)")


def _bootstrap(args: argparse.Namespace) -> None:
    design = Design(keys=args.keys)
    rates = rejection_rates(design, range(args.bootstrap_seeds), args.alpha, args.power, resamples=args.resamples)
    records = 0
    for seed in range(args.bootstrap_seeds):
        rng = np.random.default_rng(seed)
        c, t = draw(design, rng), draw(design, rng)
        records += ab.bootstrap_diff(c.value, t.value, np.median, args.resamples, args.alpha, rng)[2] < args.alpha
    se = math.sqrt(args.alpha * (1 - args.alpha) / args.bootstrap_seeds)
    print(f"\nbootstrap of the median, A/A over {args.bootstrap_seeds} seeds, {args.resamples} resamples, "
          f"10 rec/key (SE {100 * se:.1f} pp): records resampled {100 * records / args.bootstrap_seeds:.1f} %, "
          f"keys resampled {100 * rates['cluster_bootstrap_median']:.1f} %")


def _power(args: argparse.Namespace) -> None:
    design = Design(keys=args.keys)
    mean_mde, rate_mde = stated_mde(design, args.alpha, args.power, range(10_000, 10_050))
    rates = rejection_rates(design, range(args.seeds), args.alpha, args.power, shift=mean_mde, rate_shift=rate_mde)
    se = math.sqrt(args.power * (1 - args.power) / args.seeds)
    sd = math.hypot(design.key_sd, design.record_sd)
    print(f"\npower at the stated MDE (10 rec/key, {args.seeds} seeds, target {100 * args.power:.0f} %, "
          f"SE {100 * se:.1f} pp): mean shift {mean_mde:.3f} (record sd {sd:.2f}) detected "
          f"{100 * rates['cluster_t_mean']:.1f} % "
          f"(Mann-Whitney on key means {100 * rates['mann_whitney_keys']:.1f} %); "
          f"rate +{100 * rate_mde:.2f} pp from {100 * design.rate:.0f} % "
          f"detected {100 * rates['cluster_t_rate']:.1f} %")
    z = float(norm.ppf(1 - args.alpha / 2) + norm.ppf(args.power))
    naive = z * math.sqrt(2 * (design.key_sd**2 + design.record_sd**2) / (design.keys * design.records_per_key))
    print(f"  (a per-record calculation would state an MDE of {naive:.3f} for the mean, "
          f"{mean_mde / naive:.1f}x too small)")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=1000)
    p.add_argument("--bootstrap-seeds", type=int, default=200)
    p.add_argument("--resamples", type=int, default=200)
    p.add_argument("--keys", type=int, default=200, help="keys per arm")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--power", type=float, default=0.8)
    return p.parse_args()


if __name__ == "__main__":
    main()
