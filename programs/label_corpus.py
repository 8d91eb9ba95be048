"""Label real conversation with the (optimized) teacher into a `datasets.Dataset` for distillation. Resumable:
run it again after an interruption and it continues where it stopped.

    python programs/label_corpus.py [--source convai2] [--limit 1200] [--out runs/labels] [--lm MODEL]
"""

import argparse
import sys

from hotmem.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", default="convai2", help="convai2, dialogre, or a .txt/.jsonl file")
    parser.add_argument("--limit", default="1200")
    parser.add_argument("--out", default="runs/labels")
    parser.add_argument("--lm", default=None)
    args = parser.parse_args()
    lm = ["--lm", args.lm] if args.lm else []
    sys.exit(main(["-v", "label", args.source, "--limit", args.limit, "--out", args.out, *lm]))
