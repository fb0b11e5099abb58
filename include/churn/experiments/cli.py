"""``python -m churn.experiments.cli check <file>``: validate an experiments file and show what it will do."""

from __future__ import annotations

import argparse
import sys

from churn.experiments.assignment import arm_bounds, bucket, sample_size_per_arm
from churn.experiments.definitions import ExperimentsError, load_experiments


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser (also read by the docs' CLI reference)."""
    parser = argparse.ArgumentParser(prog="python -m churn.experiments.cli",
                                     description="Validate an experiments file (CHURN_EXPERIMENTS_FILE) and show "
                                                 "its arms, shares and sample sizes; or compute a customer's bucket.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate the file; exit 2 with the line and the fix when it is malformed")
    check.add_argument("file")
    check.add_argument("--base-rate", type=float, default=0.05,
                       help="churn rate over the label window, for the sample size of minimum_detectable_effect")
    one = sub.add_parser("bucket", help="the bucket (0-9999) of a customer in an experiment (sha256-64/10000)")
    one.add_argument("experiment_id")
    one.add_argument("salt")
    one.add_argument("customer_id")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; 0 = valid, 2 = malformed file."""
    args = build_parser().parse_args(argv)
    if args.command == "bucket":
        print(bucket(args.experiment_id, args.salt, args.customer_id))
        return 0
    try:
        experiments = load_experiments(args.file)
    except ExperimentsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for exp in experiments.experiments:
        dates = f"{exp.start} .. {exp.end or 'open'}"
        print(f"{exp.id} (line {exp.line}): {dates}, layer {exp.layer or '-'}, traffic {exp.traffic[0]:g}-"
              f"{exp.traffic[1]:g} %")
        for arm, (_, low, high) in zip(exp.arms, arm_bounds(exp)):
            print(f"  {arm.name:<16} {(high - low) / 100:6.2f} %  buckets {low}-{high - 1}  model {arm.model}"
                  f"{'' if arm.contact else '  holdout (never exported)'}")
        if exp.minimum_detectable_effect:
            need = sample_size_per_arm(args.base_rate, exp.minimum_detectable_effect)
            print(f"  sample size: {need:,} customers per arm to detect {exp.minimum_detectable_effect:g} at a "
                  f"{args.base_rate:g} churn rate (alpha 0.05, power 0.8)")
    print(f"{len(experiments.experiments)} experiment(s) valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
