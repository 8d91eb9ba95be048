"""The real embedded models, a handful of calls each (marked `integration`)."""

import json
import subprocess
import sys

import pytest
from conftest import needs_embedded, needs_smollm
from dspy import lm15

from hotmem import lm as hotmem_lm
from hotmem.lm import EmbeddedModel, LlamaCppEngine, ModelNotAvailableError, bound_arrays, model_path
from hotmem.schema import CONVERSATION_SCHEMA, Graph

pytestmark = pytest.mark.integration


def test_chunked_model_is_assembled_once_and_atomically(tmp_path, monkeypatch):
    parts = []
    for i, payload in enumerate([b"GGUF" + b"a" * 10, b"b" * 7, b"c" * 3]):
        part = tmp_path / f"part{i:02d}.bin"
        part.write_bytes(payload)
        parts.append(part)
    monkeypatch.setenv("HOTMEM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(hotmem_lm.EMBEDDED_MODELS, "toy", EmbeddedModel("toy", ("x", "y"), "toy model"))
    monkeypatch.setattr(hotmem_lm, "_package_files", lambda model: parts)
    path = model_path("toy")
    assert path.read_bytes() == b"".join(p.read_bytes() for p in parts)
    assert not list(path.parent.glob("*.tmp"))
    mtime = path.stat().st_mtime_ns
    assert model_path("toy").stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_missing_model_packages_give_an_install_hint(monkeypatch):
    monkeypatch.setitem(
        hotmem_lm.EMBEDDED_MODELS, "ghost", EmbeddedModel("ghost", ("no_such_pkg_part1",), "absent")
    )
    with pytest.raises(ModelNotAvailableError, match="pip install no-such-pkg-part1"):
        model_path("ghost")


def test_every_array_gets_a_bound():
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "array"}},
                                               "b": {"type": "array", "maxItems": 2}}}
    bounded = bound_arrays(schema, 5)
    assert bounded["properties"]["a"]["maxItems"] == 5
    assert bounded["properties"]["a"]["items"]["maxItems"] == 5
    assert bounded["properties"]["b"]["maxItems"] == 2


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
    from hotmem.signatures import ExtractedEntity

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


@needs_embedded
def test_graph_extractor_on_the_embedded_default():
    from hotmem import GraphExtractor
    from hotmem.student import shipped_student_dir

    extract = GraphExtractor()
    assert extract.backend == ("student" if shipped_student_dir() else "teacher")  # a shipped student is the default
    graph = extract("My sister Anna moved to Berlin and works at Siemens.")
    names = {e.name for e in graph.entities}
    assert "Berlin" in names and "Siemens" in names
    for relation in graph.relations:  # endpoints are extracted entities, predicates from the schema
        assert {relation.subject, relation.object} <= names
        assert relation.predicate in CONVERSATION_SCHEMA.predicates


@needs_embedded
def test_non_english_text_gives_a_graph():
    from hotmem import GraphExtractor

    assert isinstance(GraphExtractor()("Meine Schwester wohnt seit 2019 in München."), Graph)


@needs_embedded
def test_cli_extract_json():
    out = subprocess.run(
        [sys.executable, "-m", "hotmem.cli", "extract", "--json", "My sister Anna moved to Berlin and works at Siemens."],
        capture_output=True, text=True, timeout=600, check=True,
    )
    graph = Graph.from_json(out.stdout)
    assert "Berlin" in {e.name for e in graph.entities}
