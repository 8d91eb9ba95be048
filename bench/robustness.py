"""Bad input never crashes hotmem: each case gives a graph or the typed error it should. One line per case; the exit
status is the number of cases whose outcome was not the expected one.

    python bench/robustness.py            # the default backend for the real-text cases
"""

import sys
import time

import dspy

from hotmem import ExtractionError, Graph, GraphExtractor, HotmemError, InvalidInputError


def case(name: str, call, expected: type) -> bool:
    """Run one case; True when it ended as `expected` (`Graph`, or an error class)."""
    started = time.perf_counter()
    try:
        result = call()
        outcome, got = f"graph: {len(result.entities)} entities, {len(result.relations)} relations", type(result)
    except HotmemError as exc:
        outcome, got = f"{type(exc).__name__}: {str(exc)[:100]}", type(exc)
    ok = issubclass(got, expected)
    print(f"{'ok ' if ok else 'BAD'} {name:<26} {outcome}  ({time.perf_counter() - started:.1f} s)")
    return ok


if __name__ == "__main__":
    extract = GraphExtractor()
    garbage = dspy.utils.DummyLM([{"references": "not a list {"}] * 5 + [{"statements": "]]"}] * 5)
    results = [
        case("empty text", lambda: extract(""), Graph),
        case("whitespace only", lambda: extract("   \n\t "), Graph),
        case("100 KB text", lambda: extract("My sister Anna lives in Oslo. " * 3400), InvalidInputError),
        case("not text (bytes)", lambda: extract(b"I live in Oslo"), InvalidInputError),
        case("lone surrogate", lambda: extract("I live in Oslo \ud800"), InvalidInputError),
        case("malformed model output", lambda: GraphExtractor(garbage)("She said her brother lives in Oslo."),
             ExtractionError),
        case("non-English (German)", lambda: extract("Meine Schwester wohnt seit 2019 in München."), Graph),
        case("non-English (Japanese)", lambda: extract("私の猫のポトラは五歳です。"), Graph),
        case("emoji and markup", lambda: extract("<b>I ❤️ Lisbon</b> 🇵🇹 — moved there in 2021!!!"), Graph),
    ]
    sys.exit(results.count(False))
