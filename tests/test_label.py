import json
import os
import signal
import subprocess
import sys
import time

import dspy
import pytest

pytest.importorskip("datasets")

from conftest import needs_encoder  # noqa: E402
from hotmem.errors import InvalidInputError  # noqa: E402
from hotmem.extractor import GraphExtractor  # noqa: E402
from hotmem.pipeline.label import (  # noqa: E402
    LABELS_FILE,
    LabelConfig,
    Utterance,
    annotated_utterances,
    check_union,
    label_corpus,
    label_problems,
    load_labels,
    read_corpus,
    vote,
)
from hotmem.schema import CONVERSATION_SCHEMA  # noqa: E402
from hotmem.teacher.program import Teacher  # noqa: E402
from hotmem.types import Entity, Graph, Relation, Turn, as_turns  # noqa: E402


class CannedBackend:
    """A backend answering from a table: the labelling logic under test does not depend on what the model is."""

    name = model = "canned"

    def __init__(self, graphs):
        self.graphs = graphs

    def __call__(self, turns):
        graph = self.graphs[turns[0].text]
        if isinstance(graph, Exception):
            raise graph
        return graph

    def usage(self):
        return {"calls": 0, "prompt_tokens": 0, "output_tokens": 0}


def canned(graphs) -> GraphExtractor:
    return GraphExtractor(backend=CannedBackend(graphs))


GOOD = Graph(
    entities=[Entity(name="speaker", type="PERSON"), Entity(name="Oslo", type="LOCATION")],
    relations=[Relation(subject="speaker", predicate="lives_in", object="Oslo")],
)
INVALID = Graph(
    entities=[Entity(name="Oslo", type="LOCATION"), Entity(name="speaker", type="PERSON")],
    relations=[Relation(subject="Oslo", predicate="lives_in", object="speaker")],
)
UNGROUNDED = Graph(
    entities=[Entity(name="speaker", type="PERSON"), Entity(name="Paris", type="LOCATION")],
    relations=[Relation(subject="speaker", predicate="lives_in", object="Paris")],
)


def test_read_corpus_from_text_jsonl_and_iterables(tmp_path):
    (tmp_path / "c.txt").write_text("I live in Oslo.\n\nHi!\n")
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"id": "a", "text": "I live in Oslo.", "speaker": "Anna"}) + "\n"
        + json.dumps({"turns": [{"speaker": "Anna", "text": "Hi"}, {"speaker": "Ben", "text": "Hello"}]}) + "\n"
    )
    text = list(read_corpus(tmp_path / "c.txt"))
    assert [u.id for u in text] == ["c-0000001", "c-0000003"]
    jsonl = list(read_corpus(tmp_path / "c.jsonl"))
    assert jsonl[0].id == "a" and jsonl[0].turns[0].speaker == "Anna"
    assert [t.speaker for t in jsonl[1].turns] == ["Anna", "Ben"]
    assert [u.id for u in read_corpus(["x", "y", "z"], limit=2)] == ["item-0000000", "item-0000001"]
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(InvalidInputError, match="bad.jsonl:1"):
        list(read_corpus(tmp_path / "bad.jsonl"))
    with pytest.raises(InvalidInputError, match="no corpus file"):
        list(read_corpus(tmp_path / "missing.txt"))


def test_filters_name_each_problem():
    config = LabelConfig()
    turns = as_turns("I live in Oslo.")
    assert label_problems(GOOD, turns, CONVERSATION_SCHEMA, config) == []
    assert label_problems(Graph(), turns, CONVERSATION_SCHEMA, config) == []  # no facts is a valid label
    assert label_problems(INVALID, turns, CONVERSATION_SCHEMA, config) == ["schema_invalid"]
    assert label_problems(UNGROUNDED, turns, CONVERSATION_SCHEMA, config) == ["ungrounded"]
    weak = GOOD.model_copy(update={"relations": [GOOD.relations[0].model_copy(update={"confidence": 0.5})]})
    assert label_problems(weak, turns, CONVERSATION_SCHEMA, config) == ["low_confidence"]


def test_labelling_writes_a_filtered_dataset_and_resumes_without_redoing(tmp_path):
    texts = {"I live in Oslo.": GOOD, "Oslo lives in me.": INVALID, "I live in Oslo!": UNGROUNDED,
             "Hi!": Graph(), "boom": RuntimeError("model died")}
    config = LabelConfig(out_dir=str(tmp_path / "labels"), clean_items=False)
    report = label_corpus(canned(texts), list(texts), config=config, progress=False)
    assert (report.labelled, report.failed, report.kept) == (5, 1, 2)
    assert report.dropped == {"failed": 1, "schema_invalid": 1, "ungrounded": 1}
    assert report.peak_rss_gb > 0 and json.loads((tmp_path / "labels" / "report.json").read_text())["peak_rss_gb"] > 0
    dataset = load_labels(tmp_path / "labels")
    assert sorted(dataset["text"]) == ["Hi!", "I live in Oslo."]
    assert Graph.from_json(dataset[dataset["text"].index("I live in Oslo.")]["graph"]) == GOOD
    # a second run over a longer corpus labels only what is new
    texts["Hello again"] = Graph()
    again = label_corpus(canned(texts), list(texts), config=config, progress=False)
    assert (again.labelled_this_run, again.labelled, again.kept) == (1, 6, 3)
    # throughput sums the runs that labelled; a run that only rebuilds the data set leaves it as it was
    assert (again.labelled_timed, again.sessions) == (6, 2) and again.seconds >= report.seconds
    rebuilt = label_corpus(canned(texts), list(texts), config=config, progress=False)
    assert rebuilt.labelled_this_run == 0 and rebuilt.kept == 3
    assert (rebuilt.labelled_timed, rebuilt.sessions, rebuilt.seconds) == (6, 2, again.seconds)
    assert rebuilt.utterances_per_minute == again.utterances_per_minute > 0
    assert rebuilt.peak_rss_gb == again.peak_rss_gb > 0


def test_an_utterance_said_again_is_labelled_once(tmp_path):
    texts = {"I live in Oslo.": GOOD, "Hi!": Graph()}
    corpus = ["I live in Oslo.", "hi!", "I  live in Oslo.", "Hi!"]
    config = LabelConfig(out_dir=str(tmp_path / "labels"))
    extractor = canned({**texts, "hi!": Graph(), "I  live in Oslo.": GOOD, "Hi there": Graph()})
    report = label_corpus(extractor, corpus, config=config, progress=False)
    assert (report.labelled, report.repeated) == (2, 2)
    assert sorted(load_labels(tmp_path / "labels")["text"]) == ["I live in Oslo.", "hi!"]
    # a rerun with one more new utterance labels only that one; the repeats are still counted, not labelled
    again = label_corpus(extractor, [*corpus, "Hi there"], config=config, progress=False)
    assert (again.labelled, again.labelled_this_run, again.repeated, again.failed) == (3, 1, 2, 0)


def test_a_report_written_before_the_sums_counts_as_one_earlier_run(tmp_path):
    texts = {"I live in Oslo.": GOOD}
    out = tmp_path / "labels"
    label_corpus(canned(texts), list(texts), config=LabelConfig(out_dir=str(out)), progress=False)
    old = {"labelled": 1, "seconds_this_run": 60.0, "labelled_this_run": 30, "output_tokens_this_run": 900,
           "peak_rss_gb": 99.0}
    (out / "report.json").write_text(json.dumps(old))
    report = label_corpus(canned(texts), list(texts), config=LabelConfig(out_dir=str(out)), progress=False)
    assert (report.seconds, report.labelled_timed, report.output_tokens, report.sessions) == (60.0, 30, 900, 1)
    assert report.utterances_per_minute == 30 and report.peak_rss_gb == 99.0
    assert json.loads((out / "report.json").read_text())["utterances_per_minute"] == 30


def test_cleaning_keeps_what_is_right_in_a_label_and_counts_what_it_takes_out(tmp_path):
    texts = {"I live in Oslo.": GOOD, "Oslo lives in me.": INVALID, "I live in Oslo!": UNGROUNDED,
             "boom": RuntimeError("model died")}
    report = label_corpus(canned(texts), list(texts), config=LabelConfig(out_dir=str(tmp_path)), progress=False)
    assert (report.labelled, report.kept, report.kept_with_relations) == (4, 3, 1)
    assert report.dropped == {"failed": 1}
    assert report.removed == {"schema_invalid_relation": 1, "ungrounded_entity": 1, "dangling_relation": 1}
    graphs = {row["text"]: Graph.from_json(row["graph"]) for row in load_labels(tmp_path)}
    assert graphs["I live in Oslo."] == GOOD
    assert not graphs["Oslo lives in me."].relations and len(graphs["Oslo lives in me."].entities) == 2
    assert [e.name for e in graphs["I live in Oslo!"].entities] == ["speaker"]  # Paris is not in the text
    assert not graphs["I live in Oslo!"].relations

def test_teacher_labels_chit_chat_as_an_empty_graph(tmp_path):
    lm = dspy.utils.DummyLM([{"statements": []}], adapter=dspy.JSONAdapter())
    config = LabelConfig(out_dir=str(tmp_path))
    report = label_corpus(GraphExtractor(lm, program=Teacher()), [Utterance(id="u1", turns=as_turns("Haha, nice!"))],
                          config=config, progress=False)
    assert (report.labelled, report.kept, report.kept_with_relations) == (1, 1, 0)
    assert len(lm.history) == 1  # the decompose step found no statement: nothing more was asked


def _graph(*facts, names=()):
    entities = {name: Entity(name=name, type="PERSON") for fact in facts for name in (fact[0], fact[2])}
    entities.update({name: Entity(name=name, type="PERSON") for name in names})
    return Graph(entities=list(entities.values()),
                 relations=[Relation(subject=s, predicate=p, object=o) for s, p, o in facts])


def test_a_vote_keeps_the_facts_enough_labels_state_however_restated():
    main = _graph(("Anna", "parent_of", "Tom"), ("Anna", "married_to", "Ben"), names=["Oslo"])
    sampled = [_graph(("tom", "child_of", "anna"), ("Anna", "sibling_of", "Ben")),  # names compared normalised
               _graph(("Ben", "married_to", "Anna"), ("Anna", "sibling_of", "Ben"), ("Tom", "friends_with", "Ben"))]
    voted = vote([main, *sampled], 2)
    assert {r.triple for r in voted.relations} == {("Anna", "parent_of", "Tom"), ("Anna", "married_to", "Ben"),
                                                   ("Anna", "sibling_of", "Ben")}  # the samples' majority too
    assert [e.name for e in voted.entities] == ["Anna", "Tom", "Ben"]  # Oslo: one label; the main label's names
    assert voted.confidence == 0.75
    assert vote([main, *sampled], 3).relations == []  # no fact is in all three
    assert vote([main], 1).relations == main.relations
    with pytest.raises(InvalidInputError):
        vote([main], 0)


def test_a_mention_named_for_its_owner_is_the_same_end_in_a_vote():
    """`speaker has_pet speaker's dog` and `I have_pet dog` state one fact; `Anna likes speaker's dog` another."""
    bare = _graph(("I", "has_pet", "dog"), ("Anna", "likes", "dog"))
    owned = _graph(("speaker", "has_pet", "speaker's dog"), ("speaker's sister", "sibling_of", "speaker"),
                   ("Anna", "likes", "speaker's dog"))
    voted = vote([bare, owned, _graph(("sister", "sibling_of", "me"))], 2, speakers=["speaker"])
    # names from the first label naming each entity
    assert {r.triple for r in voted.relations} == {("I", "has_pet", "dog"), ("speaker's sister", "sibling_of", "I")}


def test_sampled_labels_are_stored_and_the_data_set_keeps_what_they_agree_on(tmp_path):
    texts = {"Anna and Ben married; Tom is their son.": _graph(("Anna", "married_to", "Ben"),
                                                                ("Tom", "child_of", "Anna"))}
    samples = [{text: _graph(("Ben", "married_to", "Anna")) for text in texts},
               {text: _graph(("Anna", "married_to", "Ben"), ("Anna", "sibling_of", "Tom")) for text in texts}]
    config = LabelConfig(out_dir=str(tmp_path), require_grounded=False)
    report = label_corpus(canned(texts), list(texts), config=config, samplers=[canned(s) for s in samples],
                          progress=False)
    assert report.removed == {"unconfirmed_relation": 1}
    [row] = load_labels(tmp_path)
    assert [r.triple for r in Graph.from_json(row["graph"]).relations] == [("Anna", "married_to", "Ben")]
    [item] = [json.loads(line) for line in (tmp_path / LABELS_FILE).read_text().splitlines()]
    assert len(item["samples"]) == 2 and Graph.model_validate(item["graph"]) == texts[next(iter(texts))]
    # a rerun with another threshold re-filters the stored samples and labels nothing again
    again = label_corpus(canned({}), list(texts), config=LabelConfig(out_dir=str(tmp_path), require_grounded=False,
                                                                      agree=1), progress=False)
    assert again.labelled_this_run == 0 and not again.removed
    [row] = load_labels(tmp_path)
    assert len(Graph.from_json(row["graph"]).relations) == 3


def test_min_support_keeps_facts_by_their_share_of_labels_and_the_checks_probability():
    main = _graph(("Anna", "parent_of", "Tom"), ("Anna", "married_to", "Ben"), names=["Oslo"])
    sampled = [_graph(("tom", "child_of", "anna"), ("Anna", "sibling_of", "Ben")),
               _graph(("Ben", "married_to", "Anna"), ("Anna", "sibling_of", "Ben"), ("Tom", "friends_with", "Ben"))]
    probabilities = {"parent_of": 0.3, "married_to": 0.7, "sibling_of": 0.5, "friends_with": 0.65}
    stated = check_union([main, *sampled], lambda facts: [probabilities[f.predicate] for f in facts])
    assert len(stated) == 4  # each fact once, however restated
    voted = vote([main, *sampled], min_support=0.5, stated=stated)
    # support = (share of labels + probability) / 2: parent_of (2/3 + 0.3) / 2 = 0.48 goes; friends_with, stated
    # once but likely, (1/3 + 0.65) / 2 = 0.49 goes; married_to 0.68 and sibling_of 0.58 stay
    assert {r.triple for r in voted.relations} == {("Anna", "married_to", "Ben"), ("Anna", "sibling_of", "Ben")}
    assert [e.name for e in voted.entities] == ["Anna", "Tom", "Ben"]  # a majority names Tom: he stays
    assert {r.triple for r in vote([main, *sampled], min_support=0.45, stated=stated).relations} == {
        ("Anna", "parent_of", "Tom"), ("Anna", "married_to", "Ben"), ("Anna", "sibling_of", "Ben"),
        ("Tom", "friends_with", "Ben")}
    with pytest.raises(InvalidInputError, match="not both"):
        vote([main], 1, min_support=0.5, stated=stated)
    with pytest.raises(InvalidInputError, match="probabilities"):
        vote([main], min_support=0.5)


class CheckingBackend(CannedBackend):
    """A canned teacher whose verify step gives each predicate a fixed probability; counts the facts it checks."""

    program = type("Verifying", (), {"verifies": True})()

    def __init__(self, graphs, probabilities):
        super().__init__(graphs)
        self.probabilities, self.checked = probabilities, []

    def stated_probabilities(self, turns, relations):
        self.checked += [r.triple for r in relations]
        return [self.probabilities[r.predicate] for r in relations]


def test_labels_checked_together_keep_what_min_support_supports(tmp_path):
    text = "Anna and Ben married; Tom is their son."
    texts = {text: _graph(("Anna", "married_to", "Ben"), ("Tom", "child_of", "Anna"))}
    samples = [{text: _graph(("Ben", "married_to", "Anna"))},
               {text: _graph(("Anna", "married_to", "Ben"), ("Anna", "sibling_of", "Tom"))}]
    main = CheckingBackend(texts, {"married_to": 0.4, "child_of": 0.7, "sibling_of": 0.45})
    config = LabelConfig(out_dir=str(tmp_path), require_grounded=False, min_support=0.5)
    label_corpus(GraphExtractor(backend=main), list(texts), config=config, samplers=[canned(s) for s in samples],
                 progress=False)
    assert sorted(main.checked) == [("Anna", "married_to", "Ben"), ("Anna", "sibling_of", "Tom"),
                                    ("Tom", "child_of", "Anna")]  # each fact of the three labels once
    [row] = load_labels(tmp_path)
    # married_to (3/3 + 0.4) / 2 = 0.7, child_of (1/3 + 0.7) / 2 = 0.52 stay; sibling_of 0.39 goes
    assert {r.triple for r in Graph.from_json(row["graph"]).relations} == {("Anna", "married_to", "Ben"),
                                                                          ("Tom", "child_of", "Anna")}
    with pytest.raises(InvalidInputError, match="verify"):  # no verify step to check with
        label_corpus(canned(texts), list(texts), config=LabelConfig(out_dir=str(tmp_path / "b"), min_support=0.5),
                     samplers=[canned(samples[0])], progress=False)
    with pytest.raises(InvalidInputError, match="samplers"):
        label_corpus(GraphExtractor(backend=main), list(texts), config=config, progress=False)
    # labels stored by a run that did not check them together cannot be re-filtered by support
    out = str(tmp_path / "unchecked")
    label_corpus(canned(texts), list(texts), config=LabelConfig(out_dir=out, require_grounded=False),
                 samplers=[canned(samples[0])], progress=False)
    with pytest.raises(InvalidInputError, match="without min_support"):
        label_corpus(GraphExtractor(backend=main), list(texts), samplers=[canned(samples[0])], progress=False,
                     config=LabelConfig(out_dir=out, require_grounded=False, min_support=0.5))


def test_the_label_command_samples_with_the_teacher(tmp_path, monkeypatch):
    import hotmem
    from hotmem.cli import main

    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Haha, nice!\n")
    hotmem.configure(dspy.utils.DummyLM([{"statements": []}] * 3, adapter=dspy.JSONAdapter()))
    try:
        assert main(["label", str(corpus), "--program", "teacher", "--samples", "3", "--out", str(tmp_path)]) == 0
        assert main(["label", str(corpus), "--samples", "2", "--agree", "3", "--out", str(tmp_path)]) == 2
        for wrong in (["--samples", "2", "--agree", "1"], ["--samples", "1"]):  # support replaces agree, needs N > 1
            assert main(["label", str(corpus), *wrong, "--min-support", "0.5", "--out", str(tmp_path)]) == 2
        # the unoptimized teacher has no verify step to check with
        assert main(["label", str(corpus), "--program", "teacher", "--samples", "2", "--min-support", "0.5",
                     "--out", str(tmp_path / "checked")]) == 2
    finally:
        hotmem.configure()
    [item] = [json.loads(line) for line in (tmp_path / LABELS_FILE).read_text().splitlines()]
    assert item["error"] is None and len(item["samples"]) == 2


def test_the_label_command_scores_an_annotated_corpus(tmp_path, monkeypatch, capsys):
    import hotmem
    from hotmem.cli import main

    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "cache"))
    hotmem.configure(dspy.utils.DummyLM([{"references": [], "statements": []}] * 4, adapter=dspy.JSONAdapter()))
    try:
        assert main(["label", "gold", "--limit", "2", "--seed", "3", "--program", "teacher",
                     "--out", str(tmp_path)]) == 0
    finally:
        hotmem.configure()
    items = [json.loads(line) for line in (tmp_path / LABELS_FILE).read_text().splitlines()]
    assert [i["id"] for i in items] == [u.id for u in annotated_utterances("gold", seed=3)[:2]]
    scores = json.loads(capsys.readouterr().out)["against_reference"]
    assert scores["utterances"] == 2 and scores["label"]["recall"] == 0.0 and scores["label"]["annotated"] > 0


def test_the_label_command_leaves_out_what_a_run_was_taught(tmp_path, monkeypatch):
    """`--unseen-by RUN`: only records no stage of RUN drew are labelled, so the labels measure it on new text."""
    import hotmem
    from hotmem.cli import main
    from hotmem.pipeline.mixture import Mixture, MixtureSource, draw

    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "cache"))
    everything = annotated_utterances("gold")
    run = tmp_path / "run"
    run.mkdir()
    taught = Mixture(sources=[MixtureSource("gold", limit=len(everything) - 2)]).to_dict()
    (run / "manifest.json").write_text(json.dumps({"mixture": taught}))
    wider = tmp_path / "wider"  # a run that drew one record more
    wider.mkdir()
    (wider / "manifest.json").write_text(json.dumps({"mixture": Mixture(
        sources=[MixtureSource("gold", limit=len(everything) - 1)]).to_dict()}))
    hotmem.configure(dspy.utils.DummyLM([{"references": [], "statements": []}] * 8, adapter=dspy.JSONAdapter()))
    try:
        assert main(["label", "gold", "--unseen-by", str(run), "--program", "teacher", "--out",
                     str(tmp_path / "labels")]) == 0
        assert main(["label", "gold", "--unseen-by", str(run), "--unseen-by", str(wider), "--program", "teacher",
                     "--out", str(tmp_path / "labels-both")]) == 0
        assert main(["label", "gold", "--unseen-by", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    finally:
        hotmem.configure()
    labelled = [json.loads(line)["id"] for line in (tmp_path / "labels" / LABELS_FILE).read_text().splitlines()]
    drawn = {record.id for _, _, pairs in draw(Mixture(**taught)) for record, _ in pairs}
    assert len(labelled) == 2 and not drawn & set(labelled)
    assert set(labelled) | drawn == {u.id for u in everything}
    assert (tmp_path / "labels-both" / LABELS_FILE).read_text().count("\n") == 1  # unseen by either run


@needs_encoder
def test_the_shipped_encoder_votes_and_its_training_texts_can_be_left_out(tmp_path, monkeypatch):
    """`--with-program encoder` adds the shipped encoder student's label to the vote; `--unseen-by encoder` leaves
    out what it was taught (all of gold train: its stages drew it twelve times)."""
    import hotmem
    from hotmem.cli import main

    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "cache"))
    hotmem.configure(dspy.utils.DummyLM([{"references": [], "statements": []}] * 8, adapter=dspy.JSONAdapter()))
    try:
        assert main(["label", "gold", "--limit", "1", "--program", "teacher", "--with-program", "encoder",
                     "--agree", "1", "--out", str(tmp_path / "labels")]) == 0
        assert main(["label", "gold", "--program", "teacher", "--unseen-by", "encoder", "--out",
                     str(tmp_path / "unseen")]) == 0
    finally:
        hotmem.configure()
    [item] = [json.loads(line) for line in (tmp_path / "labels" / LABELS_FILE).read_text().splitlines()]
    [encoders] = item["samples"]
    turns = [Turn(**turn) for turn in item["turns"]]
    assert Graph.model_validate(encoders) == GraphExtractor(backend="encoder")(turns)
    assert encoders["relations"]  # the encoder found something the empty teacher label did not
    assert json.loads((tmp_path / "labels" / "report.json").read_text())["kept_with_relations"] == 1
    assert not (tmp_path / "unseen" / LABELS_FILE).exists() or not (tmp_path / "unseen" / LABELS_FILE).read_text()


def test_labels_are_scored_against_the_annotations_at_each_stage(tmp_path):
    lives = Relation(subject="speaker", predicate="lives_in", object="Oslo")
    wrong = Relation(subject="Oslo", predicate="lives_in", object="speaker")  # schema-invalid: the filters take it
    married = Relation(subject="speaker", predicate="married_to", object="Ben")  # the annotation cannot hold it
    entities = [Entity(name="speaker", type="PERSON"), Entity(name="Oslo", type="LOCATION"),
                Entity(name="Ben", type="PERSON")]
    texts = {"I live in Oslo with Ben.": Graph(entities=entities, relations=[lives, wrong, married]),
             "I moved to Oslo.": Graph(), "I like Oslo.": GOOD}
    reference = Graph(entities=entities[:2], relations=[lives])
    corpus = [Utterance(id=f"u{i}", turns=as_turns(text), reference=reference, annotates=["lives_in"])
              for i, text in enumerate(texts)] + [Utterance(id="plain", turns=as_turns("Hi!"))]
    texts["Hi!"] = GOOD  # no annotation: not scored
    report = label_corpus(canned(texts), corpus, config=LabelConfig(out_dir=str(tmp_path)), progress=False)
    scores = report.against_reference
    assert scores["utterances"] == 3
    # married_to is out of what the annotation holds; the reversed lives_in is wrong until the filters take it
    assert scores["label"] == {"precision": 0.6667, "recall": 0.6667, "f1": 0.6667, "correct": 2,
                                    "predicted": 3, "annotated": 3}
    assert (scores["filtered"]["precision"], scores["filtered"]["recall"]) == (1.0, 0.6667)
    assert scores["kept"] == scores["filtered"]
    [item] = [json.loads(line) for line in (tmp_path / LABELS_FILE).read_text().splitlines() if '"u0"' in line]
    assert Graph.model_validate(item["reference"]) == reference and item["annotates"] == ["lives_in"]


def test_annotated_corpora_carry_their_annotations_and_refuse_a_foreign_schema(tmp_path):
    gold = annotated_utterances("gold")
    assert len(gold) == 96 and all(u.reference is not None and u.annotates is None for u in gold)
    shuffled = annotated_utterances("gold", seed=1)
    assert sorted(u.id for u in shuffled) == sorted(u.id for u in gold) and shuffled != gold
    with pytest.raises(InvalidInputError, match="not a|no annotated"):
        annotated_utterances("labels")


@pytest.mark.skipif(not __import__("hotmem.data", fromlist=["find_data_root"]).find_data_root(),
                    reason="needs ../shared/data")
def test_a_mapped_corpus_says_which_predicates_its_annotations_hold():
    from hotmem.pipeline.mixture import PERSONAEXT_HELD_OUT

    utterances = annotated_utterances("personaext-conversation")
    assert len(utterances) > 5000 and all(u.reference.relations for u in utterances[:50])
    assert "lives_in" in utterances[0].annotates and "married_to" not in utterances[0].annotates
    assert all(int(u.id.split("-")[-1].split("@")[0]) > PERSONAEXT_HELD_OUT for u in utterances[:50])
    with pytest.raises(InvalidInputError, match="own schema"):
        annotated_utterances("conll04")


KILLABLE = """
import sys, time, dspy
from hotmem.extractor import GraphExtractor
from hotmem.pipeline.label import LabelConfig, label_corpus
from hotmem.types import Graph

class Slow:
    name = model = "slow"

    def __call__(self, turns):
        time.sleep(0.02)
        return Graph()

    def usage(self):
        return {"calls": 0, "prompt_tokens": 0, "output_tokens": 0}

texts = [f"utterance {i}" for i in range(400)]
label_corpus(GraphExtractor(backend=Slow()), texts, config=LabelConfig(out_dir=sys.argv[1]), progress=False)
"""


def test_sigkill_mid_run_loses_and_duplicates_nothing(tmp_path):
    script = tmp_path / "label_run.py"
    script.write_text(KILLABLE)
    out = tmp_path / "labels"
    labels = out / LABELS_FILE
    process = subprocess.Popen([sys.executable, str(script), str(out)])
    deadline = time.time() + 120
    while time.time() < deadline and (not labels.exists() or labels.read_text().count("\n") < 40):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = labels.read_text().count("\n")
    assert 40 <= before < 400
    subprocess.run([sys.executable, str(script), str(out)], check=True, timeout=300)
    ids = [json.loads(line)["id"] for line in labels.read_text().splitlines()]
    assert len(ids) == 400 and len(set(ids)) == 400
    assert len(load_labels(out)) == 400


def test_a_student_labels_without_loading_a_teacher_lm(tmp_path, monkeypatch):
    """`--program <student>`: the student runs its own model, so the 1.5B teacher need not be installed, and
    self-consistency (which samples a teacher's LM) is refused with a clear error."""
    import hotmem.lm
    from hotmem.cli import main

    def no_teacher(*args, **kwargs):
        raise AssertionError("a student's labelling run loaded a teacher LM")

    monkeypatch.setattr(hotmem.lm, "make_lm", no_teacher)
    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "cache"))
    student = tmp_path / "student"
    student.mkdir()
    (student / "student.gguf").write_bytes(b"")  # not loaded: nothing is labelled
    (student / "student.json").write_text(json.dumps({"prompt": "schema", "merged_gguf": "student.gguf"}))
    corpus = tmp_path / "empty.txt"
    corpus.write_text("")
    out = tmp_path / "labels"
    assert main(["label", str(corpus), "--program", str(student), "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["labelled"] == 0
    assert main(["label", str(corpus), "--program", str(student), "--samples", "2", "--out", str(out)]) == 2
    # another student's labels join the vote without a teacher LM either; --min-support needs a teacher's check
    assert main(["label", str(corpus), "--program", str(student), "--with-program", str(student), "--agree", "2",
                 "--out", str(out)]) == 0
    assert main(["label", str(corpus), "--program", str(student), "--with-program", str(student),
                 "--min-support", "0.5", "--out", str(out)]) == 2
    assert main(["label", str(corpus), "--program", str(student), "--with-program", str(student), "--agree", "3",
                 "--out", str(out)]) == 2


def test_the_evaluate_command_votes_over_samples_as_labelling_does(tmp_path, monkeypatch):
    import hotmem
    from hotmem.cli import main

    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "cache"))
    hotmem.configure(dspy.utils.DummyLM([{"references": [], "statements": []}] * 10, adapter=dspy.JSONAdapter()))
    evaluate = ["evaluate", "--dataset", "gold", "--split", "test", "--limit", "1", "--out", str(tmp_path / "eval")]
    try:
        assert main([*evaluate, "--program", "teacher", "--samples", "3"]) == 0
        assert main([*evaluate, "--program", "teacher", "--rescore", "--agree", "3"]) == 0
        assert main([*evaluate, "--program", "student", "--samples", "2"]) == 2
        # other pages of demos need a program that retrieves them
        assert main([*evaluate, "--program", "teacher", "--demo-pages", "1"]) == 2
        assert main([*evaluate, "--program", "student", "--demo-pages", "1"]) == 2
    finally:
        hotmem.configure()
    [row] = [json.loads(line) for line in (tmp_path / "eval" / "rows.jsonl").read_text().splitlines()]
    assert row["error"] is None and len(row["samples"]) == 3


def test_another_programs_labels_join_the_vote(tmp_path, monkeypatch):
    """`--with-program P`: P's graph of each input is stored beside the main one and votes with it."""
    import hotmem
    from hotmem.cli import main

    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "cache"))
    hotmem.configure(dspy.utils.DummyLM([{"references": [], "statements": []}] * 10, adapter=dspy.JSONAdapter()))
    evaluate = ["evaluate", "--dataset", "gold", "--split", "test", "--limit", "1", "--out", str(tmp_path / "eval")]
    try:
        assert main([*evaluate, "--program", "teacher", "--with-program", "teacher", "--samples", "2",
                     "--agree", "3"]) == 0
    finally:
        hotmem.configure()
    [row] = [json.loads(line) for line in (tmp_path / "eval" / "rows.jsonl").read_text().splitlines()]
    assert row["error"] is None and len(row["samples"]) == 3  # main, one sampled, the other program's
