"""The student's supervision: a declared mixture of sources, each in its own schema, evaluation slices kept out."""

import argparse
import json
import random
from collections import Counter
from dataclasses import replace

import pytest

from hotmem.data import find_data_root, load_gold
from hotmem.errors import DistillError, InvalidInputError
from hotmem.cli import _mixture
from hotmem.pipeline.mixture import (
    CONTINUE,
    MIXTURES,
    PERSONAEXT_HELD_OUT,
    SOURCES,
    Mixture,
    MixtureSource,
    _names_a_speaker,
    base_id,
    build_examples,
    draw,
    drawn_record_ids,
    earlier_stage,
    earlier_stages_for_card,
    expand_stages,
    share_stages,
    shown_predicates,
    stage_ancestors,
    training_seconds,
)
from hotmem.schema import CONVERSATION_SCHEMA
from hotmem.types import Graph, Relation, Turn

needs_data = pytest.mark.skipif(find_data_root() is None, reason="../shared/data is not here")


def test_an_example_shows_its_own_predicates_among_negatives_or_the_whole_schema():
    graph = Graph(relations=[Relation(subject="speaker", predicate="has_pet", object="Rex"),
                             Relation(subject="speaker", predicate="lives_in", object="Oslo")])
    rng = random.Random(0)
    shown = shown_predicates(graph, CONVERSATION_SCHEMA, rng, negatives=8, whole_schema_rate=0.0)
    assert {"has_pet", "lives_in"} <= set(shown) and len(shown) == len(set(shown)) == 10
    assert set(shown) <= set(CONVERSATION_SCHEMA.predicates)
    orders = {tuple(shown_predicates(graph, CONVERSATION_SCHEMA, rng, 8, 0.0)) for _ in range(20)}
    assert len(orders) > 1  # shuffled, so position carries no meaning
    assert shown_predicates(graph, CONVERSATION_SCHEMA, rng, 8, whole_schema_rate=1.0) is None
    assert shown_predicates(Graph(), CONVERSATION_SCHEMA, rng, 3, 0.0).__len__() == 3  # a factless example too


def test_gold_is_repeated_on_request_and_its_dev_and_test_never_enter():
    rows, report = build_examples(Mixture(sources=[MixtureSource("gold", repeats=2)]))
    train, held_out = {r.id for r in load_gold("train")}, {r.id for r in load_gold("dev") + load_gold("test")}
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == 2 * len(train)
    assert {i.split("#")[0] for i in ids} == train and not held_out & {i.split("#")[0] for i in ids}
    assert report["gold"]["examples"] == 2 * len(train) and report["gold"]["licence"] == SOURCES["gold"].licence
    # two copies of one record show different predicate samples (each repeat draws its own)
    first = {row["id"]: row["prompt"][0]["content"] for row in rows}
    assert sum(first[f"{i}#0"] != first[f"{i}#1"] for i in train) > len(train) // 2


def test_a_later_stage_draws_records_an_earlier_one_did_not():
    def drawn(**spec):
        (_, available, pairs), = draw(Mixture(sources=[MixtureSource("gold", **spec)]))
        return available, [record.id for record, _ in pairs]

    available, first = drawn(limit=10)
    _, later = drawn(skip=10, limit=10)
    assert available == len(load_gold("train")) and len(first) == len(later) == 10
    assert not set(first) & set(later) and first + later == drawn(limit=20)[1]
    assert len(drawn(skip=90, limit=10)[1]) == available - 90  # the tail, when fewer are left
    with pytest.raises(InvalidInputError, match="nothing is left to draw.*epoch"):  # none left: not silently none
        drawn(skip=available, limit=10)
    with pytest.raises(InvalidInputError, match="skip is a count"):
        Mixture(sources=[MixtureSource("gold", skip=-1)])
    # a second pass (`epoch` 1) goes through the same records in another order; pass 0 is the order earlier stages
    # counted `skip` in
    whole, second_pass = drawn()[1], drawn(epoch=1)[1]
    as_before = [record.id for record in load_gold("train")]
    random.Random("0:gold").shuffle(as_before)
    assert whole == as_before and sorted(second_pass) == sorted(whole) and second_pass != whole
    assert drawn(epoch=1, skip=10, limit=5)[1] == second_pass[10:15]
    with pytest.raises(InvalidInputError, match="epoch"):
        Mixture(sources=[MixtureSource("gold", epoch=-1)])


def test_examples_that_show_the_same_whole_schema_share_one_chat():
    alone, _ = build_examples(Mixture(sources=[MixtureSource("gold", repeats=2)], whole_schema_rate=0.5))
    chats, report = build_examples(Mixture(sources=[MixtureSource("gold", repeats=2)], whole_schema_rate=0.5,
                                           examples_per_prompt=4, max_chars=4000))
    assert all("prompt" in row for row in alone)  # one example a row: prompt-completion, as before
    # every example is in exactly one chat, as the same system prompt, conversation and answer
    examples = {row["id"]: [*row["prompt"][1:], *row["completion"]] for row in alone}
    seen = []
    for chat in chats:
        system, *turns = chat["messages"]
        ids = chat["id"].split("+")
        assert system["role"] == "system" and [m["role"] for m in turns] == ["user", "assistant"] * len(ids)
        assert len(ids) <= 4 and sum(len(m["content"]) for m in chat["messages"]) <= 4000
        assert len({i.split("#")[0] for i in ids}) == len(ids)  # never one record twice in a chat
        assert turns == [m for i in ids for m in examples[i]]
        assert all(next(r for r in alone if r["id"] == i)["prompt"][0] == system for i in ids)
        seen += ids
    assert sorted(seen) == sorted(examples) and report["gold"]["examples"] == len(alone) == 192
    # the whole-schema half shares prompts; a sampled predicate list is its example's own
    assert 192 / 4 < len(chats) < 192 * 0.75
    with pytest.raises(InvalidInputError, match="examples_per_prompt"):
        Mixture(sources=[], examples_per_prompt=0)


def test_over_long_examples_are_dropped_and_counted_not_cut():
    rows, report = build_examples(Mixture(sources=[MixtureSource("gold")], max_chars=900))
    assert report["gold"]["too_long"] > 0 and report["gold"]["examples"] > 0
    assert report["gold"]["examples"] + report["gold"]["too_long"] == 96
    assert all(sum(len(m["content"]) for m in r["prompt"] + r["completion"]) <= 900 for r in rows)


def test_a_mixture_file_is_checked(tmp_path):
    shipped = Mixture.load(MIXTURES / "default.json")
    assert [s.name for s in shipped.sources] == ["gold", "personaext", "personaext-conversation",
                                                  "dialogre-conversation", "conll04-conversation", "convai2",
                                                  "dialogre", "conll04"]
    # the unseen-schema ablation is the conversation-first recipe without CoNLL04, all else equal
    recipe = Mixture.load("conversation-first")  # a shipped mixture by name
    ablation = Mixture.load("unseen-schema")
    assert ablation.sources == [s for s in recipe.sources if not s.name.startswith("conll04")]
    assert {**ablation.to_dict(), "sources": None, "name": None} == {**recipe.to_dict(), "sources": None, "name": None}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sources": [{"name": "wikipedia"}]}))
    with pytest.raises(InvalidInputError, match="unknown mixture source 'wikipedia'"):
        Mixture.load(bad)
    with pytest.raises(InvalidInputError, match="cannot read"):
        Mixture.load(tmp_path / "missing.json")
    with pytest.raises(InvalidInputError, match="cannot read"):
        Mixture.load("no-such-mixture")
    bad.write_text(json.dumps({"sources": [{"name": "gold"}], "answer_format": "yaml"}))
    with pytest.raises(InvalidInputError, match="answer_format is one of"):
        Mixture.load(bad)


@pytest.mark.parametrize("path", sorted(MIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_mixture_loads(path):
    assert Mixture.load(path).sources


@pytest.mark.parametrize("last", [["corpora-more-3"], ["corpora-more-4"], ["corpora-more-5", "corpora-more-6"],
                                  ["corpora-more-5", "corpora-more-6-chats", "corpora-more-7-chats",
                                   "corpora-more-8-chats", "corpora-more-9-chats"],
                                  ["corpora-more-5", "corpora-more-6-chats", "corpora-more-8-chats",
                                   "corpora-more-9-chats", "corpora-more-10-chats", "corpora-more-11-chats",
                                   "corpora-more-12-chats", "corpora-more-13-chats", "corpora-more-14-chats"]],
                         ids="/".join)
def test_the_shipped_stages_never_draw_a_corpus_record_twice(last):
    """conversation-first -> conversation-whole -> corpora-more -> corpora-more-2 -> corpora-more-3 (or its
    alternatives, corpora-more-4, or its two halves corpora-more-5 -> corpora-more-6 or -6-chats -> (-7-chats ->)
    -8-chats -> -9-chats -> ... -> -14-chats): each stage skips what the ones before it drew in the same pass over a
    corpus (gold train is replayed on purpose)."""
    taken: dict[tuple[str, int], list[range]] = {}
    stages = [Mixture.load(name) for name in ("conversation-first", "conversation-whole", "corpora-more",
                                                "corpora-more-2", *last)]
    assert len({stage.seed for stage in stages}) == 1  # `skip` counts records in one shuffled order: one seed
    recorded: list[dict] = []
    for mixture in stages:
        mixture = mixture.after(recorded)  # a stage may say `"skip": "continue"`
        recorded.insert(0, mixture.to_dict())
        for source in mixture.sources:
            if source.name == "gold":
                continue
            drawn = range(source.skip, source.skip + source.limit)
            assert all(not set(drawn) & set(earlier) for earlier in taken.get((source.name, source.epoch), [])), source
            taken.setdefault((source.name, source.epoch), []).append(drawn)



#: the stages whose skips were counted by hand (v12's -7-chats is not in the shipped chain, -8-chats counts past it)
HAND_COUNTED_CHAIN = ("conversation-first", "conversation-whole", "corpora-more", "corpora-more-2", "corpora-more-5",
                 "corpora-more-6-chats", "corpora-more-7-chats", "corpora-more-8-chats")


def continued(mixture: Mixture) -> Mixture:
    """The mixture with every corpus source's skip left to `"continue"` (gold train is replayed whole)."""
    return replace(mixture, sources=[s if s.name == "gold" else replace(s, skip=CONTINUE) for s in mixture.sources])


def test_continue_starts_each_source_where_the_earlier_stages_stopped():
    """`"skip": "continue"` gives every hand-counted stage the skips that were counted by hand, per source and pass."""
    recorded: list[dict] = []
    for name in HAND_COUNTED_CHAIN:
        shipped = Mixture.load(name)
        assert continued(shipped).after(recorded).sources == shipped.sources, name
        recorded.insert(0, shipped.to_dict())  # as stage_ancestors lists them: the latest first
    assert continued(Mixture.load("conversation-first")).after([]).sources == Mixture.load(
        "conversation-first").sources  # a first stage starts at the beginning


def test_continue_refuses_what_it_cannot_continue():
    first = Mixture(sources=[MixtureSource("gold", limit=10), MixtureSource("conll04", limit=5)])
    later = Mixture(sources=[MixtureSource("gold", skip=CONTINUE, limit=10)])
    assert later.after([first.to_dict()]).sources[0].skip == 10
    with pytest.raises(InvalidInputError, match="seed"):  # another shuffle order: offsets mean other records
        replace(later, seed=1).after([first.to_dict()])
    with pytest.raises(InvalidInputError, match="epoch"):  # a whole pass was drawn
        later.after([Mixture(sources=[MixtureSource("gold")]).to_dict()])
    # a second pass, or another file, continues from nothing
    other_pass = Mixture(sources=[MixtureSource("gold", skip=CONTINUE, epoch=1, limit=10)])
    assert other_pass.after([first.to_dict()]).sources[0].skip == 0
    with pytest.raises(InvalidInputError, match="Mixture.after"):  # never drawn unresolved
        next(draw(later))
    with pytest.raises(InvalidInputError, match="skip"):
        Mixture(sources=[MixtureSource("gold", skip="next")])


def test_distill_continues_past_the_stages_of_the_run_it_starts_from(tmp_path):
    """`hotmem distill --mixture F --init-from RUN`: RUN's manifest (and its own `init_from`) say what was drawn."""
    first = Mixture(sources=[MixtureSource("gold", limit=10)]).to_dict()
    second = Mixture(sources=[MixtureSource("gold", skip=10, limit=20)]).to_dict()
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"mixture": second, "init_from": {"mixture": first}}))
    (tmp_path / "next.json").write_text(json.dumps({"sources": [{"name": "gold", "skip": "continue", "limit": 5}]}))
    args = argparse.Namespace(mixture=str(tmp_path / "next.json"), init_from=str(run))
    assert _mixture(args).sources[0].skip == 30
    assert _mixture(argparse.Namespace(mixture=str(tmp_path / "next.json"), init_from=None)).sources[0].skip == 0


def test_the_records_a_run_was_taught_are_those_every_stage_in_its_weights_drew():
    first = Mixture(sources=[MixtureSource("gold", limit=10)])
    second = Mixture(sources=[MixtureSource("gold", skip=10, limit=5)])
    taught = {record.id for mixture in (first, second) for _, _, pairs in draw(mixture) for record, _ in pairs}
    run = {"mixture": second.to_dict(), "init_from": {"mixture": first.to_dict()}}
    assert len(taught) == 15 and drawn_record_ids(run) == taught
    # a soup was taught what its runs were; the first runs wrote an unresolved skip as null
    unresolved = {**first.to_dict(), "sources": [{"name": "gold", "limit": 10, "skip": None}]}
    assert drawn_record_ids({"soup_of": [{"mixture": unresolved}, {"mixture": second.to_dict()}]}) == taught
    assert drawn_record_ids({"mixture": None}) == set()
    # a record mapped onto our schema is the same text as in its corpus's own
    assert base_id("personaext-train-00012@conversation") == base_id("personaext-train-00012")


def test_every_earlier_stage_is_listed_even_when_their_folders_share_a_name():
    """runs/v5/student -> runs/v6/student -> runs/v7/student: the card of the third lists both earlier stages."""
    first = {"folder": "student", "examples": 586, "init_from": None}
    second = {"folder": "student", "examples": 288, "init_from": first}
    assert stage_ancestors({"init_from": second}) == [second, first]
    # a soup of two runs that started from one run lists that run once
    soup = {"soup_of": [{"folder": "a", "init_from": first}, {"folder": "b", "init_from": first}]}
    assert [stage["folder"] for stage in stage_ancestors(soup)] == ["a", "b", "student"]


def test_a_soup_of_a_soup_counts_each_runs_training_once():
    """A soup's `seconds_total` already sums its runs': a soup built on it counts those runs once, the soup not."""
    start = {"folder": "start", "seconds_total": 100.0, "init_from": None}
    a, b = ({"folder": name, "seconds_total": 10.0, "init_from": start} for name in ("a", "b"))
    soup = {"folder": "soup", "soup_of": [a, b], "seconds_total": training_seconds({"soup_of": [a, b]})}
    assert soup["seconds_total"] == 120.0
    later = {"folder": "later", "seconds_total": 5.0, "init_from": soup}
    assert training_seconds({"soup_of": [soup, later]}) == 125.0


def test_a_card_names_each_earlier_stage_by_its_mixture():
    """A run records its mixture's name; runs made before that are named by the shipped mixture they equal."""
    assert Mixture.load("corpora-more").name == "corpora-more"
    before_names = {key: value for key, value in Mixture.load("corpora-more").to_dict().items() if key != "name"}
    del before_names["sources"][0]["skip"]  # and before `skip` existed
    own = Mixture(sources=[MixtureSource("gold", limit=3)]).to_dict()
    stages = [{"folder": "student", "mixture": before_names, "steps": 278},
              {"folder": "mine", "mixture": own, "steps": 2}, {"folder": "old", "mixture": None}]
    titles = [title for title, *_ in earlier_stages_for_card({"init_from": stages[0] | {"init_from": stages[1] | {
        "init_from": stages[2]}}})]
    assert titles == ["`student`, mixture `corpora-more`", "`mine`", "`old`"]


@needs_data
def test_personaext_evaluation_and_validation_lines_never_enter():
    numbers = {int(record.id.rsplit("-", 1)[1]) for record, _ in SOURCES["personaext"].read(None)}
    assert min(numbers) > PERSONAEXT_HELD_OUT
    mapped = [record for record, schema in SOURCES["personaext-conversation"].read(None)]
    assert min(int(r.id.split("@")[0].rsplit("-", 1)[1]) for r in mapped) > PERSONAEXT_HELD_OUT
    assert all(set(r.predicate for r in rec.graph.relations) <= set(CONVERSATION_SCHEMA.predicates)
               for rec in mapped)


@needs_data
def test_convai2_never_brings_back_personaext_evaluation_texts():
    from hotmem.data import dataset_file, load_personaext

    evaluation = {r.text.strip().casefold() for r in load_personaext(dataset_file("personaext"), 1000)}
    texts = {record.text.strip().casefold() for record, _ in SOURCES["convai2"].read(None)}
    assert texts and not texts & evaluation
    mapped = [record for record, _ in SOURCES["convai2-conversation"].read(None)]
    assert {record.text.strip().casefold() for record in mapped} < texts
    assert all({r.predicate for r in record.graph.relations} <= set(CONVERSATION_SCHEMA.predicates)
               for record in mapped)


@needs_data
def test_dialogre_chunks_keep_only_relations_whose_arguments_they_contain():
    chunks = list(SOURCES["dialogre"].read(None))
    assert sum(bool(record.graph.relations) for record, _ in chunks) > 0.9 * len(chunks)
    for record, schema in chunks[:50]:
        names = {e.name for e in record.graph.entities}
        assert all({r.subject, r.object} <= names for r in record.graph.relations)
        assert all(r.predicate in schema.predicates for r in record.graph.relations)
        assert sum(len(t.text) for t in record.turns) <= 1200
    # the every-name variant: the same chunks, and besides their relations every speaker-name label they hold
    every = list(SOURCES["dialogre-every-name"].read(None))
    assert [record.id for record, _ in every] == [record.id for record, _ in chunks]
    added = Counter()
    for (shown, _), (all_names, _) in zip(chunks, every):
        assert all(r in all_names.graph.relations for r in shown.graph.relations)
        added.update(r.predicate for r in all_names.graph.relations if r not in shown.graph.relations)
    assert set(added) == {"per:alternate_names"}


@needs_data
@pytest.mark.parametrize("corpus, split", [("personaext", None), ("dialogre", "train"), ("conll04", "train")])
def test_a_mapped_corpus_is_taught_only_the_predicates_its_triples_map_to(corpus, split):
    from hotmem.alignment import SchemaAlignment
    from hotmem.data import mapped_predicates

    name = f"{corpus}-conversation"
    targets = mapped_predicates(corpus, split=split)
    assert set(targets) <= set(SchemaAlignment.load(corpus).targets)
    if corpus == "personaext":  # its map has a rule for `has_profession`, which its data never uses
        assert "works_as" not in targets and {"likes", "has_pet", "works_at"} <= set(targets)
    pairs = list(SOURCES[name].read(None))
    assert len(pairs) > 500
    for record, schema in pairs[:200]:
        assert record.id.endswith("@conversation") and record.graph.relations
        assert schema.predicates == targets and schema.name == CONVERSATION_SCHEMA.name
        assert all(schema.get(r.predicate) for r in record.graph.relations)


def test_a_dialogre_chunk_teaches_a_speakers_name_only_where_it_shows_it():
    """DialogRE labels `Speaker 2 per:alternate_names Pheebs` for the whole dialogue; a chunk teaches it only where
    someone says the name to Speaker 2 next to one of their turns, or Speaker 2 introduces themselves."""
    def chunk(*lines):
        return [Turn(speaker=speaker, text=text) for speaker, text in lines]

    addressed = chunk(("Speaker 1", "Hey Pheebs."), ("Speaker 2", "Hi!"))
    assert _names_a_speaker(addressed, "Speaker 2", "Pheebs")
    assert not _names_a_speaker(addressed, "Speaker 1", "Pheebs")  # who says a name is not who bears it
    in_passing = chunk(("Speaker 1", "Did Pheebs call you back?"), ("Speaker 2", "No."))
    assert not _names_a_speaker(in_passing, "Speaker 2", "Pheebs")
    far = chunk(("Speaker 1", "Hey Pheebs."), ("Speaker 3", "Hi."), ("Speaker 2", "Hello."))
    assert not _names_a_speaker(far, "Speaker 2", "Pheebs")
    assert _names_a_speaker(chunk(("Speaker 4", "Hi, I'm Tommy."),), "Speaker 4", "Tommy")
    assert _names_a_speaker(chunk(("Speaker 1, Speaker 2", "Hi."), ("Speaker 3", "Oh, Ross!")), "Speaker 2", "Ross")
    assert _names_a_speaker(chunk(("Speaker 1", "Hey Rach listen, ..."), ("Speaker 2", "What?")), "Speaker 2", "Rach")
    assert _names_a_speaker(chunk(("Speaker 1", "I'll have my friends call me Valerie."),), "Speaker 1", "Valerie")
    assert not _names_a_speaker(chunk(("Speaker 1", "Joey is late."), ("Speaker 2", "Yes.")), "Speaker 2", "Joey")


def test_two_passes_of_a_source_are_two_rows_and_one_pass_twice_is_refused():
    mixture = Mixture(sources=[MixtureSource("gold", limit=4), MixtureSource("gold", epoch=1, limit=3)])
    _, report = build_examples(mixture)
    assert {name: r["examples"] for name, r in report.items()} == {"gold (pass 0)": 4, "gold (pass 1)": 3}
    two_files = Mixture(sources=[MixtureSource("labels", path="a"), MixtureSource("labels", path="b")])
    assert [two_files.source_label(s) for s in two_files.sources] == ["labels (pass 0, a)", "labels (pass 0, b)"]
    with pytest.raises(InvalidInputError, match="pass 0"):
        Mixture(sources=[MixtureSource("gold", limit=4), MixtureSource("gold", skip=4, limit=4)])


def test_a_manifest_holds_each_earlier_stage_once_and_reads_back_whole(tmp_path):
    """A soup of runs trained on from one start carries that start's chain once per run; the file holds it once."""
    start = {"folder": "start", "mixture": {"name": "a"}, "seconds_total": 10.0,
             "init_from": {"folder": "seed", "seconds_total": 5.0}}
    runs = [{"folder": f"v{i}", "seconds_total": float(i), "init_from": start} for i in (1, 2, 3)]
    manifest = {"backend": "soup", "soup_of": [start, *runs], "soup_weights": [0.5, 0.1667, 0.1667, 0.1666]}
    text = json.dumps(share_stages(manifest))
    assert text.count('"seed"') == 1 and text.count('"same_as"') == 3
    assert expand_stages(json.loads(text)) == manifest
    assert training_seconds(expand_stages(json.loads(text))) == training_seconds(manifest) == 21.0
    assert expand_stages(manifest) == manifest  # one written whole (every manifest before sharing) reads as is
    (tmp_path / "manifest.json").write_text(text)
    assert earlier_stage(tmp_path)["soup_of"] == manifest["soup_of"]
    dangling = {"init_from": {"folder": "v1", "same_as": "0123456789abcdef"}}
    (tmp_path / "manifest.json").write_text(json.dumps(dangling))
    with pytest.raises(DistillError, match="refers to"):
        earlier_stage(tmp_path)
