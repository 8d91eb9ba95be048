"""Retrieved demonstrations: the pool, DSPy's KNN over its vectors, the teacher's per-call demos, save and load."""

import dspy
import numpy as np
import pytest

from conftest import needs_minilm
from hotmem.errors import InvalidInputError
from hotmem.schema import CONVERSATION_SCHEMA
from hotmem.teacher.demos import DemoRetriever
from hotmem.teacher.program import Teacher
from hotmem.teacher.saved import load_program, save_program
from hotmem.types import Graph, Record, Turn, as_turns

TOPICS = ("dog", "cat", "berlin", "paris", "nurse", "teacher")


class BagOfTopics:
    """A deterministic embedder: one axis per topic word. Counts how many texts it embedded."""

    def __init__(self):
        self.embedded = 0

    def __call__(self, texts):
        self.embedded += len(texts)
        vectors = np.array([[t.lower().count(w) for w in TOPICS] for t in texts], dtype=np.float32) + 0.01
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def entry(text, subject, predicate, obj, obj_type):
    return {"conversation": text, "statements": [text.replace("I ", "speaker ")],
            "entities": [{"name": subject, "type": "PERSON"}, {"name": obj, "type": obj_type}],
            "relations": [{"subject": subject, "predicate": predicate, "object": obj}]}


POOL = [entry("I have a dog named Rex.", "speaker", "has_pet", "Rex", "ANIMAL"),
        entry("I live in Berlin.", "speaker", "lives_in", "Berlin", "LOCATION"),
        entry("I work as a nurse.", "speaker", "has_job", "nurse", "MISC"),
        entry("My cat sleeps all day.", "speaker", "has_pet", "cat", "ANIMAL")]


def test_the_nearest_pool_examples_are_retrieved_and_an_input_is_not_its_own_demo():
    retriever = DemoRetriever(POOL, k=2, embed=BagOfTopics())
    nearest = retriever.nearest("We moved to Berlin last year, the dog loves it.")
    assert {e["conversation"] for e in nearest} == {"I live in Berlin.", "I have a dog named Rex."}
    assert "I live in Berlin." not in [e["conversation"] for e in retriever.nearest("I live in Berlin.")]
    demos = retriever("Paris is where my cat was born.")
    assert [d.relations[0]["object"] for d in demos["relations"]][-1] == "cat"  # nearest last
    assert demos["entities"][-1].statements == ["My cat sleeps all day."]


def test_a_quota_per_source_keeps_a_small_source_from_being_crowded_out():
    pool = [{**e, "source": "big"} for e in POOL[:3]] + [{**POOL[3], "source": "small"}]
    retriever = DemoRetriever(pool, k={"big": 1, "small": 1}, embed=BagOfTopics())
    nearest = retriever.nearest("The dog and Berlin.")
    assert [e["conversation"] for e in nearest][1] == "My cat sleeps all day."  # the only one of its source
    assert len(nearest) == 2
    with pytest.raises(InvalidInputError, match="no example from 'absent'"):
        DemoRetriever(pool, k={"absent": 1}, embed=BagOfTopics())


def test_pages_show_the_next_k_nearest_in_turn():
    retriever = DemoRetriever(POOL, k=1, embed=BagOfTopics())
    query = "My dog in Berlin, Berlin, Berlin."
    ranked = [e["conversation"] for e in DemoRetriever(POOL, k=3, embed=BagOfTopics()).nearest(query)]
    paged = [retriever.with_page(page).nearest(query)[0]["conversation"] for page in range(3)]
    assert paged == ranked and ranked[:2] == ["I live in Berlin.", "I have a dog named Rex."]
    assert retriever.with_page(9).nearest(query) == []  # past the pool: no demos, not an error
    # an input in the pool is still not its own demo on a later page
    assert "I live in Berlin." not in [e["conversation"] for p in range(3)
                                       for e in retriever.with_page(p).nearest("I live in Berlin.")]
    with pytest.raises(InvalidInputError, match="page"):
        DemoRetriever(POOL, k=1, embed=BagOfTopics(), page=-1)


def test_a_teacher_backend_on_another_page_of_demos_leaves_the_original_alone():
    from hotmem.backends import TeacherBackend

    backend = TeacherBackend(Teacher(retriever=DemoRetriever(POOL, k=1, embed=BagOfTopics())), dspy.utils.DummyLM([]))
    later = backend.with_demo_page(2)
    assert later.program.retriever.page == 2 and backend.program.retriever.page == 0
    assert later.lm is backend.lm and later.check == backend.check
    assert later.program.entities.demos == backend.program.entities.demos  # the program's own demos kept
    with pytest.raises(InvalidInputError, match="retrieves no demos"):
        TeacherBackend(Teacher(), dspy.utils.DummyLM([])).with_demo_page(1)


def test_a_teacher_backend_on_another_lm_keeps_its_program_and_check():
    from hotmem.backends import TeacherBackend

    backend = TeacherBackend(Teacher(retriever=DemoRetriever(POOL, k=1, embed=BagOfTopics())), dspy.utils.DummyLM([]))
    sampling = dspy.utils.DummyLM([])
    sampled = backend.with_lm(sampling)
    assert sampled.lm is sampling and backend.lm is not sampling and sampled.check == backend.check
    assert sampled.program is not backend.program  # its own copy: labels may run on threads
    assert sampled.program.retriever.settings() == backend.program.retriever.settings()
    assert sampled.program.relations.signature.instructions == backend.program.relations.signature.instructions


def test_bad_pools_are_typed_errors():
    with pytest.raises(InvalidInputError, match="empty"):
        DemoRetriever([], embed=BagOfTopics())
    with pytest.raises(InvalidInputError, match="lacks"):
        DemoRetriever([{"conversation": "x"}], embed=BagOfTopics())
    with pytest.raises(InvalidInputError, match="k must"):
        DemoRetriever(POOL, k=0, embed=BagOfTopics())


def test_the_teacher_shows_retrieved_demos_to_the_entities_and_relations_steps():
    answers = [{"statements": ["speaker lives in Paris."]},
               {"entities": [{"name": "speaker", "type": "PERSON"}, {"name": "Paris", "type": "LOCATION"}]},
               {"relations": [{"subject": "speaker", "predicate": "lives_in", "object": "Paris"}]}]
    lm = dspy.utils.DummyLM(answers, adapter=dspy.JSONAdapter())
    teacher = Teacher(retriever=DemoRetriever(POOL, k=1, embed=BagOfTopics()))
    seed_entities_demos = len(teacher.entities.demos)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        graph = teacher(turns=as_turns("I live in Paris, near Berlin.")).graph
    assert [r.triple for r in graph.relations] == [("speaker", "lives_in", "Paris")]
    relations_prompt = str(lm.history[-1]["messages"])
    assert "I live in Berlin." not in relations_prompt and "speaker live in Berlin." in relations_prompt
    assert "lives_in" in relations_prompt
    assert len(teacher.entities.demos) == seed_entities_demos  # per-call demos leave the program's own alone


def test_a_saved_program_loads_its_pool_and_vectors_without_embedding_the_pool(tmp_path, monkeypatch):
    teacher = Teacher(retriever=DemoRetriever(POOL, k=2, embed=BagOfTopics()))
    save_program(teacher, tmp_path / "program")
    embedder = BagOfTopics()
    monkeypatch.setattr("hotmem.teacher.demos.minilm_embedder", lambda: embedder)
    loaded = load_program(tmp_path / "program")
    assert loaded.retriever.settings() == {"k": 2, "pool": 4, "embedder": "all-MiniLM-L6-v2"}
    assert embedder.embedded == 0
    assert loaded.retriever.nearest("a dog")[0]["conversation"] == "I have a dog named Rex."
    assert embedder.embedded == 1  # the query only
    save_program(Teacher(retriever=loaded.retriever.with_page(1)), tmp_path / "paged")
    assert load_program(tmp_path / "paged").retriever.page == 1


def test_the_pool_names_the_speaker_and_keeps_only_examples_whose_statements_hold_their_entities():
    """...and keeps chit-chat that states no fact: the demo a teacher needs most where it would invent one."""
    from hotmem.pipeline.pool import demo_pool
    from hotmem.teacher.program import speaker_statements

    assert speaker_statements([Turn(speaker="Anna", text="I'm a nurse. My dog is old!")]) == \
        ["Anna is a nurse.", "Anna's dog is old!"]
    said = Record(id="a", turns=[Turn(text="i have a dog named max")], graph=Graph.model_validate({
        "entities": [{"name": "speaker", "type": "PERSON"}, {"name": "max", "type": "ANIMAL"}],
        "relations": [{"subject": "speaker", "predicate": "has_pet", "object": "max"}]}))
    unsaid = Record(id="b", turns=[Turn(text="she has a dog")], graph=Graph.model_validate({
        "entities": [{"name": "Mia", "type": "PERSON"}, {"name": "dog", "type": "ANIMAL"}],
        "relations": [{"subject": "Mia", "predicate": "has_pet", "object": "dog"}]}))
    chat = Record(id="c", turns=[Turn(text="Haha, what a game last night!")], graph=Graph())
    pool = demo_pool([said, unsaid, said, chat])
    assert len(pool) == 2 and pool[0]["statements"] == ["speaker have a dog named max"]
    assert pool[1]["entities"] == pool[1]["relations"] == []
    assert demo_pool([said], source="gold")[0]["source"] == "gold"
    assert CONVERSATION_SCHEMA.get(pool[0]["relations"][0]["predicate"]) is not None


def test_optimize_with_budget_zero_saves_the_retrieving_program_without_gepa(tmp_path, monkeypatch):
    from hotmem.data import load_gold
    from hotmem.pipeline.optimize import OptimizeConfig, optimize

    monkeypatch.setattr("hotmem.teacher.demos.minilm_embedder", BagOfTopics)
    train = load_gold("train")
    config = OptimizeConfig(budget=0, retrieve=3, pool=("gold",), out_dir=str(tmp_path / "out"),
                            log_dir=str(tmp_path / "log"))
    result = optimize(config, train, load_gold("dev"), task_lm=dspy.utils.DummyLM([]), reflection_lm=object())
    assert result.manifest["gepa"] is None and result.manifest["demo_retrieval"]["k"] == 3
    loaded = load_program(result.out_dir)
    assert loaded.retriever.settings()["pool"] == result.manifest["demo_retrieval"]["pool"] == 96
    assert not (tmp_path / "log").exists()


def test_the_retrieve_option_takes_a_number_or_a_quota_per_source():
    from hotmem.cli import _retrieve

    assert _retrieve("4") == 4
    assert _retrieve("gold=3, personaext-conversation=1") == {"gold": 3, "personaext-conversation": 1}
    with pytest.raises(InvalidInputError, match="--retrieve"):
        _retrieve("gold=three")


def test_a_quota_per_source_survives_saving(tmp_path):
    pool = [{**e, "source": "big"} for e in POOL[:3]] + [{**POOL[3], "source": "small"}]
    save_program(Teacher(retriever=DemoRetriever(pool, k={"big": 2, "small": 1}, embed=BagOfTopics())),
                 tmp_path / "p")
    loaded = load_program(tmp_path / "p").retriever
    assert loaded.k == {"big": 2, "small": 1}
    loaded._embed.embed = BagOfTopics()
    assert len(loaded.nearest("a cat in Paris")) == 3


def test_validation_takes_more_records_from_a_data_set_in_the_same_schema(monkeypatch, capsys):
    """`--val-extra gold:0:5` appends records 0-4 of gold to the validation set; another schema is refused."""
    from hotmem.cli import _extra_set, main
    from hotmem.data import load_gold
    from hotmem.errors import SchemaMismatchError

    seen = {}

    def fake_optimize(config, trainset, valset, schema):
        seen["val"] = [r.id for r in valset]
        raise SchemaMismatchError("stop here")

    monkeypatch.setattr("hotmem.pipeline.optimize.optimize", fake_optimize)
    assert main(["optimize", "--val-limit", "2", "--val-extra", "gold:0:5", "--val-extra", "gold"]) == 2
    gold = [r.id for r in load_gold()]
    assert seen["val"][2:7] == gold[:5] and seen["val"][7:] == gold
    assert _extra_set("personaext-conversation:1000:100") == ("personaext-conversation", 1000, 100)
    with pytest.raises(InvalidInputError, match="--val-extra"):
        _extra_set("gold:ten")


@needs_minilm
def test_minilm_embeds_offline_once_a_process_and_ranks_by_meaning():
    from hotmem.embedding import _sentence_transformer, minilm_embedder

    first, second = minilm_embedder(), minilm_embedder()
    assert _sentence_transformer.cache_info().currsize == 1  # the second embedder shares the first's model
    vectors = first(["My dog is called Rex.", "I have a puppy named Rex.", "The stock market fell today."])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    np.testing.assert_allclose(second(["My dog is called Rex."])[0], vectors[0], rtol=1e-4, atol=1e-5)


def test_the_evaluate_command_varies_the_demos_of_its_other_labels(tmp_path, monkeypatch):
    import json

    import hotmem
    from hotmem.cli import main

    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "cache"))
    monkeypatch.setattr("hotmem.teacher.demos.minilm_embedder", BagOfTopics)
    save_program(Teacher(retriever=DemoRetriever(POOL, k=1, embed=BagOfTopics())), tmp_path / "program")
    answer = {"references": [], "statements": ["speaker has a dog."],
              "entities": [{"name": "speaker", "type": "PERSON"}, {"name": "dog", "type": "ANIMAL"}],
              "relations": [{"subject": "speaker", "predicate": "has_pet", "object": "dog"}]}
    lm = dspy.utils.DummyLM([answer] * 20, adapter=dspy.JSONAdapter())
    hotmem.configure(lm)
    try:
        assert main(["evaluate", "--dataset", "gold", "--split", "test", "--limit", "1", "--program",
                     str(tmp_path / "program"), "--demo-pages", "2",
                     "--out", str(tmp_path / "eval")]) == 0
    finally:
        hotmem.configure()
    [row] = [json.loads(line) for line in (tmp_path / "eval" / "rows.jsonl").read_text().splitlines()]
    assert len(row["samples"]) == 3
    assert row["lm_calls"] == len(lm.history)  # the three labels share one LM: its calls are counted once
    # each label's relations step saw another pool example as its retrieved demo
    relations_prompts = [str(call["messages"]) for call in lm.history
                         if "output fields are:\n1. `relations`" in call["messages"][0]["content"]]
    shown = {frozenset(e["statements"][0] for e in POOL if e["statements"][0] in prompt)
             for prompt in relations_prompts}
    assert len(shown) == 3 and all(len(demos) == 1 for demos in shown)


def test_the_evaluate_command_loads_the_program_once_for_all_its_labels(tmp_path, monkeypatch, capsys):
    import json

    import hotmem
    from hotmem.cli import main

    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "cache"))
    monkeypatch.setattr("hotmem.teacher.demos.minilm_embedder", BagOfTopics)
    save_program(Teacher(retriever=DemoRetriever(POOL, k=1, embed=BagOfTopics())), tmp_path / "program")
    lm = dspy.utils.DummyLM([{"references": [], "statements": [], "entities": [], "relations": []}] * 20,
                            adapter=dspy.JSONAdapter())
    hotmem.configure(lm)
    try:
        for _ in range(2):  # a second in-process run logs through one handler, not two
            assert main(["evaluate", "--dataset", "gold", "--split", "test", "--limit", "1", "--program",
                         str(tmp_path / "program"), "--samples", "3", "--demo-pages", "1",
                         "--out", str(tmp_path / "eval")]) == 0
    finally:
        hotmem.configure()
    [row] = [json.loads(line) for line in (tmp_path / "eval" / "rows.jsonl").read_text().splitlines()]
    assert len(row["samples"]) == 4
    assert capsys.readouterr().err.count("loaded the program saved in") == 2
