"""Saved program states and small artifacts hotmem uses by default (installed as `hotmem.optimized`).

`teacher/`: the GEPA-optimized teacher `GraphExtractor()` loads when its schema fits, with its run report.
`student/`: the distilled student `GraphExtractor()` runs by default (a LoRA GGUF for the embedded 0.5B), with its
training manifest and evaluation report.
"""
