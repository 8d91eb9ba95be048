"""Data sets by name: `load_dataset("gold", split="test")` gives records and the schema they are scored with."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from hotmem.data.common import _check_limit, _split_name, _take, data_root_candidates, find_data_root
from hotmem.data.conll04 import CONLL04_SCHEMA, load_conll04
from hotmem.data.dialogre import DIALOGRE_SCHEMA, load_dialogre
from hotmem.data.dnli import dnli_schema, load_convai2
from hotmem.data.gold import load_gold
from hotmem.data.personaext import load_personaext, personaext_schema
from hotmem.errors import DatasetNotFoundError, InvalidInputError
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.types import Record

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- registry


def _constant(schema: RelationSchema) -> Callable[[Path], RelationSchema]:
    return lambda _path: schema


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, load and describe one data set; `load_dataset` needs nothing else."""

    name: str
    loader: Callable[..., list[Record]]  # (path, limit=None) -> records
    schema: Callable[[Path], RelationSchema]  # data set folder or file -> its relation schema
    relative_path: str  # folder under the data root ("" for the packaged gold set)
    files: Mapping[str, str] = field(default_factory=dict)  # split name -> file inside the folder
    default_split: str = ""
    #: The corpus whose shipped alignment maps this one's predicates (`<name>-conversation`): its own by default.
    #: ConvAI2's DNLI triples carry the relation names PersonaExt re-annotated them with: PersonaExt's map reads them.
    alignment: str = ""

    @property
    def alignment_source(self) -> str:
        return self.alignment or self.name


def _load_gold_dataset(
    path: Path | str | None = None, limit: int | None = None, split: str | None = None
) -> list[Record]:
    """The gold set in the registry's loader shape; `path` is another folder of gold-format files."""
    if path is not None and not Path(path).is_dir():
        raise DatasetNotFoundError("gold folder", [Path(path)], "pass a folder of gold *.jsonl files, or no path")
    records = load_gold(split=split, directory=Path(path) if path is not None else None)
    return _take(records, limit)


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType(
    {
        "gold": DatasetSpec("gold", _load_gold_dataset, _constant(CONVERSATION_SCHEMA), ""),
        "personaext": DatasetSpec(
            "personaext", load_personaext, personaext_schema, "personaext", {"dev": "dev.jsonl"}, "dev"
        ),
        "dialogre": DatasetSpec(
            "dialogre",
            load_dialogre,
            _constant(DIALOGRE_SCHEMA),
            "dialogre",
            {"dev": "v2_en/dev.json", "train": "v2_en/train.json"},
            "dev",
        ),
        "convai2": DatasetSpec(
            "convai2",
            load_convai2,
            dnli_schema,
            "convai2_dnli",
            {"valid": "valid_dialogueNLI.txt", "dev": "valid_dialogueNLI.txt"},
            "valid",
            alignment="personaext",
        ),
        "conll04": DatasetSpec(
            "conll04",
            load_conll04,
            _constant(CONLL04_SCHEMA),
            "conll04",
            {"valid": "valid.CoNLL04.json", "dev": "valid.CoNLL04.json", "train": "train.CoNLL04.json"},
            "valid",
        ),
    }
)


#: `<corpus>-conversation`: a corpus read through its shipped map onto the conversation schema (`_load_mapped`).
MAPPED_SUFFIX = "-conversation"


def load_dataset(
    name: str, path: Path | str | None = None, split: str | None = None, limit: int | None = None, skip: int = 0
) -> tuple[list[Record], RelationSchema]:
    """Records and the schema to extract them with, for any registered data set, in one call.

    `path=None` looks under the data root (see `data_root_candidates`); a folder means the data set's folder, a
    file is read as is. `split` picks dev/train for DialogRE, valid/train for CoNLL04, and filters the gold set.
    `skip` and `limit` pick records `skip` to `skip + limit` of the data set as it lies.
    `<corpus>-conversation` (`personaext-conversation`, ...) reads a corpus through its shipped schema alignment.
    """
    _check_limit(limit)
    if skip < 0:
        raise InvalidInputError(f"skip must be 0 or more, not {skip}")
    end = None if limit is None else skip + limit
    if name.endswith(MAPPED_SUFFIX) and name not in DATASETS:
        return _load_mapped(name.removesuffix(MAPPED_SUFFIX), path, split, skip, limit)
    spec = _spec(name)
    if name == "gold":
        return _load_gold_dataset(path, limit=end, split=split)[skip:], spec.schema(Path())
    path = dataset_file(name, path, split)
    return spec.loader(path, limit=end)[skip:], spec.schema(path)


def _load_mapped(
    corpus: str, path: Path | str | None, split: str | None, skip: int, limit: int | None
) -> tuple[list[Record], RelationSchema]:
    """A corpus's records mapped onto the conversation schema by its shipped alignment (`hotmem.alignment`).

    Only records whose every triple maps are kept (one with an unmapped fact would score a right answer as spurious);
    `skip` and `limit` count the corpus's own records, so `personaext-conversation` with `limit=1000` is the PersonaExt
    evaluation slice mapped. The schema is the whole conversation schema, so a program made for it runs as an app
    runs it; the corpus annotates only the predicates the map produces, so each record scores only those
    (`Record.scored_predicates`).
    """
    from collections import Counter

    from hotmem.alignment import SchemaAlignment

    mapped_sets = mapped_corpora()
    if corpus not in mapped_sets:
        raise InvalidInputError(f"no shipped alignment maps {corpus!r} onto the conversation schema; "
                                f"mapped data sets: {[c + MAPPED_SUFFIX for c in mapped_sets]}")
    records, _ = load_dataset(corpus, path=path, split=split, limit=limit, skip=skip)
    alignment = SchemaAlignment.load(DATASETS[corpus].alignment_source)
    annotated = list(mapped_predicates(corpus, path, split))
    mapped, tally = [], Counter()
    for record in records:
        outcomes = Counter()
        graph = alignment.map_graph(record.graph, tally=outcomes)
        tally.update(outcomes)
        if not outcomes["unmapped"] and not outcomes["invalid"]:
            mapped.append(record.model_copy(update={"graph": graph, "scored_predicates": annotated}))
    logger.info("%s mapped onto %s: %d of %d records kept (every triple maps); %d of %d triples kept", corpus,
                alignment.target, len(mapped), len(records), tally["kept"], tally["triples"])
    return mapped, CONVERSATION_SCHEMA


def mapped_predicates(corpus: str, path: Path | str | None = None, split: str | None = None) -> tuple[str, ...]:
    """The conversation-schema predicates `<corpus>-conversation` annotates: those the triples of the corpus's data
    file (of `split`) map to by its shipped alignment (`SchemaAlignment.produces`), not every predicate the map
    could produce: a predicate no line is ever annotated with must not score a right answer as spurious, nor be
    taught absent."""
    file = dataset_file(corpus, path, split)
    return _mapped_predicates(corpus, str(file), split, file.stat().st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _mapped_predicates(corpus: str, file: str, split: str | None, _modified: int) -> tuple[str, ...]:
    from hotmem.alignment import SchemaAlignment

    records, _ = load_dataset(corpus, path=file, split=split)
    return SchemaAlignment.load(_spec(corpus).alignment_source).produces(
        r.predicate for record in records for r in record.graph.relations)


def mapped_corpora() -> tuple[str, ...]:
    """The registered corpora a shipped alignment maps onto the conversation schema: `<corpus>-conversation`."""
    from hotmem.alignment import shipped_alignments

    shipped = shipped_alignments()
    return tuple(name for name, spec in DATASETS.items() if spec.relative_path and spec.alignment_source in shipped)


def _spec(name: str) -> DatasetSpec:
    spec = DATASETS.get(name)
    if spec is None:
        raise InvalidInputError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    return spec


def dataset_file(name: str, path: Path | str | None = None, split: str | None = None) -> Path:
    """The data file of a registered data set (not the packaged gold set): `path=None` looks under the data root,
    a folder means the data set's folder, a file is taken as is."""
    spec = _spec(name)
    if not spec.relative_path:
        raise InvalidInputError(f"{name!r} is packaged with hotmem, not a data file")
    if path is None:
        root = find_data_root()
        if root is None:
            raise DatasetNotFoundError(f"data root for {name!r}", data_root_candidates())
        path = root / spec.relative_path
    path = Path(path)
    if path.is_dir():
        path = path / spec.files[_split_name(spec, split)]
    elif split is not None and path.is_file():
        _split_name(spec, split)  # still reject a split the data set does not have
    if not path.exists():
        raise DatasetNotFoundError(f"{name} data set", [path])
    return path
