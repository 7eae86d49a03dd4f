"""Entry point of each training process: ``accelerate launch -m relightflow.train --job JOB.json``."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relightflow.train", description=__doc__)
    parser.add_argument("--job", required=True, help="job file written by relightflow.train.launch (JSON)")
    args = parser.parse_args(argv)
    # no timestamp: the launcher relays these lines into the rule's log, which adds its own
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from relightflow.train.launch import run_job

    run_job(args.job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
