import json
import math

import dspy
import pytest

from hotmem.assemble import TYPE_MISMATCH_FACTOR, ExtractedEntity, ExtractedRelation, assemble_graph, chunk_turns
from hotmem.errors import ExtractionError, InvalidInputError
from hotmem.extractor import GraphExtractor
from hotmem.schema import CONVERSATION_SCHEMA
from hotmem.teacher.program import Teacher
from hotmem.teacher.signatures import signatures_for
from hotmem.types import Turn, as_turns


def scripted(*answers):
    return dspy.utils.DummyLM(list(answers), adapter=dspy.JSONAdapter())


FULL_RUN = (
    {"references": [{"mention": "my", "refers_to": "speaker"}, {"mention": "She", "refers_to": "Potola"}]},
    {"statements": ["Potola is five years old.", "Potola is the speaker's cat."]},
    {"entities": [{"name": "Potola", "type": "ANIMAL"}, {"name": "five years", "type": "QUANTITY"},
                  {"name": "speaker", "type": "PERSON"}, {"name": "she", "type": "ANIMAL"}]},
    {"relations": [{"subject": "Potola", "predicate": "has_age", "object": "five years"},
                   {"subject": "I", "predicate": "has_pet", "object": "She"},
                   {"subject": "Potola", "predicate": "has_age", "object": "five years"},
                   {"subject": "Potola", "predicate": "lives_in", "object": "Narnia"}]},
)


def run(program, lm, text):
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        return program(turns=as_turns(text))


def test_teacher_composes_four_steps_into_a_clean_graph():
    lm = scripted(*FULL_RUN)
    pred = run(Teacher(), lm, "Did I tell you that Potola is five years old? She's my cat.")
    graph = pred.graph
    assert len(lm.history) == 4
    assert {e.name for e in graph.entities} == {"Potola", "five years", "speaker"}  # pronoun entity dropped
    # pronoun endpoint resolved through coref, duplicate dropped, endpoint that is no entity dropped
    assert sorted(r.triple for r in graph.relations) == [
        ("Potola", "has_age", "five years"),
        ("speaker", "has_pet", "Potola"),
    ]
    assert pred.statements[0] == "Potola is five years old."
    assert graph.confidence == 1.0


def test_names_outside_the_schema_are_dropped_not_fatal():
    # what a served model that ignores the schema's enums can answer
    lm = scripted(
        {"statements": ["Tom is speaker's brother.", "Tom lives in Oslo."]},
        {"entities": [{"name": "Tom", "type": "PERSON"}, {"name": "Oslo", "type": "CITY"}]},
        {"relations": [{"subject": "Tom", "predicate": "brother_of_speaker", "object": "speaker"},
                       {"subject": "Tom", "predicate": "lives_in", "object": "Oslo"}]},
    )
    graph = run(Teacher(), lm, "My brother Tom lives in Oslo.").graph
    assert sorted(r.triple for r in graph.relations) == [("Tom", "lives_in", "Oslo")]
    # CITY is not a schema type; the one type lives_in allows for its object is
    assert {e.name: e.type for e in graph.entities}["Oslo"] == "LOCATION"
    # the decoding grammar still gets the schema's names
    from pydantic import TypeAdapter

    schema = TypeAdapter(Teacher().relations.signature.output_fields["relations"].annotation).json_schema()
    assert "lives_in" in json.dumps(schema) and '"enum"' in json.dumps(schema)


def test_coref_is_skipped_when_only_first_person_pronouns_occur():
    from hotmem.teacher.program import first_person_references

    refs = first_person_references([Turn(speaker="Anna", text="I love my dog."), Turn(text="Me too")])
    assert [(r.mention, r.refers_to) for r in refs] == [("I", "Anna"), ("my", "Anna"), ("Me", "speaker")]
    assert first_person_references([Turn(text="I met her yesterday")]) is None


def test_seed_demos_are_attached_only_where_the_schema_fits():
    from hotmem.data import CONLL04_SCHEMA

    teacher = Teacher()
    assert len(teacher.relations.demos) == 2 and len(teacher.coref.demos) == 2
    assert len(teacher.decompose.demos) == 3
    other = Teacher(CONLL04_SCHEMA)
    assert other.relations.demos == []
    # CoNLL04 has no ANIMAL or QUANTITY type: the Potola demo would teach types the schema lacks
    assert len(other.entities.demos) == 1
    assert all("Potola" not in " ".join(d.statements) for d in other.entities.demos)


def test_a_teacher_that_reads_sentences_skips_coref_and_decompose_and_its_demos_read_sentences_too():
    teacher = Teacher(reads="sentences")
    lm = scripted({"entities": [{"name": "Anna", "type": "PERSON"}, {"name": "Tom", "type": "PERSON"},
                                {"name": "Oslo", "type": "LOCATION"}]},
                  {"relations": [{"subject": "Tom", "predicate": "sibling_of", "object": "Anna"},
                                 {"subject": "Tom", "predicate": "lives_in", "object": "Oslo"}]})
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        pred = teacher(turns=[Turn(speaker="Anna", text="My brother Tom moved. He lives in Oslo now.")])
    assert len(lm.history) == 2  # entities and relations only, although "He" is a pronoun
    assert pred.statements == ["Anna's brother Tom moved.", "He lives in Oslo now."]
    assert {(r.subject, r.predicate, r.object) for r in pred.graph.relations} == {
        ("Tom", "sibling_of", "Anna"), ("Tom", "lives_in", "Oslo")}
    # the seed demos show the sentences as said, pronouns and all, answered with the facts they state
    assert teacher.relations.demos[1].statements == [
        "Anna's brother Tom just started at Equinor.", "Does he like it?", "He loves it.",
        "He even moved to Stavanger for it."]
    assert Teacher().relations.demos[1].statements[0] == "Tom is Anna's brother."
    with pytest.raises(InvalidInputError, match="reads is one of"):
        Teacher(reads="paragraphs")


def test_a_verifying_teacher_keeps_only_the_facts_its_check_finds_stated():
    teacher = Teacher(reads="sentences", verify=True)
    lm = scripted({"entities": [{"name": "Anna", "type": "PERSON"}, {"name": "Tom", "type": "PERSON"},
                                {"name": "Oslo", "type": "LOCATION"}]},
                  {"relations": [{"subject": "Tom", "predicate": "sibling_of", "object": "Anna"},
                                 {"subject": "Anna", "predicate": "lives_in", "object": "Oslo"}]},
                  {"stated": True}, {"stated": False})
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        pred = teacher(turns=[Turn(speaker="Anna", text="My brother Tom lives in Oslo.")])
    assert len(lm.history) == 4  # entities, relations, one check per proposed fact
    assert [r.triple for r in pred.graph.relations] == [("Tom", "sibling_of", "Anna")]
    assert [(r.subject, r.predicate, r.object) for r in pred.rejected_relations] == [("Anna", "lives_in", "Oslo")]
    # each check reads the sentences and the fact with what its predicate means, and decodes greedily
    check = lm.history[3]
    assert "Anna lives_in Oslo (lives_in: resides in a place)" in check["messages"][-1]["content"]
    assert check["kwargs"]["temperature"] == 0.0
    assert not Teacher().verifies and "verify" not in dict(Teacher().named_predictors())


class VerdictEngine:
    """An in-process engine answering each check `{"stated": true}` with the given log-probabilities at the verdict
    token (as the embedded engine reports them), and keeping each request's `logprobs`."""

    supported_params = ("response_format", "max_tokens", "temperature", "logprobs", "top_logprobs")
    supports_response_schema = True

    def __init__(self, *verdicts: dict[str, float]):
        self.verdicts, self.asked = list(verdicts), []

    def complete(self, request):
        from dspy import lm15

        self.asked.append(request.config.logprobs)
        top = tuple(lm15.TopLogprob(token=t, logprob=lp) for t, lp in self.verdicts.pop(0).items())
        tokens = (lm15.TokenLogprob(token='{"', logprob=-0.5), lm15.TokenLogprob(token="stated", logprob=0.0),
                  lm15.TokenLogprob(token='":', logprob=0.0), lm15.TokenLogprob(token="true", logprob=-1.8, top=top),
                  lm15.TokenLogprob(token="}", logprob=0.0))
        return lm15.Response(id="r", model=request.model, message=lm15.Message.assistant('{"stated": true}'),
                             finish_reason="stop", usage=lm15.Usage(input_tokens=1, output_tokens=5), logprobs=tokens)


def test_a_verify_threshold_keeps_facts_by_the_probability_of_every_spelling_of_true():
    from hotmem.teacher.adapter import CompactJSONAdapter
    from hotmem.teacher.program import stated_probability

    facts = [ExtractedRelation(subject="Michael", predicate="child_of", object="Sarah"),
             ExtractedRelation(subject="Sarah", predicate="spouse_of", object="Michael")]
    # both answers say true; the first check leans to False once True/False/ true are counted, the second does not
    engine = VerdictEngine({"False": -1.41, "True": -1.45, " False": -1.81, "false": -1.9, " True": -2.36},
                           {"True": -0.95, "False": -1.52, " True": -2.34, " False": -2.37})
    teacher = Teacher(reads="sentences", verify=True, verify_threshold=0.5)
    statements = ["Sarah: I live in New York with my husband Michael."]
    with dspy.context(lm=dspy.LM("local/verdicts", engine=engine, cache=False), adapter=CompactJSONAdapter()):
        kept, rejected = teacher.verified(statements, facts)
    assert (kept, rejected) == ([facts[1]], [facts[0]]) and engine.asked == [20, 20]
    true, false = math.exp(-1.45) + math.exp(-2.36) + math.exp(-1.8), math.exp(-1.41) + math.exp(-1.81)
    assert stated_probability(dspy.Prediction(stated=True, logprobs={"content": [
        {"token": "{", "logprob": 0.0, "top_logprobs": []},
        {"token": "true", "logprob": -1.8, "top_logprobs": [{"token": "False", "logprob": -1.41},
                                                            {"token": "True", "logprob": -1.45},
                                                            {"token": " False", "logprob": -1.81},
                                                            {"token": " True", "logprob": -2.36}]}]})) == \
        pytest.approx(true / (true + false))
    # an LM that reports no log-probabilities: the answer decides
    assert stated_probability(dspy.Prediction(stated=False)) == 0.0
    with pytest.raises(InvalidInputError, match="verify_threshold"):
        Teacher(verify_threshold=0.5)


def test_a_teacher_backend_without_its_check_leaves_the_checking_to_its_caller():
    from hotmem.backends import TeacherBackend

    teacher = Teacher(reads="sentences", verify=True)
    answers = ({"entities": [{"name": "Anna", "type": "PERSON"}, {"name": "Oslo", "type": "LOCATION"}]},
               {"relations": [{"subject": "Anna", "predicate": "lives_in", "object": "Oslo"}]})
    lm = scripted(*answers)
    turns = [Turn(speaker="Anna", text="I live in Oslo.")]
    graph = TeacherBackend(teacher, lm, check=False)(turns)
    assert len(lm.history) == 2 and [r.triple for r in graph.relations] == [("Anna", "lives_in", "Oslo")]
    engine = VerdictEngine({"True": -0.2, "False": -2.0})
    checker = TeacherBackend(teacher, dspy.LM("local/verdicts", engine=engine, cache=False))
    [probability] = checker.stated_probabilities(turns, graph.relations)
    assert probability == pytest.approx((math.exp(-0.2) + math.exp(-1.8)) / (math.exp(-0.2) + math.exp(-1.8)
                                                                             + math.exp(-2.0)))
    with pytest.raises(InvalidInputError, match="verify step"):
        TeacherBackend(Teacher(), lm, check=False)
    with pytest.raises(InvalidInputError, match="verify step"):
        TeacherBackend(Teacher(), lm).stated_probabilities(turns, graph.relations)


def test_chit_chat_stops_after_decompose():
    lm = scripted({"references": []}, {"statements": []})
    pred = run(Teacher(), lm, "hey, how are you?")
    assert pred.graph.is_empty
    assert len(lm.history) == 2


def test_repeated_statements_reach_the_later_steps_once():
    lm = scripted({"statements": ["I live in Oslo.", "I live in Oslo.", " ", "I live in Oslo."]},
                  {"entities": [{"name": "Oslo", "type": "LOCATION"}]}, {"relations": []})
    pred = run(Teacher(), lm, "I live in Oslo.")  # first person only: no coref call
    assert pred.statements == ["I live in Oslo."]
    assert lm.history[1]["messages"][-1]["content"].count("I live in Oslo.") == 1


def test_closed_extraction_drops_relations_the_endpoint_types_forbid_and_open_keeps_them_less_sure():
    entities = [ExtractedEntity(name="Tom", type="PERSON"), ExtractedEntity(name="Oslo", type="DATE"),
                ExtractedEntity(name="Anna", type="PERSON"), ExtractedEntity(name="Berlin", type="LOCATION")]
    relations = [ExtractedRelation(subject="Tom", predicate="lives_in", object="Oslo"),
                 ExtractedRelation(subject="Anna", predicate="lives_in", object="Berlin")]
    text = "Tom lives in Oslo and Anna in Berlin."

    def assembled(closed: bool):
        graph = assemble_graph(entities, relations, text=text, speakers=["speaker"], schema=CONVERSATION_SCHEMA,
                               closed=closed)
        return {r.triple: r.confidence for r in graph.relations}

    assert assembled(closed=True) == {("Anna", "lives_in", "Berlin"): 1.0}
    assert assembled(closed=False) == {("Anna", "lives_in", "Berlin"): 1.0,
                                       ("Tom", "lives_in", "Oslo"): TYPE_MISMATCH_FACTOR}


def test_closed_extraction_constrains_predicates_and_types():
    sigs = signatures_for(CONVERSATION_SCHEMA, closed=True)
    schema = sigs.relations.output_fields["relations"].annotation.__args__[0].model_json_schema()
    assert set(schema["properties"]["predicate"]["enum"]) == set(CONVERSATION_SCHEMA.predicates)
    entity_schema = sigs.entities.output_fields["entities"].annotation.__args__[0].model_json_schema()
    assert "PERSON" in entity_schema["properties"]["type"]["enum"]
    # the instruction GEPA edits is the docstring
    assert sigs.relations.instructions.startswith("Extract the relations")


def test_open_extraction_keeps_new_predicates_in_snake_case():
    entities = [dict(name="Mia", type="PERSON"), dict(name="kite surfing", type="ACTIVITY")]
    from hotmem.assemble import ExtractedEntity, ExtractedRelation

    raw_entities = [ExtractedEntity(**e) for e in entities]
    raw_relations = [ExtractedRelation(subject="Mia", predicate="Is Obsessed With", object="kite surfing")]
    closed = assemble_graph(raw_entities, raw_relations, text="Mia loves kite surfing", speakers=["speaker"],
                            schema=CONVERSATION_SCHEMA, closed=True)
    opened = assemble_graph(raw_entities, raw_relations, text="Mia loves kite surfing", speakers=["speaker"],
                            schema=CONVERSATION_SCHEMA, closed=False)
    assert closed.relations == []
    assert opened.relations[0].predicate == "is_obsessed_with"


def test_ungrounded_entities_get_lower_confidence():
    from hotmem.assemble import ExtractedEntity

    graph = assemble_graph([ExtractedEntity(name="Atlantis", type="LOCATION")], [], text="I like maps",
                           speakers=["speaker"], schema=CONVERSATION_SCHEMA)
    assert graph.entities[0].confidence < 1.0


def test_extractor_named_speaker_and_multi_turn_input():
    lm = scripted(  # no pronoun beyond "I": coref is not called
        {"statements": ["Anna lives in Oslo."]},
        {"entities": [{"name": "I", "type": "PERSON"}, {"name": "Oslo", "type": "LOCATION"}]},
        {"relations": [{"subject": "I", "predicate": "lives_in", "object": "Oslo"}]},
    )
    graph = GraphExtractor(lm)("I live in Oslo.", speaker="Anna")
    assert [r.triple for r in graph.relations] == [("Anna", "lives_in", "Oslo")]
    assert len(lm.history) == 3
    assert "Anna: I live in Oslo." in lm.history[0]["messages"][-1]["content"]


def test_extractor_input_errors_are_typed_and_cheap():
    lm = scripted()
    extractor = GraphExtractor(lm)
    assert extractor("").is_empty and extractor("   \n").is_empty
    assert len(lm.history) == 0
    with pytest.raises(InvalidInputError, match="at most"):
        extractor("x" * 100_000)
    with pytest.raises(InvalidInputError):
        extractor(12345)


def test_malformed_model_output_is_a_typed_error():
    lm = dspy.utils.DummyLM([{"references": "not a list at all {"}] * 5, adapter=dspy.JSONAdapter())
    with pytest.raises(ExtractionError):
        GraphExtractor(lm)("I live in Oslo.")


def test_long_input_is_chunked_by_turns_and_sentences():
    turns = [Turn(speaker="A", text="Sentence one. " * 200), Turn(speaker="B", text="short")]
    chunks = chunk_turns(turns, max_chars=500)
    assert all(sum(len(t.text) for t in c) <= 500 for c in chunks)
    assert "".join(t.text for c in chunks for t in c).replace(" ", "") == "".join(t.text for t in turns).replace(" ", "")
    assert chunks[-1][-1] == Turn(speaker="B", text="short")


def test_a_title_or_an_initial_does_not_end_a_sentence():
    from hotmem.names import split_sentences
    from hotmem.teacher.program import speaker_statements

    assert split_sentences("You're still at St. Anne's in Brno, right? Yes! I see Dr. Okafor. J. K. Rowling wrote "
                           'it in the U.S. last year. He said "go." Then I left.') == [
        "You're still at St. Anne's in Brno, right?", "Yes!", "I see Dr. Okafor.",
        "J. K. Rowling wrote it in the U.S. last year.", "He said \"go.\"", "Then I left."]
    assert split_sentences("  ") == [] and split_sentences("I said no. It is 3.5 km.") == ["I said no.", "It is 3.5 km."]
    assert speaker_statements([Turn(speaker="Petr", text="I work at St. Anne's. My wife too.")]) == \
        ["Petr work at St. Anne's.", "Petr's wife too."]


def test_one_configuration_entry_point_for_every_backend(monkeypatch):
    import hotmem
    from hotmem.llama.engine import LlamaCppEngine
    from hotmem.lm import default_lm, make_lm

    monkeypatch.setattr("hotmem.lm._configured", None)  # restored after the test
    server = make_lm("openai/qwen2.5", api_base="http://127.0.0.1:8080/v1", api_key="-")
    assert server.model == "openai/qwen2.5" and server.kwargs.get("api_base") == "http://127.0.0.1:8080/v1"
    assert make_lm("ollama_chat/qwen2.5:7b").model == "ollama_chat/qwen2.5:7b"
    embedded = make_lm()  # builds the engine lazily: no model is loaded here
    assert isinstance(embedded.engine, LlamaCppEngine) and embedded.engine.model == "qwen2.5-coder-0.5b"
    assert make_lm("embedded/smollm2-135m").engine.model == "smollm2-135m"
    configured = hotmem.configure("openai/gpt-4o-mini")
    assert default_lm() is configured


def test_the_relations_step_is_told_what_closed_extraction_dropped_before_scoring():
    from hotmem.pipeline.metric import GraphMetric, to_example
    from hotmem.types import Graph, Record, Relation

    lm = scripted(
        {"statements": ["Tom lives in Oslo.", "Tom is a friend of the speaker."]},
        {"entities": [{"name": "Tom", "type": "PERSON"}, {"name": "Oslo", "type": "DATE"},
                      {"name": "speaker", "type": "PERSON"}]},
        {"relations": [{"subject": "Tom", "predicate": "lives_in", "object": "Oslo"},
                       {"subject": "Tom", "predicate": "admires_hats_of", "object": "speaker"},
                       {"subject": "speaker", "predicate": "friends_with", "object": "Tom"}]},
    )
    text = "My friend Tom lives in Oslo."
    pred = run(Teacher(), lm, text)
    assert [r.triple for r in pred.graph.relations] == [("speaker", "friends_with", "Tom")]
    gold = Graph(relations=[Relation(subject="Tom", predicate="lives_in", object="Oslo"),
                            Relation(subject="speaker", predicate="friends_with", object="Tom")])
    record = Record(id="x", turns=as_turns(text), graph=gold)
    feedback = GraphMetric()(to_example(record), pred, None, "relations", None).feedback
    assert "Dropped, predicate not in the inventory: (Tom, admires_hats_of, speaker)." in feedback
    assert "(Tom [PERSON], lives_in, Oslo [DATE]) but lives_in links PERSON" in feedback
    assert "friends_with" not in feedback.split("Dropped")[1]  # what was kept is not reported as dropped


class RecordingEngine:
    """An in-process engine for `dspy.LM("local/...")` that answers from a script and keeps each request's
    response format: what a served model's grammar would be built from."""

    supported_params = ("response_format", "max_tokens", "temperature")
    supports_response_schema = True

    def __init__(self, *answers: dict):
        self.answers, self.formats = [json.dumps(answer) for answer in answers], []

    def complete(self, request):
        from dspy import lm15

        self.formats.append(request.config.response_format)
        return lm15.Response(id="r", model=request.model, message=lm15.Message.assistant(self.answers.pop(0)),
                             finish_reason="stop", usage=lm15.Usage(input_tokens=1, output_tokens=1))


def test_list_bounds_reach_the_output_schema_a_server_enforces():
    from hotmem.assemble import MAX_ENTITIES, MAX_RELATIONS
    from hotmem.teacher.adapter import CompactJSONAdapter

    signatures = signatures_for(CONVERSATION_SCHEMA)
    engine = RecordingEngine({"entities": [{"name": "Anna", "type": "PERSON"}]}, {"relations": []},
                             {"entities": []})
    with dspy.context(lm=dspy.LM("local/recorder", engine=engine, cache=False), adapter=CompactJSONAdapter()):
        found = dspy.Predict(signatures.entities)(statements=["Anna runs."])
        dspy.Predict(signatures.relations)(statements=["Anna runs."], entities=["Anna"])
    with dspy.context(lm=dspy.LM("local/recorder", engine=engine, cache=False), adapter=dspy.JSONAdapter()):
        dspy.Predict(signatures.entities)(statements=["Anna runs."])
    entities, relations, plain = (fmt["schema"]["properties"] for fmt in engine.formats)
    assert [entity.model_dump() for entity in found.entities] == [{"name": "Anna", "type": "PERSON"}]
    assert entities["entities"]["maxItems"] == MAX_ENTITIES and relations["relations"]["maxItems"] == MAX_RELATIONS
    assert "maxItems" not in plain["entities"]  # what DSPy's own adapter sends: no bound for the grammar
