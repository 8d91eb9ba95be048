"""Bad input never crashes hotmem: each case gives a graph or a typed error. Prints one line per case.

    python bench/robustness.py            # uses the embedded model for the real-text cases
"""

import time

import dspy

from hotmem import ExtractionError, GraphExtractor, HotmemError


def case(name, call):
    started = time.perf_counter()
    try:
        result = call()
        outcome = f"graph: {len(result.entities)} entities, {len(result.relations)} relations"
    except HotmemError as exc:
        outcome = f"{type(exc).__name__}: {str(exc)[:110]}"
    print(f"{name:<28} {outcome}  ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    extract = GraphExtractor()
    garbage = dspy.utils.DummyLM([{"references": "not a list {"}] * 5 + [{"statements": "]]"}] * 5)
    case("empty text", lambda: extract(""))
    case("whitespace only", lambda: extract("   \n\t "))
    case("100 KB text", lambda: extract("My sister Anna lives in Oslo. " * 3400))
    case("not text (bytes)", lambda: extract(b"I live in Oslo"))
    case("malformed model output", lambda: GraphExtractor(garbage)("She said her brother lives in Oslo."))
    case("non-English (German)", lambda: extract("Meine Schwester wohnt seit 2019 in München."))
    case("non-English (Japanese)", lambda: extract("私の猫のポトラは五歳です。"))
    case("emoji and markup", lambda: extract("<b>I ❤️ Lisbon</b> 🇵🇹 — moved there in 2021!!!"))
    assert ExtractionError  # the type the malformed case raises
