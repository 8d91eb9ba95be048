"""CoNLL04: the closed-set sentence benchmark (4 entity types, 5 relations)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from hotmem.data.common import _GraphBuilder, _read_json_list, _take
from hotmem.errors import DatasetFormatError
from hotmem.schema import RelationSchema, RelationType
from hotmem.types import Record, Turn

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- CoNLL04

_CONLL04_TYPES = {"Peop": "PERSON", "Loc": "LOCATION", "Org": "ORGANIZATION", "Other": "MISC"}

#: CoNLL04 (Roth & Yih 2004) with its predicate names kept as in the data, so scores compare with published ones.
CONLL04_SCHEMA = RelationSchema(
    name="conll04",
    entity_types=("PERSON", "ORGANIZATION", "LOCATION", "MISC"),
    description="CoNLL04: people, organizations and places in news sentences.",
    relations=(
        RelationType(name="Live_In", description="lives in", head_types=("PERSON",), tail_types=("LOCATION",)),
        RelationType(
            name="OrgBased_In", description="is based in", head_types=("ORGANIZATION",), tail_types=("LOCATION",)
        ),
        RelationType(
            name="Located_In", description="is located in", head_types=("LOCATION",), tail_types=("LOCATION",)
        ),
        RelationType(name="Work_For", description="works for", head_types=("PERSON",), tail_types=("ORGANIZATION",)),
        RelationType(name="Kill", description="killed", head_types=("PERSON",), tail_types=("PERSON",)),
    ),
)

#: Penn Treebank escapes and quote tokens, as printed text.
_PTB = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}", "``": '"', "''": '"'}
_NO_SPACE_BEFORE = frozenset(",.;:?!%)]}")
_NO_SPACE_AFTER = frozenset("([{$")
_CLITIC = re.compile(r"^(?:'[A-Za-z]*|n't)$", re.IGNORECASE)  # 's 't 're 'll n't, and O 'Brien, Sa 'id


def _detokenize(tokens: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Readable text from PTB-style tokens, with each token's character span so entity names are exact substrings.

    Conversation models see prose, not `wasn 't` or `` ` ` He``: "` `" and "' '" become one `"` (the second token
    prints as nothing), a lone "`" opens a single quote, plain `"` alternate between opening and closing.
    """
    n = len(tokens)
    surfaces = [_PTB.get(t, t) for t in tokens]
    role = [""] * n  # "open" / "close" for quote marks
    in_quote, i = False, 0
    while i < n:
        token = tokens[i]
        if token in ("`", "'") and i + 1 < n and tokens[i + 1] == token:
            surfaces[i], surfaces[i + 1] = '"', ""
            role[i] = "open" if token == "`" else "close"
            in_quote, i = token == "`", i + 2
            continue
        if token == "``":
            role[i], in_quote = "open", True
        elif token == "`":  # a lone backtick opens a single quote; the double-quote state is unaffected
            role[i], surfaces[i] = "open", "'"
        elif token == "''":
            role[i], in_quote = "close", False
        elif token == '"':
            role[i], in_quote = ("close" if in_quote else "open"), not in_quote
        i += 1
    text, spans, glue = "", [], True
    for surface, mark in zip(surfaces, role, strict=True):
        attach = glue or surface == "" or mark == "close"
        attach = attach or (mark != "open" and (surface in _NO_SPACE_BEFORE or bool(_CLITIC.match(surface))))
        if not attach:
            text += " "
        spans.append((len(text), len(text) + len(surface)))
        text += surface
        if surface:
            glue = mark == "open" or surface in _NO_SPACE_AFTER
    return text, spans


def load_conll04(path: Path | str, limit: int | None = None) -> list[Record]:
    """CoNLL04 sentences as single-turn records: the standard closed-set benchmark, to compare with published RE.

    Not conversational; it checks that extraction still works on plain prose. `path` is a file or the `conll04`
    folder (= its valid split).
    """
    file, prefix, split, data = _read_json_list(path, "conll04", "sentences")

    def records() -> Iterator[Record]:
        for index, sentence in enumerate(data):
            try:
                text, spans = _detokenize(sentence["tokens"])
                names: dict[tuple[int, int], tuple[str, str]] = {}
                builder = _GraphBuilder()
                for start, end, type_ in sentence["entities"]:
                    name, mapped = text[spans[start][0] : spans[end - 1][1]], _CONLL04_TYPES.get(type_, "MISC")
                    names[(start, end)] = (name, mapped)
                    builder.entity(name, mapped)
                for h_start, h_end, t_start, t_end, predicate in sentence["relations"]:
                    (head, head_type), (tail, tail_type) = names[(h_start, h_end)], names[(t_start, t_end)]
                    builder.relation(head, predicate, tail, head_type, tail_type)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                reason = f"malformed sentence ({type(exc).__name__}: {exc})"
                raise DatasetFormatError(file, reason, item=index) from exc
            turns = [Turn(text=text)]
            yield Record(id=f"{prefix}-{index:04d}", turns=turns, graph=builder.build(), split=split, source="conll04")

    return _take(records(), limit)
