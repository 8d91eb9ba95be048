import json
import dspy
import pytest

from hotmem.pipeline.metric import GraphMetric, score_graph
from hotmem.types import Entity, Graph, Relation, Turn

E = lambda n, t="PERSON": Entity(name=n, type=t)  # noqa: E731
R = lambda s, p, o: Relation(subject=s, predicate=p, object=o)  # noqa: E731

GOLD = Graph(
    entities=[E("speaker"), E("Anna"), E("Berlin", "LOCATION"), E("Siemens", "ORGANIZATION")],
    relations=[R("Anna", "sibling_of", "speaker"), R("Anna", "lives_in", "Berlin"), R("Anna", "works_at", "Siemens")],
)
TEXT = "My sister Anna lives in Berlin and works at Siemens."


def example(graph=GOLD, text=TEXT, speaker=None):
    return dspy.Example(turns=[Turn(speaker=speaker, text=text)], graph=graph).with_inputs("turns")


def test_perfect_prediction_scores_one():
    result = score_graph(GOLD, GOLD, text=TEXT)
    assert result.entity_prf == (1.0, 1.0, 1.0)
    assert result.relation_prf == (1.0, 1.0, 1.0)
    assert result.score == 1.0


def test_empty_gold_and_empty_prediction_is_perfect_and_spurious_is_penalised():
    assert score_graph(Graph(), Graph()).score == 1.0
    noisy = score_graph(Graph(), Graph(entities=[E("Hey", "MISC")]), text="Hey there")
    assert noisy.entity_prf[2] == 0.0 and noisy.spurious_entities == ["Hey"]


def test_normalisation_synonyms_and_inverses_match():
    pred = Graph(
        entities=[E("I"), E("anna"), E("berlin", "LOCATION"), E("the Siemens", "ORGANIZATION")],
        relations=[
            R("I", "sibling_of", "anna"),            # symmetric, other direction, speaker alias
            R("anna", "resides_in", "berlin"),       # synonym
            R("anna", "employed_by", "the Siemens"),  # synonym + article
        ],
    )
    result = score_graph(GOLD, pred, text=TEXT)
    assert result.relation_prf == (1.0, 1.0, 1.0)
    assert result.entity_prf == (1.0, 1.0, 1.0)


def test_inverse_predicate_counts_as_the_same_fact():
    gold = Graph(entities=[E("Leo"), E("speaker")], relations=[R("Leo", "child_of", "speaker")])
    pred = Graph(entities=[E("Leo"), E("speaker")], relations=[R("speaker", "parent_of", "Leo")])
    assert score_graph(gold, pred, text="My son Leo").relation_prf[2] == 1.0


def test_reversed_direction_and_wrong_predicate_are_told_apart():
    pred = Graph(
        entities=GOLD.entities,
        relations=[R("Berlin", "lives_in", "Anna"), R("Anna", "founded", "Siemens")],
    )
    result = score_graph(GOLD, pred, text=TEXT)
    assert result.relation_tp == 0
    assert result.triple_tp == 2  # predicate-agnostic: both pairs are right
    assert [p.subject for p, _ in result.reversed_relations] == ["Berlin"]
    assert [(p.predicate, g.predicate) for p, g in result.wrong_predicates] == [("founded", "works_at")]
    assert [r.predicate for r in result.missed_relations] == ["sibling_of"]
    assert result.invalid_relations == [pred.relations[0]]  # LOCATION cannot live in a PERSON


def test_ungrounded_and_pronoun_entities_are_reported():
    pred = Graph(entities=[E("she"), E("Paris", "LOCATION")])
    result = score_graph(GOLD, pred, text=TEXT)
    assert result.pronoun_entities == ["she"]
    assert "Paris" in result.ungrounded_entities and result.grounded_rate == 0.0


def test_metric_is_a_float_for_evaluate_and_feedback_for_gepa():
    metric = GraphMetric()
    pred = dspy.Prediction(
        graph=Graph(entities=[E("Anna"), E("Berlin", "LOCATION")], relations=[R("Berlin", "lives_in", "Anna")]),
        statements=["She lives in Berlin."],
    )
    score = metric(example(), pred)
    # 0.5 x relation F1 0 (the one relation is reversed) + 0.3 x entity F1 2/3 + 0.1 x triple F1 1/2 (the pair is
    # right) + 0.1 x grounded 1
    assert type(score) is float and score == pytest.approx(0.5 * 0 + 0.3 * 2 / 3 + 0.1 * 0.5 + 0.1 * 1.0)

    relations = metric(example(), pred, None, "relations", None)
    assert relations.score == score
    assert "Reversed direction" in relations.feedback and "Missed relations" in relations.feedback
    entities = metric(example(), pred, None, "entities", None).feedback
    assert "Missed entities: speaker, Siemens" in entities and "Reversed" not in entities
    coref = metric(example(), pred, None, "coref", None).feedback
    assert "Unresolved pronouns" in coref and "She" in coref
    decompose = metric(example(), pred, None, "decompose", None).feedback
    assert "missed clauses" in decompose and "works_at" in decompose


def test_the_verify_step_is_told_what_it_rejected_beside_what_was_missed():
    pred = dspy.Prediction(graph=Graph(entities=[E("Anna"), E("Berlin", "LOCATION")]),
                           rejected_relations=[R("Anna", "lives_in", "Berlin")])
    feedback = GraphMetric()(example(), pred, None, "verify", None).feedback
    assert "Rejected by the check: (Anna, lives_in, Berlin)" in feedback and "Missed relations" in feedback


def test_decompose_feedback_on_chit_chat():
    pred = dspy.Prediction(graph=Graph(), statements=["The speaker says hello."])
    feedback = GraphMetric()(example(Graph(), "hello!"), pred, None, "decompose", None).feedback
    assert "states no fact" in feedback


@pytest.mark.parametrize("pred", [None, dspy.Prediction(), dspy.Prediction(graph="garbage")])
def test_missing_or_broken_prediction_scores_zero_not_crash(pred):
    assert GraphMetric()(example(), pred) == 0.0


def test_relations_outside_the_annotated_pairs_are_not_scored():
    predicted = Graph(entities=GOLD.entities, relations=[
        R("Anna", "lives_in", "Berlin"), R("Siemens", "located_in", "Berlin"), R("speaker", "works_at", "Siemens")
    ])
    everything = score_graph(GOLD, predicted, text=TEXT)
    assert (everything.relation_tp, everything.relation_pred) == (1, 3)
    # only (Anna, Berlin) and (speaker, Siemens) were annotated: the Siemens-Berlin guess is unlabeled
    annotated = score_graph(GOLD, predicted, text=TEXT, scored_pairs=[("Berlin", "Anna"), ("speaker", "Siemens")])
    assert (annotated.relation_tp, annotated.relation_pred) == (1, 2)
    assert annotated.spurious_relations == [R("speaker", "works_at", "Siemens")]


def test_relations_with_predicates_the_annotation_cannot_hold_are_not_scored():
    gold = Graph(entities=[E("speaker"), E("Anna"), E("Tom"), E("Berlin", "LOCATION")],
                 relations=[R("Anna", "child_of", "speaker"), R("Anna", "lives_in", "Berlin")])
    text = "My daughter Anna lives in Berlin with Tom."
    predicted = Graph(entities=gold.entities, relations=[
        R("speaker", "parent_of", "Anna"), R("Anna", "resides_in", "Berlin"), R("Tom", "lives_in", "Berlin"),
        R("Anna", "sibling_of", "Tom"),
    ])
    everything = score_graph(gold, predicted, text=text)
    assert (everything.relation_tp, everything.relation_pred) == (2, 4)
    # a corpus mapped onto child_of and lives_in: the inverse and the synonym are scored, the sibling guess is not
    mapped = score_graph(gold, predicted, text=text, scored_predicates=["child_of", "lives_in"])
    assert (mapped.relation_tp, mapped.relation_pred, mapped.relation_gold) == (2, 3, 2)
    assert mapped.spurious_relations == [R("Tom", "lives_in", "Berlin")]


class _Canned:
    """A backend answering GOLD's graph to anything, counting its calls: evaluation's bookkeeping under test."""

    name = model = "canned"

    def __init__(self):
        self.calls = 0

    def __call__(self, turns):
        self.calls += 1
        return GOLD

    def usage(self):
        return {"calls": self.calls, "prompt_tokens": 0, "output_tokens": 7 * self.calls}


class _Checking(_Canned):
    """GOLD's graph, from a teacher whose verify step doubts `works_at`; counts the facts it checks."""

    program = type("Verifying", (), {"verifies": True})()

    def __init__(self):
        super().__init__()
        self.checked = 0

    def stated_probabilities(self, turns, relations):
        self.checked += len(relations)
        return [0.1 if r.predicate == "works_at" else 0.9 for r in relations]


def test_min_support_checks_the_samples_facts_once_and_a_rescore_checks_stored_samples(tmp_path):
    from hotmem.errors import InvalidInputError
    from hotmem.extractor import GraphExtractor
    from hotmem.pipeline.evaluate import evaluate_program
    from hotmem.schema import CONVERSATION_SCHEMA
    from hotmem.types import Record

    main = _Checking()
    records = [Record(id="r0", turns=[Turn(text=TEXT)], graph=GOLD)]
    extractor, samplers = GraphExtractor(backend=main), [GraphExtractor(backend=_Canned())]
    plain = evaluate_program(extractor, records, schema=CONVERSATION_SCHEMA, out_dir=tmp_path, progress=False,
                             samplers=samplers)
    assert plain.rows[0].relation == (3, 3, 3) and plain.rows[0].stated is None and main.checked == 0
    # both labels state all three facts; works_at's support is (1 + 0.1) / 2 = 0.55
    strict = evaluate_program(extractor, records, schema=CONVERSATION_SCHEMA, out_dir=tmp_path, progress=False,
                              rescore=True, min_support=0.6)
    assert strict.rows[0].relation == (2, 2, 3) and main.checked == 3 and main.calls == 1  # nothing ran again
    assert {f["predicate"]: f["stated"] for f in strict.rows[0].stated}["works_at"] == 0.1
    again = evaluate_program(extractor, records, schema=CONVERSATION_SCHEMA, out_dir=tmp_path, progress=False,
                             rescore=True, min_support=0.5)
    assert again.rows[0].relation == (3, 3, 3) and main.checked == 3  # the stored probabilities
    fresh = evaluate_program(extractor, records, schema=CONVERSATION_SCHEMA, out_dir=tmp_path / "b",
                             progress=False, samplers=samplers, min_support=0.6)
    assert fresh.rows[0].relation == (2, 2, 3) and main.checked == 6
    with pytest.raises(InvalidInputError, match="verify"):
        evaluate_program(GraphExtractor(backend=_Canned()), records, schema=CONVERSATION_SCHEMA, progress=False,
                         samplers=samplers, min_support=0.5)
    with pytest.raises(InvalidInputError, match="not both"):
        evaluate_program(extractor, records, schema=CONVERSATION_SCHEMA, progress=False, samplers=samplers,
                         agree=1, min_support=0.5)


def test_rescore_scores_the_saved_graphs_against_the_records_as_now_loaded(tmp_path):
    from hotmem.errors import InvalidInputError
    from hotmem.extractor import GraphExtractor
    from hotmem.pipeline.evaluate import evaluate_program
    from hotmem.schema import CONVERSATION_SCHEMA
    from hotmem.types import Record

    backend = _Canned()
    extractor = GraphExtractor(backend=backend)
    records = [Record(id=f"r{i}", turns=[Turn(text=TEXT)], graph=GOLD) for i in range(2)]
    first = evaluate_program(extractor, records, schema=CONVERSATION_SCHEMA, out_dir=tmp_path, progress=False)
    assert first.summary()["relation_f1"] == 1.0 and backend.calls == 2
    # the annotation changes (a loader fix): one gold relation fewer in r0
    fewer = GOLD.model_copy(update={"relations": GOLD.relations[:2]})
    records[0] = records[0].model_copy(update={"graph": fewer})
    kept = evaluate_program(extractor, records, schema=CONVERSATION_SCHEMA, out_dir=tmp_path, progress=False)
    assert kept.summary()["relation_f1"] == 1.0  # resuming keeps the saved scores
    again = evaluate_program(extractor, records, schema=CONVERSATION_SCHEMA, out_dir=tmp_path, progress=False,
                             rescore=True)
    assert backend.calls == 2  # nothing ran again
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["relation"] for r in rows] == [[2, 3, 2], [3, 3, 3]]
    assert [r["output_tokens"] for r in rows] == [7, 7]  # the run's cost stays
    assert again.summary()["relation_p"] == 5 / 6
    with pytest.raises(InvalidInputError, match="out_dir"):
        evaluate_program(extractor, records, schema=CONVERSATION_SCHEMA, rescore=True)


def test_a_fact_stated_twice_counts_once_in_either_graph():
    twice = Graph(entities=[E("Anna"), E("Ben"), E("Cleo")],
                  relations=[R("Anna", "married_to", "Ben"), R("Ben", "married_to", "Anna"),
                             R("Anna", "parent_of", "Cleo"), R("Cleo", "child_of", "Anna")])
    once = Graph(entities=twice.entities, relations=[R("Ben", "married_to", "Anna"), R("Cleo", "child_of", "Anna")])
    text = "Anna is married to Ben; Cleo is their daughter."
    assert score_graph(twice, once, text=text).relation_prf == (1.0, 1.0, 1.0)
    result = score_graph(once, twice, text=text)
    assert (result.relation_tp, result.relation_pred, result.relation_gold) == (2, 2, 2)


def test_self_consistency_scores_the_vote_and_a_rescore_votes_again(tmp_path):
    from hotmem.errors import InvalidInputError
    from hotmem.extractor import GraphExtractor
    from hotmem.pipeline.evaluate import evaluate_program
    from hotmem.schema import CONVERSATION_SCHEMA
    from hotmem.types import Record

    class _Dropping(_Canned):
        """A sampler that states all of GOLD's facts but the last `missing`."""

        def __init__(self, missing):
            super().__init__()
            self.missing = missing

        def __call__(self, turns):
            self.calls += 1
            return GOLD.model_copy(update={"relations": GOLD.relations[:len(GOLD.relations) - self.missing]})

    main, samplers = _Canned(), [_Dropping(1), _Dropping(2)]
    records = [Record(id="r0", turns=[Turn(text=TEXT)], graph=GOLD)]
    extractors = [GraphExtractor(backend=b) for b in (main, *samplers)]
    voted = evaluate_program(extractors[0], records, schema=CONVERSATION_SCHEMA, out_dir=tmp_path, progress=False,
                             samplers=extractors[1:])
    # three labels: the last fact is stated once, the second-to-last twice (a majority), the first three times
    assert voted.rows[0].relation == (2, 2, 3)
    assert voted.rows[0].lm_calls == 3 and voted.rows[0].output_tokens == 21
    assert len(voted.rows[0].samples) == 3
    unanimous = evaluate_program(extractors[0], records, schema=CONVERSATION_SCHEMA, out_dir=tmp_path,
                                 progress=False, rescore=True, agree=3)
    assert unanimous.rows[0].relation == (1, 1, 3) and main.calls == 1
    assert evaluate_program(extractors[0], records, schema=CONVERSATION_SCHEMA, out_dir=tmp_path, progress=False,
                            rescore=True, agree=1).rows[0].relation == (3, 3, 3)
    with pytest.raises(InvalidInputError, match="agree"):
        evaluate_program(extractors[0], records, schema=CONVERSATION_SCHEMA, out_dir=tmp_path, progress=False,
                         rescore=True, agree=4)
