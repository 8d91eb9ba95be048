"""DialogRE v2 (English): multi-party Friends dialogues, relations between annotated argument pairs."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hotmem.data.common import _GraphBuilder, _read_json_list, _take
from hotmem.errors import DatasetFormatError
from hotmem.schema import RelationSchema, relation_type
from hotmem.types import Graph, Record, Turn

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- DialogRE

_DIALOGRE_TYPES = {"PER": "PERSON", "ORG": "ORGANIZATION", "GPE": "LOCATION", "VALUE": "QUANTITY", "STRING": "MISC"}
_DIALOGRE_TURN = re.compile(r"^(?P<speaker>Speaker \d+(?:\s*,\s*Speaker \d+)*)\s*:\s?(?P<text>.*)$", re.DOTALL)
_UNANSWERABLE = "unanswerable"


_dr = relation_type  # DialogRE relations have no category


_P, _IMPRESSION = "PERSON", "PERSON ORGANIZATION LOCATION MISC"

#: DialogRE's 36 relations (TAC-KBP style: `per:parents(x, y)` = y is a parent of x). Endpoint types are those the
#: v2_en data uses, mapped to hotmem's names.
DIALOGRE_SCHEMA = RelationSchema(
    name="dialogre",
    entity_types=("PERSON", "ORGANIZATION", "LOCATION", "QUANTITY", "MISC"),
    description="DialogRE (Yu et al. 2020): relations between arguments in Friends dialogues.",
    relations=(
        _dr("per:positive_impression", "likes or thinks well of", _P, _IMPRESSION),
        _dr("per:negative_impression", "dislikes or thinks badly of", _P, _IMPRESSION),
        _dr("per:acquaintance", "knows casually", _P, _P, symmetric=True),
        _dr("per:alumni", "went to the same school or class as", _P, _P, symmetric=True),
        _dr("per:boss", "has this person as boss", _P, _P, inverse="per:subordinate"),
        _dr("per:subordinate", "has this person working under them", _P, _P, inverse="per:boss"),
        _dr("per:client", "has this person as a client or customer", _P, _P),
        _dr("per:dates", "goes on dates with", _P, _P),
        _dr("per:friends", "is a friend of", _P, _P, symmetric=True),
        _dr("per:girl/boyfriend", "is the girlfriend or boyfriend of", _P, _P, symmetric=True),
        _dr("per:neighbor", "lives next to", _P, _P, symmetric=True),
        _dr("per:roommate", "shares a home with", _P, _P, symmetric=True),
        _dr("per:children", "has this person as a child", _P, _P, inverse="per:parents"),
        _dr("per:other_family", "is other family (cousin, in-law, grandparent) of", _P, _P, symmetric=True),
        _dr("per:parents", "has this person as a parent", _P, _P, inverse="per:children"),
        _dr("per:siblings", "is a brother or sister of", _P, _P, symmetric=True),
        _dr("per:spouse", "is married to", _P, _P, symmetric=True),
        _dr("per:place_of_residence", "lives in", _P, "LOCATION", inverse="gpe:residents_of_place"),
        _dr("per:place_of_birth", "was born in", _P, "LOCATION", inverse="gpe:births_in_place"),
        _dr("per:visited_place", "visited or travelled to", _P, "LOCATION", inverse="gpe:visitors_of_place"),
        _dr("per:origin", "comes from (nationality, ethnicity or place)", _P, "PERSON LOCATION MISC"),
        _dr("per:employee_or_member_of", "works for or belongs to", _P, "ORGANIZATION",
            inverse="org:employees_or_members"),
        _dr("per:schools_attended", "studied at", _P, "ORGANIZATION", inverse="org:students"),
        _dr("per:works", "made or works on (a show, film, song)", _P, "MISC"),
        _dr("per:age", "is this old", _P, "QUANTITY"),
        _dr("per:date_of_birth", "was born on", _P, "QUANTITY"),
        _dr("per:major", "studies this subject", _P, "MISC"),
        _dr("per:place_of_work", "works at this place", _P, "MISC"),
        _dr("per:title", "has this title, job or role", _P, "MISC"),
        _dr("per:alternate_names", "is also called (name or nickname; links a speaker to a name)", _P, "PERSON MISC"),
        _dr("per:pet", "has this pet", _P, "PERSON MISC"),
        _dr("gpe:residents_of_place", "is where this person lives", "LOCATION", _P, inverse="per:place_of_residence"),
        _dr("gpe:births_in_place", "is where this person was born", "LOCATION", _P, inverse="per:place_of_birth"),
        _dr("gpe:visitors_of_place", "was visited by", "LOCATION", _P, inverse="per:visited_place"),
        _dr("org:employees_or_members", "has this person as employee or member", "ORGANIZATION", _P,
            inverse="per:employee_or_member_of"),
        _dr("org:students", "has this person as a student", "ORGANIZATION", _P, inverse="per:schools_attended"),
    ),
)


def _dialogre_turn(line: str) -> Turn:
    """`Speaker 2: text` -> Turn("Speaker 2", text); lines said in chorus keep the joint "Speaker 1, Speaker 2"."""
    match = _DIALOGRE_TURN.match(line)
    return Turn(speaker=match["speaker"], text=match["text"]) if match else Turn(text=line)


def _dialogre_graph(instances: Sequence[Mapping[str, Any]], file: Path, item: int) -> Graph:
    builder = _GraphBuilder(DIALOGRE_SCHEMA)  # a fact labelled both ways is one fact
    for instance in instances:
        try:
            x, y, labels = instance["x"], instance["y"], instance["r"]
            x_type = _DIALOGRE_TYPES.get(instance.get("x_type", ""), "MISC")
            y_type = _DIALOGRE_TYPES.get(instance.get("y_type", ""), "MISC")
        except (KeyError, TypeError, AttributeError) as exc:
            raise DatasetFormatError(file, f"instance without x/y/r: {instance!r}", item=item) from exc
        builder.entity(x, x_type)
        builder.entity(y, y_type)
        for label in labels:
            if label != _UNANSWERABLE:
                builder.relation(x, label, y, x_type, y_type)
    return builder.build()


def load_dialogre(path: Path | str, limit: int | None = None) -> list[Record]:
    """DialogRE v2 (English) dialogues, one multi-party record each: the closest public match to hotmem's task.

    `path` is a dev/train JSON file or the `dialogre` folder (= its dev split). Entities are every annotated
    argument, including those of `unanswerable` pairs (they are annotated mentions, just without a relation).
    """
    file, prefix, split, data = _read_json_list(path, "dialogre", "dialogues")

    def records() -> Iterator[Record]:
        for index, dialogue in enumerate(data):
            if not (isinstance(dialogue, list) and len(dialogue) == 2):
                raise DatasetFormatError(file, "expected [turns, instances]", item=index)
            lines, instances = dialogue
            yield Record(
                id=f"{prefix}-{index:04d}",
                turns=[_dialogre_turn(line) for line in lines],
                graph=_dialogre_graph(instances, file, index),
                split=split,
                source="dialogre",
                # relation classification data: only the annotated argument pairs carry labels
                scored_pairs=list(dict.fromkeys((i["x"], i["y"]) for i in instances)),
            )

    return _take(records(), limit)
