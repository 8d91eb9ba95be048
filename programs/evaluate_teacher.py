"""Baseline evaluation of the teacher on our gold test split and 100 PersonaExt dev utterances.

    python programs/evaluate_teacher.py [--lm MODEL] [--out runs/baseline]
"""

import argparse
import sys

from hotmem.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lm", default=None)
    parser.add_argument("--out", default="runs/baseline")
    args = parser.parse_args()
    lm = ["--lm", args.lm] if args.lm else []
    status = main(["evaluate", "--dataset", "gold", "--split", "test", "--out", f"{args.out}/gold-test", *lm])
    status = status or main(["evaluate", "--dataset", "personaext", "--limit", "100",
                             "--out", f"{args.out}/personaext-100", *lm])
    sys.exit(status)
