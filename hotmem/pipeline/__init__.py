"""The pipeline that makes the runtime better: score (`metric`), measure (`evaluate`), optimize the teacher with GEPA
(`optimize`), label a corpus with it (`label`) and distil the labels into a student (`distill`).

It imports the runtime; the runtime never imports it.
"""
