"""Annotated data (pipeline side): the gold set shipped in the package and public research corpora read in place.

Every loader returns `Record`s in one shape (turns + gold `Graph`) with a `RelationSchema` beside it, so the metric,
evaluation, optimisation, labelling and distillation run on our gold data and on DialogRE, PersonaExt, ConvAI2/DNLI
or CoNLL04 alike. The research corpora are licensed for research only: they are read where they lie
(`../shared/data` next to the project, or `$HOTMEM_DATA_DIR`) and never copied into the repository or the package.
"""

from hotmem.data.common import DATA_DIR_ENV, data_root_candidates, find_data_root
from hotmem.data.conll04 import CONLL04_SCHEMA, load_conll04
from hotmem.data.dialogre import DIALOGRE_SCHEMA, load_dialogre
from hotmem.data.dnli import dnli_schema, iter_convai2_utterances, load_convai2
from hotmem.data.gold import load_gold
from hotmem.data.personaext import lenient_json_loads, load_personaext, personaext_schema
from hotmem.data.registry import DATASETS, DatasetSpec, dataset_file, load_dataset, mapped_predicates
from hotmem.errors import DatasetFormatError, DatasetNotFoundError

__all__ = [
    "CONLL04_SCHEMA",
    "DATASETS",
    "DATA_DIR_ENV",
    "DIALOGRE_SCHEMA",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "data_root_candidates",
    "dataset_file",
    "dnli_schema",
    "find_data_root",
    "iter_convai2_utterances",
    "lenient_json_loads",
    "load_conll04",
    "load_convai2",
    "load_dataset",
    "load_dialogre",
    "load_gold",
    "load_personaext",
    "mapped_predicates",
    "personaext_schema",
]
