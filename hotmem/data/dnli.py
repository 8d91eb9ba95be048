"""ConvAI2 dialogues with Dialogue-NLI triples (persona lines and utterances), and the DNLI schema."""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hotmem.data.common import _id_prefix, _iter_lines, _resolve_file, _schema_from_relations, _take
from hotmem.data.personaext import (
    _check_triple,
    _dnli_graph,
    _is_placeholder,
    _personaext_schema_relations,
    _tail_types,
    _with_unseen,
)
from hotmem.errors import DatasetFormatError
from hotmem.schema import RelationSchema
from hotmem.types import Record, Turn

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- ConvAI2 with DNLI triples

_PERSONA_LINE = re.compile(r"^(?P<who>your|partner's) persona:\s*(?P<text>.*)$")


@dataclass(frozen=True)
class _ConvLine:
    dialogue: int  # 1-based dialogue number in the file
    kind: str  # "your" / "partner's" persona line, or "utterance"
    number: int  # persona line number within the dialogue, or the utterance's own number
    text: str
    triples: list[tuple[str, str, str]]


def _iter_convai2(file: Path) -> Iterator[_ConvLine]:
    """ParlAI "both_original" lines. A dialogue starts at a persona line that follows an utterance (or the file)."""
    dialogue, persona_number, previous = 0, 0, "utterance"
    for number, line in _iter_lines(file):
        head, *rest = line.split("\t")
        persona = _PERSONA_LINE.match(head)
        if persona:
            if previous == "utterance":
                dialogue, persona_number = dialogue + 1, 0
            persona_number += 1
            kind, position, text, raw_triples = persona["who"], persona_number, persona["text"], rest
        elif head.strip().isdigit() and rest:
            if dialogue == 0:
                raise DatasetFormatError(file, "utterance before any persona line", line=number)
            kind, position, text, raw_triples = "utterance", int(head), rest[0], rest[1:]
        else:
            raise DatasetFormatError(file, "neither a persona line nor a numbered utterance", line=number)
        previous = "utterance" if kind == "utterance" else "persona"
        triples = []
        for raw in raw_triples:
            try:
                value = ast.literal_eval(raw.strip())
            except (ValueError, SyntaxError) as exc:
                raise DatasetFormatError(file, f"cannot read triple {raw!r}: {exc}", line=number) from exc
            triples.append(_check_triple(value, file, number))
        yield _ConvLine(dialogue, kind, position, text.strip(), triples)


def iter_convai2_utterances(path: Path | str) -> Iterator[str]:
    """Every utterance of the ConvAI2 file, labelled or not: real two-party chat to label with the teacher later.

    Persona lines are left out: they are scripted profile sentences, not conversation.
    """
    for line in _iter_convai2(_resolve_file(path, "convai2")):
        if line.kind == "utterance":
            yield line.text


def load_convai2(path: Path | str, limit: int | None = None, labeled_only: bool = True) -> list[Record]:
    """ConvAI2 persona lines and utterances with their DNLI triples, one single-turn record each (speaker unnamed).

    Records are per line, not per dialogue, because the triples are attached to single lines and the two partners
    are not named. With `labeled_only`, lines whose triples are all placeholders (or absent) are skipped.
    Tail types are PersonaExt's when its schema.json is beside this data set (see `dnli_schema`).
    """
    file = _resolve_file(path, "convai2")
    prefix, split = _id_prefix("convai2", file)
    tail_types = _tail_types(_personaext_schema_relations(_personaext_folder(file)))

    def records() -> Iterator[Record]:
        for line in _iter_convai2(file):
            graph = _dnli_graph(line.triples, tail_types)
            if labeled_only and not graph.relations:
                continue
            tag = f"u{line.number:02d}" if line.kind == "utterance" else f"{line.kind[0]}{line.number:02d}"
            yield Record(
                id=f"{prefix}-{line.dialogue:04d}-{tag}",
                turns=[Turn(text=line.text)],
                graph=graph,
                split=split,
                source="convai2",
            )

    return _take(records(), limit)


def _personaext_folder(convai2_file: Path) -> Path:
    """PersonaExt sits next to ConvAI2 in the data root (`<root>/convai2_dnli/...` -> `<root>/personaext`)."""
    from hotmem.data.registry import DATASETS  # the registry imports every loader

    return convai2_file.parent.parent / DATASETS["personaext"].relative_path


def dnli_schema(path: Path | str, personaext_path: Path | str | None = None) -> RelationSchema:
    """Relations the ConvAI2/DNLI file actually uses, described with PersonaExt's schema where the names overlap.

    PersonaExt re-annotates these very DNLI triples with the same relation names, so reusing its display names and
    object types gives the two corpora one vocabulary; only DNLI's extras (e.g. not_have) get a name-derived
    description and any tail. The predicates are always exactly the names seen in the data (placeholders dropped),
    (a name used only with a `<blank>` object names no fact), so the schema's predicates do not change when
    PersonaExt is absent; only its descriptions and tail types get plainer.
    `personaext_path` defaults to the `personaext` folder beside this data set.
    """
    file = _resolve_file(path, "convai2")
    folder = Path(personaext_path) if personaext_path is not None else _personaext_folder(file)
    folder = folder if folder.is_dir() else folder.parent
    known = _personaext_schema_relations(folder)
    names = sorted({t[1] for line in _iter_convai2(file) for t in line.triples if not _is_placeholder(t)})
    relations = _with_unseen({n: known[n] for n in names if n in known}, names)
    return _schema_from_relations(
        "convai2-dnli", relations, "Dialogue-NLI persona triples on ConvAI2 utterances (Welleck et al. 2019)."
    )
