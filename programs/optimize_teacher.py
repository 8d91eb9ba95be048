"""Optimize the teacher with GEPA on our gold data and save it under optimized/teacher.

    python programs/optimize_teacher.py --budget 150            # any `hotmem optimize` flag works

Defaults: the embedded 0.5B as task LM, the 1.5B GGUF from PyPI as reflection LM, gold train/dev.
"""

import sys

from hotmem.cli import main

if __name__ == "__main__":
    sys.exit(main(["optimize", *sys.argv[1:]]))
