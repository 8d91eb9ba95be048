"""The student's supervision as a declared mixture: every source in its own schema, with its size and licence.

A mixture file names the sources and how much of each to take:

    {"sources": [{"name": "gold", "repeats": 3}, {"name": "personaext", "limit": 3000},
                 {"name": "personaext-conversation", "limit": 3000}, {"name": "convai2", "limit": 2000},
                 {"name": "dialogre"}, {"name": "conll04"}, {"name": "labels", "path": "runs/labels"}],
     "negatives": 8, "whole_schema_rate": 0.1, "seed": 0}

A corpus mapped onto the conversation schema (`personaext-conversation`, `dialogre-conversation`,
`conll04-conversation`, by the maps in `hotmem/alignments/<corpus>/`) comes with the part of the schema its map
produces: the corpus does not annotate the other predicates, so they are never shown as absent.

Each example shows the student the predicates it may use, as GLiNER- and NuExtract-style models are trained: the
example's own predicates plus `negatives` random others from its schema, shuffled, or (with probability
`whole_schema_rate`) the whole schema, so the student learns to read the list rather than memorise one schema.
With `examples_per_prompt` > 1, examples that show the same whole schema share one chat (`share_prompts`): the
schema listing is 87% of the characters of `corpora-more-6`'s rows, and shared by 8 it costs 157 tokens an example
instead of 400.
A stage trained on from an earlier one (`hotmem distill --init-from`) draws what the earlier stages did not with
`"skip": "continue"`: past every record they drew from that source in the same pass (`Mixture.after`).
Evaluation slices never enter: gold dev and test, PersonaExt lines 1-1,000 (and 1,001-2,000, GEPA's validation),
DialogRE dev, CoNLL04 valid, and any ConvAI2 text that is also in PersonaExt's evaluation slice.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from hotmem.assemble import chunk_turns
from hotmem.errors import ConfigurationError, DistillError, InvalidInputError
from hotmem.io import write_atomic
from hotmem.names import is_grounded
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.students.format import check_answer_format, graph_to_target, schema_prompt, student_messages
from hotmem.types import Graph, Record, Turn, speakers_of

__all__ = ["CONTINUE", "MIXTURES", "SOURCES", "Mixture", "MixtureSource", "base_id", "build_examples", "draw",
           "drawn_record_ids", "earlier_stage", "earlier_stages_for_card", "example_rows", "mixture_name", "model_card",
           "sft_example", "share_prompts", "shown_predicates", "source_report", "stage_ancestors", "training_seconds"]

#: Mixtures shipped with hotmem, by name (`hotmem distill --mixture default`).
MIXTURES = Path(__file__).with_name("mixtures")
#: `MixtureSource.skip` of a source that continues where the earlier stages stopped
CONTINUE = "continue"
#: PersonaExt lines kept out of training: 1-1,000 are its evaluation slice, 1,001-2,000 GEPA's validation set.
PERSONAEXT_HELD_OUT = 2000


@dataclass(frozen=True)
class Source:
    """A kind of supervision the mixture can draw from."""

    name: str
    description: str
    licence: str
    read: Callable[[str | None], Iterator[tuple[Record, RelationSchema]]]


def _gold(path: str | None):
    from hotmem.data import load_gold

    for record in load_gold(split="train"):  # dev and test stay held out
        yield record, CONVERSATION_SCHEMA


def _personaext_train(path: str | None):
    from hotmem.data import dataset_file, load_personaext, personaext_schema

    file = dataset_file("personaext", path)
    schema = personaext_schema(file)
    for record in load_personaext(file)[PERSONAEXT_HELD_OUT:]:
        yield record, schema


def _personaext(path: str | None):
    for record, schema in _personaext_train(path):
        if record.graph.relations:
            yield record, schema


def _mapped(corpus: str, read: Callable[[str | None], Iterator[tuple[Record, RelationSchema]]],
            split: str | None = None):
    """A corpus's training records (its `split` file) mapped onto the conversation schema by its shipped alignment,
    each with the part of the schema the corpus's triples map to (`mapped_predicates`): it annotates only those, so
    only they may be taught absent."""
    from hotmem.alignment import SchemaAlignment
    from hotmem.data import DATASETS, mapped_predicates

    def mapped(path: str | None):
        alignment = SchemaAlignment.load(DATASETS[corpus].alignment_source)
        annotated = CONVERSATION_SCHEMA.restrict(mapped_predicates(corpus, path, split))
        for record, _ in read(path):
            graph = alignment.map_graph(record.graph)
            if graph.relations:
                yield record.model_copy(update={"graph": graph, "id": f"{record.id}@conversation"}), annotated

    return mapped


def _convai2(path: str | None):
    from hotmem.data import dataset_file, dnli_schema, load_convai2, load_personaext

    file = dataset_file("convai2", path)
    schema = dnli_schema(file)
    # PersonaExt re-annotates ConvAI2 utterances: its evaluation slice's texts must not come back through here
    held_out = {r.text.strip().casefold() for r in load_personaext(dataset_file("personaext"), PERSONAEXT_HELD_OUT)}
    for record in load_convai2(file):
        if record.text.strip().casefold() not in held_out:
            yield record, schema


_SPEAKER_LABEL = re.compile(r"Speaker \d+")


def _names_a_speaker(chunk: Sequence[Turn], speaker: str, name: str) -> bool:
    """Whether a chunk shows that `speaker` is called `name`: they say "I'm <name>" (or "I am", "my name is",
    "this is", "call me", "refers to me as"), or another speaker says the name in a turn next to one of theirs,
    addressing them."""
    own = [i for i, turn in enumerate(chunk) if speaker in _SPEAKER_LABEL.findall(turn.speaker or "")]
    introduction = re.compile(rf"\b(?:i'm|i am|my name is|this is|call me|calls me|called me|refers? to me as)"
                              rf"\s+['\"]?{re.escape(name)}\b", re.IGNORECASE)
    if any(introduction.search(chunk[i].text) for i in own):
        return True
    # a name said to someone: "Hey Joey!", "Joey, ...", "..., Joey.", "Joey you ..." (a mention in passing shows
    # nothing; a name ending a question, "why would you say that Joey?", is as often one said about someone)
    vocative = re.compile(rf"(?:^|[,.!?]\s*|\b(?:hey|hi|oh|ok|okay|yeah|well|thanks|thank you|bye)\s+)"
                          rf"{re.escape(name)}(?:\s*(?:[,.!?]|$)|\s+(?:i|you|we|look|listen|please)\b)",
                          re.IGNORECASE)
    return any(0 <= j < len(chunk) and j not in own and vocative.search(chunk[j].text)
               for i in own for j in (i - 1, i + 1))


def _dialogre(path: str | None, every_name: bool = False):
    """DialogRE train chunks, labelled with the relations whose two arguments the chunk holds. DialogRE annotates a
    whole dialogue, so `Speaker 1 per:alternate_names Joey` would be taught wherever Joey is mentioned: that label
    stays only where the chunk shows who Joey is (`_names_a_speaker`), unless `every_name`. A chunk left with no
    relation stays in, as an example of stating none (and so every earlier mixture's `skip` still counts the same
    chunks)."""
    from hotmem.data import DIALOGRE_SCHEMA, dataset_file, load_dialogre

    for record in load_dialogre(dataset_file("dialogre", path, split="train")):  # dev stays held out
        speakers = speakers_of(record.turns)
        for i, chunk in enumerate(chunk_turns(record.turns)):  # as GraphExtractor chunks a dialogue
            text = "\n".join(t.text for t in chunk)
            said = {e.name for e in record.graph.entities if is_grounded(e.name, text, speakers_of(chunk))}
            held = [r for r in record.graph.relations if {r.subject, r.object} <= said]
            shown = [r for r in held if every_name or r.predicate != "per:alternate_names" or not
                     _SPEAKER_LABEL.fullmatch(r.subject) or _names_a_speaker(chunk, r.subject, r.object)]
            graph = Graph(entities=[e for e in record.graph.entities if e.name in said], relations=shown)
            scored = [(a, b) for a, b in record.scored_pairs or () if {a, b} <= said]
            if held and speakers:
                yield Record(id=f"{record.id}#{i}", turns=chunk, graph=graph, source="dialogre",
                             scored_pairs=scored), DIALOGRE_SCHEMA


def _conll04(path: str | None):
    from hotmem.data import CONLL04_SCHEMA, dataset_file, load_conll04

    for record in load_conll04(dataset_file("conll04", path, split="train")):  # valid stays held out
        yield record, CONLL04_SCHEMA


def _labels(path: str | None):
    from hotmem.pipeline.label import load_labels
    from hotmem.types import Turn

    if path is None:
        raise ConfigurationError("the labels source needs a path: the folder `hotmem label` wrote")
    for row in load_labels(path):
        turns = [Turn(**t) for t in row["turns"]]
        yield Record(id=row["id"], turns=turns, graph=Graph.from_json(row["graph"]), source="labels"), \
            CONVERSATION_SCHEMA


RESEARCH_ONLY = "research only: no licence file; derived from ConvAI2/PersonaChat and Dialogue-NLI"
SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("gold", "hotmem's gold train split (96), conversation schema", "hotmem's own, Apache-2.0", _gold),
    Source("personaext", f"PersonaExt dev.jsonl from line {PERSONAEXT_HELD_OUT + 1}, its own 108 predicates",
           RESEARCH_ONLY, _personaext),
    Source("personaext-conversation", "the same lines mapped onto the conversation schema "
           "(hotmem/alignments/personaext/hotmem-conversation.json)", RESEARCH_ONLY,
           _mapped("personaext", _personaext_train)),
    Source("convai2", "ConvAI2 persona lines and utterances with Dialogue-NLI triples, DNLI schema, minus PersonaExt's "
           "evaluation texts", RESEARCH_ONLY, _convai2),
    Source("dialogre", "DialogRE v2 train dialogues, chunked as GraphExtractor chunks them; relations whose two "
           "arguments are in the chunk (a speaker's name only where the chunk shows it)",
           "non-commercial research only (DialogRE LICENSE.txt)", _dialogre),
    Source("dialogre-every-name", "the same chunks with every speaker-name label whose two arguments they hold, "
           "shown or not (as the encoder student was taught)", "non-commercial research only (DialogRE LICENSE.txt)",
           lambda path: _dialogre(path, every_name=True)),
    Source("conll04", "CoNLL04 train sentences, its own 5 predicates",
           "research only: no licence stated (Roth & Yih 2004)", _conll04),
    Source("dialogre-conversation", "the same chunks mapped onto the conversation schema "
           "(hotmem/alignments/dialogre/hotmem-conversation.json)",
           "non-commercial research only (DialogRE LICENSE.txt)",
           _mapped("dialogre", _dialogre, split="train")),
    Source("conll04-conversation", "the same sentences mapped onto the conversation schema "
           "(hotmem/alignments/conll04/hotmem-conversation.json)", "research only: no licence stated (Roth & Yih 2004)",
           _mapped("conll04", _conll04, split="train")),
    Source("convai2-conversation", "the same lines mapped onto the conversation schema by PersonaExt's map (DNLI's "
           "relation names are the ones PersonaExt re-annotated them with)", RESEARCH_ONLY,
           _mapped("convai2", _convai2)),
    Source("labels", "teacher labels of real conversation (`hotmem label`), conversation schema",
           "those of the labelled corpus", _labels),
)}


@dataclass
class MixtureSource:
    name: str
    limit: int | None = None  # examples drawn (shuffled with the mixture's seed) before repeats; None: all
    repeats: int = 1
    #: records passed over before drawing: a later stage with the same seed draws records an earlier one did not;
    #: `"continue"` passes over what the stages the run starts from drew (`Mixture.after` works it out)
    skip: int | str = 0
    #: the pass over the source: each pass shuffles it in its own order (pass 0 as before passes existed), and `skip`
    #: counts within the pass, so stages that drew all of a corpus can go through it again
    epoch: int = 0
    path: str | None = None  # the data set's file or folder (default: the data root), or a labels folder


@dataclass
class Mixture:
    sources: list[MixtureSource]
    negatives: int = 8
    whole_schema_rate: float = 0.1
    seed: int = 0
    #: longest example kept, in characters of prompt and answer (a cut answer would teach a cut graph)
    max_chars: int = 6000
    #: how the student writes its answer (one of `hotmem.students.format.ANSWER_FORMATS`)
    answer_format: str = "json"
    #: up to this many examples of one source whose prompts are the same (its whole schema) share one chat: one
    #: system prompt, then each example's conversation and answer as turns, the loss on every answer, the chat within
    #: `max_chars`. The schema is most of a whole-schema example's tokens, and tokens are a CPU's training time.
    #: 1: a chat an example (TRL's prompt-completion rows).
    examples_per_prompt: int = 1
    #: what a model card calls it: the file's stem unless the file names it
    name: str | None = None

    def __post_init__(self) -> None:
        self.sources = [s if isinstance(s, MixtureSource) else MixtureSource(**s) for s in self.sources]
        for source in self.sources:
            if source.name not in SOURCES:
                raise InvalidInputError(f"unknown mixture source {source.name!r}; known: {sorted(SOURCES)}")
            if source.skip != CONTINUE and (not isinstance(source.skip, int) or source.skip < 0):
                raise InvalidInputError(f"{source.name}: skip is a count ≥ 0 or {CONTINUE!r}, not {source.skip!r}")
            if source.repeats < 1 or source.epoch < 0 or (source.limit or 0) < 0:
                raise InvalidInputError(f"{source.name}: repeats must be ≥ 1, limit ≥ 0, epoch ≥ 0")
        passes = Counter((source.name, source.epoch, source.path) for source in self.sources)
        for (name, epoch, _), count in passes.items():
            if count > 1:  # one range a pass: two would overlap, or be one source said twice
                raise InvalidInputError(f"{name}: pass {epoch} of the same file is listed {count} times; draw it "
                                        "once with a larger limit, or list another epoch")
        if not 0.0 <= self.whole_schema_rate <= 1.0 or self.negatives < 0:
            raise InvalidInputError("whole_schema_rate is in [0, 1] and negatives ≥ 0")
        if self.examples_per_prompt < 1:
            raise InvalidInputError(f"examples_per_prompt is ≥ 1, not {self.examples_per_prompt}")
        check_answer_format(self.answer_format)

    @classmethod
    def load(cls, path: str | Path) -> Mixture:
        """A mixture file, or the name of one shipped in `MIXTURES` (`"default"`, `"unseen-schema"`, ...)."""
        if not Path(path).is_file() and (MIXTURES / f"{path}.json").is_file():
            path = MIXTURES / f"{path}.json"
        try:
            return cls(**{"name": Path(path).stem, **json.loads(Path(path).read_text())})
        except (OSError, ValueError, TypeError) as exc:
            raise InvalidInputError(f"cannot read the mixture file {path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def source_label(self, source: MixtureSource) -> str:
        """A source's row name in a model card: its name, with its pass (and file) when the mixture lists the name
        twice; unique, since a mixture lists each pass of each file once."""
        if sum(s.name == source.name for s in self.sources) > 1:
            return f"{source.name} (pass {source.epoch}" + (f", {source.path})" if source.path else ")")
        return source.name

    def after(self, stages: Sequence[dict[str, Any] | None]) -> Mixture:
        """This mixture with every `"skip": "continue"` resolved against the mixtures of the earlier `stages` (as
        their manifests record them; `stage_ancestors` lists them): past the last record any of them drew from the
        same source (and file) in the same pass. A stage with another seed shuffled the source in another order, and
        one that drew a whole pass leaves nothing to continue with: both are errors rather than a silent overlap."""
        resolved = []
        for source in self.sources:
            if source.skip == CONTINUE:
                end = 0
                for stage in filter(None, stages):
                    for earlier in stage.get("sources") or ():
                        if (earlier["name"], earlier.get("epoch", 0), earlier.get("path")) != (
                                source.name, source.epoch, source.path):
                            continue
                        if stage.get("seed", 0) != self.seed:
                            raise InvalidInputError(
                                f"{source.name}: an earlier stage drew it with seed {stage.get('seed', 0)}, this "
                                f"mixture has seed {self.seed}: records drawn in another order cannot be continued")
                        if earlier.get("limit") is None:
                            raise InvalidInputError(
                                f"{source.name}: an earlier stage drew all of pass {source.epoch}; continue with "
                                f"\"epoch\": {source.epoch + 1} (the same records in another order)")
                        end = max(end, earlier.get("skip", 0) + earlier["limit"])
                source = replace(source, skip=end)
            resolved.append(source)
        return replace(self, sources=resolved)


def shown_predicates(graph: Graph, schema: RelationSchema, rng: random.Random, negatives: int,
                     whole_schema_rate: float) -> list[str] | None:
    """The predicates one example's prompt lists: its own plus `negatives` others, shuffled; None for the whole
    schema (in the schema's order, as at run time)."""
    if rng.random() < whole_schema_rate:
        return None
    own = list(dict.fromkeys(r.predicate for r in graph.relations if schema.get(r.predicate)))
    others = [p for p in schema.predicates if p not in own]
    shown = own + rng.sample(others, min(negatives, len(others)))
    rng.shuffle(shown)
    return shown


def sft_example(turns: Sequence[Turn], graph: Graph, schema: RelationSchema = CONVERSATION_SCHEMA,
                predicates: Sequence[str] | None = None, answer_format: str = "json") -> dict[str, Any]:
    """One SFT example in TRL's conversational prompt-completion format (the loss is on the graph only): the
    schema-reading system prompt listing `predicates` (default: the whole schema), the conversation, the graph."""
    return {"prompt": student_messages(turns, schema_prompt(schema, predicates, answer_format)),
            "completion": [{"role": "assistant", "content": graph_to_target(graph, answer_format)}]}


def example_rows(pairs: Sequence[tuple[Record, RelationSchema]], source: str, mixture: Mixture, rng: random.Random,
                 repeats: int = 1) -> tuple[list[dict[str, Any]], Counter]:
    """SFT rows for (record, schema) pairs, each repeat with its own predicate sample, and what was kept."""
    rows, counts = [], Counter()
    for repeat in range(repeats):
        for record, schema in pairs:
            shown = shown_predicates(record.graph, schema, rng, mixture.negatives, mixture.whole_schema_rate)
            example = sft_example(record.turns, record.graph, schema, shown, mixture.answer_format)
            if sum(len(m["content"]) for m in example["prompt"] + example["completion"]) > mixture.max_chars:
                counts["too_long"] += 1
                continue
            rows.append({"id": f"{record.id}#{repeat}" if repeats > 1 else record.id, "source": source, **example})
            counts["examples"] += 1
            counts["with_relations"] += bool(record.graph.relations)
    return rows, counts


def draw(mixture: Mixture) -> Iterator[tuple[MixtureSource, int, list[tuple[Record, RelationSchema]]]]:
    """Per source of the mixture: its spec, how many records it holds, and the (record, schema) pairs drawn from
    it (shuffled with the mixture's seed and the source's epoch, `skip` passed over, `limit` applied, before
    repeats). Every student's training reads this."""
    for spec in mixture.sources:
        if spec.skip == CONTINUE:
            raise InvalidInputError(f"{spec.name}: \"skip\": \"continue\" says where to start only against the "
                                    "stages this one follows: resolve it with `Mixture.after` (`hotmem distill "
                                    "--init-from` does)")
        pairs = list(SOURCES[spec.name].read(spec.path))
        if pairs and spec.limit != 0 and spec.skip >= len(pairs):  # a source listed but silently left out
            raise InvalidInputError(f"{spec.name}: pass {spec.epoch} holds {len(pairs)} records and all are passed "
                                    f"over (skip {spec.skip}): nothing is left to draw; go through it again with "
                                    f"\"epoch\": {spec.epoch + 1}, or leave it out")
        yield spec, len(pairs), _drawn(pairs, spec, mixture.seed)


def _drawn(pairs: list[tuple[Record, RelationSchema]], spec: MixtureSource,
           seed: int) -> list[tuple[Record, RelationSchema]]:
    pairs = list(pairs)
    random.Random(f"{seed}:{spec.name}" + (f":{spec.epoch}" if spec.epoch else "")).shuffle(pairs)
    end = None if spec.limit is None else spec.skip + spec.limit
    return pairs[spec.skip:end]


def base_id(record_id: str) -> str:
    """A record's id without the suffix its copy in another schema carries (`<id>@conversation`): one text."""
    return record_id.split("@", 1)[0]


def drawn_record_ids(manifest: dict[str, Any]) -> set[str]:
    """The `base_id` of every record a run's training drew: its own mixture's and those of every run in its weights
    (`stage_ancestors`), so a text taught in a corpus's own schema counts as taught in its mapping too. What is left
    measures the run on text it was not taught (`hotmem label --unseen-by`)."""
    mixtures = [manifest.get("mixture"), *(stage.get("mixture") for stage in stage_ancestors(manifest))]
    read: dict[tuple[str, str | None], list[tuple[Record, RelationSchema]]] = {}
    ids: set[str] = set()
    for mixture in filter(None, mixtures):
        for source in mixture.get("sources") or ():
            # the first runs wrote an unresolved skip as null
            spec = MixtureSource(**{**source, "skip": source.get("skip") or 0})
            key = (spec.name, spec.path)
            if key not in read:
                read[key] = list(SOURCES[spec.name].read(spec.path))
            ids |= {base_id(record.id) for record, _ in _drawn(read[key], spec, mixture.get("seed", 0))}
    return ids


def source_report(spec: MixtureSource, available: int, drawn: Sequence[tuple[Record, RelationSchema]],
                  examples: int, with_relations: int, **extra: Any) -> dict[str, Any]:
    """What one source put into a student's training (a row of its model card): records it holds, drawn, repeats,
    examples made, how many carry a relation, its description and licence."""
    source = SOURCES[spec.name]
    return {"records": available, "drawn": len(drawn), "repeats": spec.repeats, "examples": examples,
            "with_relations": with_relations, **extra, "description": source.description, "licence": source.licence}


def build_examples(mixture: Mixture) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Chat-format SFT rows and, per source, what went in: records read, examples drawn and kept, with relations,
    dropped as too long, its licence."""
    rng = random.Random(mixture.seed)
    rows: list[dict[str, Any]] = []
    report: dict[str, dict[str, Any]] = {}
    for spec, available, drawn in draw(mixture):
        added, counts = example_rows(drawn, spec.name, mixture, rng, spec.repeats)
        rows += added
        report[mixture.source_label(spec)] = source_report(spec, available, drawn, counts["examples"],
                                                           counts["with_relations"], too_long=counts["too_long"])
    if not rows:
        raise DistillError("the mixture holds no example")
    if mixture.examples_per_prompt > 1:
        rows = share_prompts(rows, mixture.examples_per_prompt, mixture.max_chars)
    random.Random(mixture.seed).shuffle(rows)
    return rows, report


def share_prompts(rows: Sequence[dict[str, Any]], per_prompt: int, max_chars: int) -> list[dict[str, Any]]:
    """Prompt-completion rows as TRL's conversational `messages` rows: rows of one source with the same system prompt
    go, in order, up to `per_prompt` to a chat, as long as it stays within `max_chars` and holds no record twice (a
    second copy's answer would be read off the first). A row's `id` joins those of its examples with `+`."""
    chats: list[dict[str, Any]] = []
    filling: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        system, *turns = row["prompt"]
        exchange = [*turns, *row["completion"]]
        size, record = sum(len(m["content"]) for m in exchange), row["id"].split("#")[0]
        key = (row["source"], system["content"])
        chat = filling.get(key)
        if (chat is None or len(chat["records"]) == per_prompt or chat["chars"] + size > max_chars
                or record in chat["records"]):
            chat = filling[key] = {"ids": [], "records": set(), "chars": len(system["content"]),
                                   "row": {"id": "", "source": row["source"], "messages": [system]}}
            chats.append(chat)
        chat["ids"].append(row["id"])
        chat["records"].add(record)
        chat["chars"] += size
        chat["row"]["messages"] += exchange
    return [{**chat["row"], "id": "+".join(chat["ids"])} for chat in chats]


def model_card(report: dict[str, dict[str, Any]], mixture: Mixture, *, model: str, training: str,
               earlier: Sequence[tuple[str, dict[str, dict[str, Any]], dict[str, Any], str]] = ()) -> str:
    """A student's card: what it is (`model`), what it learned from (every source, its size and licence; `report`
    as `build_examples` or `hotmem.pipeline.encoder.mixture_pairs` give it), and how (`training`). `earlier`: the
    stages this model was trained in before, as (name, report, mixture as a dict, training): their data is in it too."""
    lines = ["# hotmem student", "", model, "", "## Training data", ""]
    if report:  # a model soup has no data of its own, only its runs'
        lines += _sources_table(report, mixture.to_dict())
    for name, stage_report, stage_mixture, stage_training in earlier:
        lines += [f"### Earlier stage: {name}", "", stage_training, ""]
        lines += _sources_table(stage_report, stage_mixture) if stage_report else []
    lines += ["Several sources are licensed for research only: so is a model trained on them.", "",
              "## Training", "", training, ""]
    return "\n".join(lines)


def taught_record_ids(models: Sequence[str | Path]) -> set[str]:
    """The `base_id` of every record the training of any of these models drew (`drawn_record_ids`): a run folder,
    or `student` / `encoder` for a shipped one (`hotmem label --unseen-by`)."""
    from hotmem.shipped import shipped_folder

    return set().union(*(drawn_record_ids(earlier_stage(shipped_folder(model), role="--unseen-by"))
                         for model in models))


def earlier_stage(folder: Path, role: str = "init_from") -> dict[str, Any]:
    """What a run was made from, as a later run's manifest and card carry it: that run's sources and cost (and any
    stage before it), from its `manifest.json` (an encoder's or a LoRA's)."""
    try:
        earlier = expand_stages(json.loads((Path(folder) / "manifest.json").read_text()))
    except (OSError, ValueError) as exc:
        raise DistillError(f"{role}: {folder} has no readable manifest.json ({exc})") from None
    keep = ("base_model", "mixture", "examples", "seconds_total", "peak_rss_gb", "init_from", "soup_of")
    # LoRA runs before 2026-12-03 wrote their sources as `sources`, which in an encoder's manifest (it has a `kind`)
    # holds per-source counts
    sources = earlier.get("mixture_sources") or (None if "kind" in earlier else earlier.get("sources"))
    return {"folder": Path(folder).name, "mixture_sources": sources,
            "steps": earlier.get("steps", earlier.get("global_step")), **{key: earlier.get(key) for key in keep}}


def _stage_key(stage: dict[str, Any]) -> str:
    # by content, not folder name: `runs/v6/student` and `runs/v5/student` are both "student"
    return json.dumps(stage, sort_keys=True, default=str)


def _stage_digest(stage: dict[str, Any]) -> str:
    return hashlib.sha256(_stage_key(stage).encode()).hexdigest()[:16]


def share_stages(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as `manifest.json` holds it: an earlier stage met again (soups of runs with one start hold its
    whole chain once per run) is written `{"folder": ..., "same_as": <digest>}` after its first appearance, walking
    depth first, `init_from` before `soup_of`. `expand_stages` undoes it."""
    manifest = json.loads(json.dumps(manifest, default=str))  # digests of what the file will hold
    seen: set[str] = set()

    def share(stage: dict[str, Any]) -> dict[str, Any]:
        digest = _stage_digest(stage)
        if digest in seen:
            return {"folder": stage.get("folder"), "same_as": digest}
        seen.add(digest)
        return _with_earlier(stage, share)

    return _with_earlier(manifest, share)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """`folder/manifest.json`, each earlier stage held once (`share_stages`), written atomically."""
    write_atomic(folder / "manifest.json", json.dumps(share_stages(manifest), indent=1) + "\n")


def expand_stages(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest with every `same_as` stage written out again (`share_stages`); one without any is returned as is.
    A stage's digest is that of its written-out form, taken after its own earlier stages are, so every reference
    follows the stage it names in the walk."""
    known: dict[str, dict[str, Any]] = {}

    def expand(stage: dict[str, Any]) -> dict[str, Any]:
        if "same_as" in stage:
            if stage["same_as"] not in known:
                raise ValueError(f"stage {stage.get('folder')!r} refers to {stage['same_as']}, which no stage "
                                 "before it is")
            return known[stage["same_as"]]
        full = _with_earlier(stage, expand)
        known.setdefault(_stage_digest(full), full)
        return full

    return _with_earlier(manifest, expand)


def _with_earlier(stage: dict[str, Any], rewrite: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """`stage` with each of its earlier stages passed through `rewrite`: `init_from`, then `soup_of` in order (the
    one walk `share_stages` and `expand_stages` share)."""
    if not stage.get("init_from") and not stage.get("soup_of"):
        return stage
    out = dict(stage)
    if stage.get("init_from"):
        out["init_from"] = rewrite(stage["init_from"])
    if stage.get("soup_of"):
        out["soup_of"] = [rewrite(run) for run in stage["soup_of"]]
    return out


def stage_ancestors(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run whose weights are in this one, once each: the runs it started from and the runs a soup averages."""
    found, pending, seen = [], [manifest.get("init_from"), *(manifest.get("soup_of") or [])], set()
    while pending:
        stage = pending.pop(0)
        key = _stage_key(stage) if stage else None
        if stage and key not in seen:
            seen.add(key)
            found.append(stage)
            pending += [stage.get("init_from"), *(stage.get("soup_of") or [])]
    return found


def training_seconds(manifest: dict[str, Any]) -> float:
    """The training time of every run whose weights are in this one (`stage_ancestors`), each counted once: a soup
    among them trained nothing itself, and its `seconds_total` already sums its runs'."""
    return round(sum(stage.get("seconds_total") or 0 for stage in stage_ancestors(manifest)
                     if not stage.get("soup_of")), 1)


def soup_runs(folders: Sequence[Path]) -> list[dict[str, Any]]:
    """The runs a model soup averages, as `earlier_stage` records them. Refused unless there are two or more and
    they share an earlier stage (fine-tuned from one run, or one trained on from another): only weights that lie
    close together average into a model that works."""
    if len(folders) < 2:
        raise DistillError("a soup needs at least two runs")
    stages = [earlier_stage(folder, role="soup") for folder in folders]
    lineages = [{_stage_key(stage) for stage in [run, *stage_ancestors(run)]} for run in stages]
    if not set.intersection(*lineages):
        raise DistillError(f"soup: {', '.join(str(f) for f in folders)} share no earlier stage; the runs must be "
                           "fine-tuned from one run, or trained on one from another (`init_from`)")
    return stages


def soup_listing(manifest: dict[str, Any]) -> str:
    """The runs of a soup's manifest with their weights, for its card: "`v16` (0.5), `v17` (0.5)"."""
    runs = manifest["soup_of"]
    weights = manifest.get("soup_weights") or [1 / len(runs)] * len(runs)  # soups before weights were the mean
    return ", ".join(f"`{run['folder']}` ({weight:.3g})" for run, weight in zip(runs, weights))


def mixture_name(mixture: dict[str, Any] | None) -> str | None:
    """A run's mixture by name: the one it records, else that of the shipped mixture file it equals (runs made
    before mixtures carried a name), else None."""
    if not mixture:
        return None
    if mixture.get("name"):
        return mixture["name"]
    try:
        recorded = Mixture(**mixture).to_dict()  # fills the fields added since with their defaults
    except (TypeError, InvalidInputError):
        return None
    for path in sorted(MIXTURES.glob("*.json")):
        if {**Mixture.load(path).to_dict(), "name": None} == recorded:
            return path.stem
    return None


def earlier_stages_for_card(manifest: dict[str, Any]) -> list[tuple[str, dict, dict, str]]:
    """The runs in this one's weights as `model_card(earlier=...)` lists them: name, sources, mixture, cost."""
    earlier = []
    for stage in stage_ancestors(manifest):
        cost = (f"a soup of {', '.join(run['folder'] for run in stage['soup_of'])}." if stage.get("soup_of") else
                f"{stage.get('steps')} steps, {(stage.get('seconds_total') or 0) / 3600:.2f} h, "
                f"peak RSS {stage.get('peak_rss_gb')} GB.")
        name = mixture_name(stage.get("mixture"))
        title = f"`{stage['folder']}`" + (f", mixture `{name}`" if name else "")
        earlier.append((title, stage.get("mixture_sources") or {}, stage.get("mixture") or {}, cost))
    return earlier


def _sources_table(report: dict[str, dict[str, Any]], mixture: dict[str, Any]) -> list[str]:
    lines = ["| source | examples | with relations | records | licence |", "|---|---|---|---|---|"]
    lines += [f"| {name} ({r['description']}) | {r['examples']:,} | {r['with_relations']:,} | {r['records']:,} | "
              f"{r['licence']} |" for name, r in report.items()]
    return lines + ["", f"Mixture: {json.dumps(mixture)}", ""]

