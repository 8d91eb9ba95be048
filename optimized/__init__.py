"""Saved program states and small artifacts hotmem uses by default (installed as `hotmem.optimized`).

`teacher/`: the GEPA-optimized teacher `GraphExtractor()` loads when its schema fits, with its run report.
"""
