"""The real embedded models, a handful of calls each (marked `integration`)."""

import json
import subprocess
import sys

import pytest
from conftest import needs_embedded, needs_smollm
from dspy import lm15

from hotmem.llama.constrain import bound_arrays
from hotmem.llama.engine import LlamaCppEngine
from hotmem.schema import CONVERSATION_SCHEMA
from hotmem.types import Graph

pytestmark = pytest.mark.integration


def test_every_array_gets_a_bound():
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "array"}},
                                               "b": {"type": "array", "maxItems": 2}}}
    bounded = bound_arrays(schema, 5)
    assert bounded["properties"]["a"]["maxItems"] == 5
    assert bounded["properties"]["a"]["items"]["maxItems"] == 5
    assert bounded["properties"]["b"]["maxItems"] == 2


@needs_smollm
def test_a_prompt_served_from_the_prefix_cache_answers_as_before():
    """Saved states carry the KV, not llama-cpp-python's n_batch x vocabulary logits buffer (hotmem reads no
    logprobs): a prompt whose state is loaded back from the cache answers exactly as it did."""
    engine = LlamaCppEngine("smollm2-135m", n_ctx=1024)
    terse = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}]
    poet = [{"role": "system", "content": "You are a poet."}, {"role": "user", "content": "Capital of France?"}]

    def answer(messages):
        return engine.chat(messages, max_tokens=12)["choices"][0]["message"]["content"]

    first = answer(terse)
    answer(poet)  # the context now holds another prompt: the next call loads terse's state from the cache
    llama, loaded = engine.llama, []
    load_state = llama.load_state
    llama.load_state = lambda state: (loaded.append(state.n_tokens), load_state(state))[1]
    assert answer(terse) == first and loaded
    states = list(engine.llama.cache.cache_state.values())
    assert len(states) == 2 and engine.llama.scores.shape == (1, engine.llama.n_vocab())


@needs_smollm
def test_constrained_decoding_always_parses_and_respects_bounds():
    engine = LlamaCppEngine("smollm2-135m", n_ctx=1024, max_items=3)
    schema = {
        "type": "object",
        "properties": {"colors": {"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]}}},
        "required": ["colors"],
    }
    request = lm15.Request(
        model="local/smollm2",
        messages=(lm15.Message.user("List colours, as many as you can, repeat them many times."),),
        config=lm15.Config(max_tokens=200, response_format={"type": "json_schema", "schema": schema}),
    )
    response = engine.complete(request)
    data = json.loads(response.text)
    assert set(data["colors"]) <= {"red", "green", "blue"}
    assert len(data["colors"]) <= 3
    assert response.usage.output_tokens > 0


@needs_smollm
def test_checking_the_grammar_first_decodes_exactly_what_the_full_grammar_decodes():
    """The fast path (check the preferred token, run the grammar over the vocabulary only on a rejection) must not
    change a greedy answer, including where the grammar overrules the model (an enum it would not pick)."""
    from hotmem.assemble import ExtractedEntity

    schema = {"type": "object", "properties": {
        "people": {"type": "array", "items": {"type": "string"}},
        "mood": {"type": "string", "enum": ["zebra-happy", "quokka-sad"]},
        "entities": {"type": "array", "items": ExtractedEntity.model_json_schema()}},
        "required": ["people", "mood", "entities"]}
    prompts = ["My sister Anna moved to Berlin and works at Siemens. Answer in JSON.",
               "Tom and his dog Rex went to Oslo last summer; Tom loved it. JSON please."]

    def answers(check_first: bool):
        engine = LlamaCppEngine("smollm2-135m", n_ctx=1024, max_items=4, check_grammar_first=check_first)
        out = []
        for prompt in prompts:
            request = lm15.Request(model="local/smollm2", messages=(lm15.Message.user(prompt),), config=lm15.Config(
                max_tokens=120, temperature=0.0, response_format={"type": "json_schema", "schema": schema}))
            out.append(engine.complete(request).text)
        return out

    checked = answers(True)
    assert checked == answers(False)
    assert all(json.loads(text)["mood"] in ("zebra-happy", "quokka-sad") for text in checked)


@needs_smollm
def test_greedy_logprobs_score_the_answer_decoded_without_them():
    """`logprobs` (DSPy's `config={"logprobs": True, "top_logprobs": k}`): the same greedy answer, each token with
    its log-probability under the model and the k likeliest tokens, best first."""
    import math

    schema = {"type": "object", "properties": {"stated": {"type": "boolean"}}, "required": ["stated"]}

    def complete(engine, logprobs):
        return engine.complete(lm15.Request(
            model="local/smollm2", messages=(lm15.Message.user("Is Paris in France? Answer in JSON."),),
            config=lm15.Config(max_tokens=20, temperature=0.0, logprobs=logprobs,
                               response_format={"type": "json_schema", "schema": schema})))

    engine = LlamaCppEngine("smollm2-135m", n_ctx=1024)
    plain, scored = complete(engine, None), complete(engine, 5)
    assert plain.logprobs is None and scored.text == plain.text
    assert "".join(t.token for t in scored.logprobs) == scored.text
    for token in scored.logprobs:
        ranked = [top.logprob for top in token.top]
        assert len(ranked) == 5 and ranked == sorted(ranked, reverse=True) and ranked[0] <= 0.0
        assert token.logprob <= ranked[0] + 1e-6
    assert sum(math.exp(top.logprob) for top in scored.logprobs[0].top) <= 1.0 + 1e-4


@needs_smollm
def test_a_line_grammar_gives_lines_that_parse_and_a_repeated_line_ends_the_answer():
    """The `lines` student format on a real model: every line fits the grammar's fields, and the base model's habit
    of repeating a line is cut at the first repeat."""
    import re

    from hotmem.students.format import lines_grammar, parse_student_output
    from hotmem.types import as_turns

    engine = LlamaCppEngine("smollm2-135m", n_ctx=1024)
    grammar = lines_grammar(CONVERSATION_SCHEMA)
    types, predicates = "|".join(CONVERSATION_SCHEMA.entity_types), "|".join(CONVERSATION_SCHEMA.predicates)
    line = re.compile(rf"[^|]+\|({types})(\|({predicates})\|[^|]+\|({types}))?")
    text = "My sister Anna moved to Berlin and works at Siemens."
    messages = [{"role": "system", "content": "Write facts as subject|TYPE|predicate|object|TYPE, a fact a line."},
                {"role": "user", "content": text}]
    answer = engine.chat(messages, max_tokens=200, line_grammar=grammar)["choices"][0]["message"]["content"]
    lines = answer.splitlines()
    assert lines and all(line.fullmatch(x) for x in lines), answer
    for i, x in enumerate(lines):  # a line repeating an earlier one is the last
        assert x not in lines[:i] or i == len(lines) - 1, answer
    parse_student_output(answer, as_turns(text), CONVERSATION_SCHEMA, answer_format="lines")  # parses


@needs_smollm
def test_jump_forward_feeds_the_forced_text_and_decodes_fewer_steps_than_tokens():
    """`continuation`: what the line grammar forces goes to the model in batches; the answer still fits the grammar,
    stops after a repeated line, and took fewer decoding steps than it has tokens."""
    import re

    from hotmem.students.format import forced_continuation, lines_grammar

    engine = LlamaCppEngine("smollm2-135m", n_ctx=1024)
    types, predicates = "|".join(CONVERSATION_SCHEMA.entity_types), "|".join(CONVERSATION_SCHEMA.predicates)
    line = re.compile(rf"[^|]+\|({types})(\|({predicates})\|[^|]+\|({types}))?")
    messages = [{"role": "system", "content": "Write facts as subject|TYPE|predicate|object|TYPE, a fact a line."},
                {"role": "user", "content": "My sister Anna moved to Berlin and works at Siemens in Munich."}]
    result = engine.chat(messages, max_tokens=200, line_grammar=lines_grammar(CONVERSATION_SCHEMA),
                         continuation=forced_continuation)
    answer, usage = result["choices"][0]["message"]["content"], result["usage"]
    lines = answer.splitlines()
    assert lines and all(line.fullmatch(x) for x in lines), answer
    assert all(x not in lines[:i] for i, x in enumerate(lines[:-1])), answer
    assert usage["decoding_steps"] < usage["completion_tokens"], (usage, answer)
    assert engine.stats["output_tokens"] == usage["completion_tokens"]


@needs_embedded
def test_graph_extractor_on_the_embedded_default():
    from hotmem import GraphExtractor
    from hotmem.students.encoder import shipped_encoder_dir
    from hotmem.students.lora import shipped_student_dir

    extract = GraphExtractor()  # the shipped LoRA student, else the encoder student, else the teacher
    assert extract.backend.name == ("student" if shipped_student_dir() else
                                    "encoder" if shipped_encoder_dir() else "teacher")
    graph = extract("My sister Anna moved to Berlin and works at Siemens.")
    names = {e.name for e in graph.entities}
    assert "Berlin" in names and "Siemens" in names
    for relation in graph.relations:  # endpoints are extracted entities, predicates from the schema
        assert {relation.subject, relation.object} <= names
        assert relation.predicate in CONVERSATION_SCHEMA.predicates


EVERYDAY = {  # a move, a job, kin: what a user tries first; every name said must be in the graph
    "My sister Anna moved to Berlin and works at Siemens.": {"Anna", "Berlin", "Siemens"},
    "My brother Tom moved to Madrid and works at Telefonica.": {"Tom", "Madrid", "Telefonica"},
    "My friend Lena moved to Vienna last year.": {"Lena", "Vienna"},
    "My cousin Raj relocated to Toronto and works for Shopify.": {"Raj", "Toronto", "Shopify"},
    "My mom moved to Lisbon after she retired.": {"Lisbon"},
    "Sarah lives in New York with her husband Michael and their two kids.": {"Sarah", "New York", "Michael"},
}


@needs_embedded
def test_the_embedded_default_keeps_every_name_of_everyday_sentences():
    from hotmem import GraphExtractor

    extract = GraphExtractor()
    missing = {text: names - {e.name for e in extract(text).entities} for text, names in EVERYDAY.items()}
    assert not any(missing.values()), missing


@needs_embedded
def test_non_english_text_gives_a_graph():
    from hotmem import GraphExtractor

    text = "Meine Schwester wohnt seit 2019 in München."
    graph = GraphExtractor()(text)
    names = {e.name for e in graph.entities}
    # whatever the model makes of German, the graph keeps the contract: entities typed by the schema, certain only
    # when said in the text (or the speaker) — a name the model made up or translated is flagged — and relations
    # between them with schema predicates
    from hotmem.names import is_grounded

    assert all(e.type in CONVERSATION_SCHEMA.entity_types for e in graph.entities)
    assert all((e.confidence == 1.0) == is_grounded(e.name, text) for e in graph.entities)
    assert all({r.subject, r.object} <= names and r.predicate in CONVERSATION_SCHEMA.predicates
               for r in graph.relations)


@needs_embedded
def test_cli_extract_json():
    out = subprocess.run(
        [sys.executable, "-m", "hotmem.cli", "extract", "--json", "My sister Anna moved to Berlin and works at Siemens."],
        capture_output=True, text=True, timeout=600, check=True,
    )
    graph = Graph.from_json(out.stdout)
    assert "Berlin" in {e.name for e in graph.entities}
