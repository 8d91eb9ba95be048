"""hotmem against KGGen and LangChain's LLMGraphTransformer: one local LM, the same examples, hotmem's metric.

    pip install -e ".[bench]"
    python bench/compare.py --out bench/results/compare-$(date +%F)          # starts llama.cpp's server itself
    python bench/compare.py --api-base http://127.0.0.1:8000/v1 --model qwen  # or use a server that runs

Every system talks to the same OpenAI-compatible llama.cpp server (the embedded Qwen2.5-Coder-0.5B GGUF by default)
with the same sampling (temperature 0, at most 1024 new tokens). `serve.py` makes llama-cpp-python's server take
OpenAI's `json_schema` structured outputs (it answers them with HTTP 500) and drop its hidden repeat penalty, as
llama.cpp's own server, vLLM and Ollama do; with `--api-base`, bring such a server. The student is the exception:
it is a LoRA on that base and runs in process through llama.cpp.

Peers are set up as their documentation says for a local OpenAI-compatible model: KGGen with `model="openai/..."`
and `api_base` (open predicates: it takes no relation inventory); LLMGraphTransformer with `ChatOpenAI(base_url=...)`
and the schema's entity types and predicates as `allowed_nodes` / `allowed_relationships`. Their graphs go through
the same cleaning as hotmem's (`assemble_graph`, open predicates kept) and the same metric.

Each (data set, system) pair is a `hotmem.pipeline.evaluate` run that appends every finished example to its rows.jsonl:
the same command after an interruption continues where it stopped. Systems and data sets take turns, a block of
examples each (`--block`, default 10): on a shared machine whose speed drifts by the hour, or a run resumed on
another machine, every system meets the same conditions, and a table cut short covers every system on the same
examples. Each pair also records the code versions whose runs added rows to it (the last commit that changed
hotmem, the bench's code or the shipped programs), and the table names them, so a table resumed across code changes
says so. A system that cannot run keeps its row, with every example counted as a failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: LiteLLM's bundled model table

import dspy  # noqa: E402
from rows import VERSIONS  # noqa: E402  (bench/rows.py, beside this script)

from hotmem.assemble import ExtractedEntity, ExtractedRelation, assemble_graph  # noqa: E402
from hotmem.data import load_dataset  # noqa: E402
from hotmem.extractor import GraphExtractor  # noqa: E402
from hotmem.io import write_atomic  # noqa: E402
from hotmem.llama.models import model_path  # noqa: E402
from hotmem.lm import lm_usage, make_lm  # noqa: E402
from hotmem.pipeline.evaluate import Report, evaluate_program  # noqa: E402
from hotmem.schema import RelationSchema  # noqa: E402
from hotmem.students.encoder import shipped_encoder_dir  # noqa: E402
from hotmem.students.lora import shipped_student_dir  # noqa: E402
from hotmem.teacher import Teacher, load_for_schema  # noqa: E402
from hotmem.teacher.saved import shipped_teacher_dir  # noqa: E402
from hotmem.types import Graph, Record, Turn, render_turns, speakers_of  # noqa: E402

logger = logging.getLogger("bench.compare")

SYSTEMS = ("hotmem-teacher", "hotmem-optimized", "hotmem-student", "hotmem-encoder", "kggen", "langchain")
#: systems that run in this process, without the LM server
IN_PROCESS = {"hotmem-student", "hotmem-encoder"}
#: data set -> (split, default number of examples): the sizes issue 5 asks for.
DATASETS = {"gold": ("test", 42), "personaext": ("dev", 100), "dialogre": ("dev", 30), "conll04": ("valid", 100)}
SAMPLING = {"temperature": 0.0, "max_tokens": 1024}


class SystemUnavailable(RuntimeError):
    """A system that cannot run here (its package or artifact is missing): its row counts every example failed."""


# --------------------------------------------------------------------------- the shared server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gguf: Path, alias: str, log_file: Path, n_ctx: int = 8192) -> tuple[subprocess.Popen, str]:
    """llama-cpp-python's OpenAI-compatible server (through `serve.py`) on 127.0.0.1: the process, its /v1 address."""
    port = _free_port()
    command = [sys.executable, str(Path(__file__).with_name("serve.py")), str(gguf), "--alias", alias,
               "--port", str(port), "--n-ctx", str(n_ctx)]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(command, stdout=open(log_file, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the llama.cpp server exited with {process.returncode}; see {log_file}")
        try:
            with urllib.request.urlopen(f"{base}/models", timeout=2):
                return process, base
        except OSError:
            time.sleep(1)
    process.kill()
    raise RuntimeError(f"the llama.cpp server did not answer within 180 s; see {log_file}")


# --------------------------------------------------------------------------- systems


class CallLog:
    """LM calls and their token usage, in the shape `hotmem.lm.lm_usage` counts (`history` of `{"usage": ...}`)."""

    def __init__(self) -> None:
        self.history: list[dict] = []


def peer_graph(entities: Sequence[tuple[str, str]], triples: Sequence[tuple[str, str, str]], turns: Sequence[Turn],
               schema: RelationSchema) -> Graph:
    """A peer's entities and triples cleaned like hotmem's own output (open predicates kept)."""
    types = dict(entities)
    for s, _, o in triples:  # endpoints a peer did not list as entities still name things
        types.setdefault(s, "MISC")
        types.setdefault(o, "MISC")
    return assemble_graph(
        [ExtractedEntity(name=str(n), type=t if t in schema.entity_types else "MISC") for n, t in types.items()],
        [ExtractedRelation(subject=str(s), predicate=str(p), object=str(o)) for s, p, o in triples],
        text=render_turns(turns), speakers=speakers_of(turns), schema=schema, closed=False,
    )


class Peer:
    """A peer system as a hotmem `Backend`: its extraction, and the LM (or call log) whose history counts its calls."""

    def __init__(self, name: str, model: str, extract: Callable[[list[Turn]], Graph], calls):
        self.name, self.model, self.extract, self.calls = name, model, extract, calls

    def __call__(self, turns: Sequence[Turn]) -> Graph:
        return self.extract(list(turns))

    def usage(self) -> dict[str, int]:
        return lm_usage(self.calls)


def hotmem_program(program: dspy.Module, base: str, model: str) -> GraphExtractor:
    lm = make_lm(f"openai/{model}", api_base=base, api_key="local", cache=False, enforces_schema=True, **SAMPLING)
    return GraphExtractor(lm, schema=program.schema, program=program, max_chars=100_000)


def kggen_program(base: str, model: str, schema: RelationSchema) -> GraphExtractor:
    try:
        from kg_gen import KGGen
    except ImportError as exc:
        raise SystemUnavailable(f"kg-gen is not installed ({exc}): pip install -e '.[bench]'") from exc
    kg = KGGen(model=f"openai/{model}", api_base=base, api_key="local", **SAMPLING)
    kg.lm.cache = False

    def extract(turns: list[Turn]) -> Graph:
        graph = kg.generate(input_data=render_turns(turns))
        return peer_graph([(e, "MISC") for e in graph.entities], list(graph.relations), turns, schema)

    # KGGen runs its predictors with DSPy's default adapter (hotmem's runs only inside its own backends)
    return GraphExtractor(backend=Peer("kggen", model, extract, kg.lm), max_chars=100_000)


def langchain_program(base: str, model: str, schema: RelationSchema) -> GraphExtractor:
    try:
        from langchain_core.callbacks import BaseCallbackHandler
        from langchain_core.documents import Document
        from langchain_experimental.graph_transformers import LLMGraphTransformer
        from langchain_openai import ChatOpenAI
    except ImportError as exc:
        raise SystemUnavailable(f"langchain is not installed ({exc}): pip install -e '.[bench]'") from exc

    calls = CallLog()

    class Counter(BaseCallbackHandler):
        def on_llm_end(self, response, **kwargs):
            usage = (response.llm_output or {}).get("token_usage") or {}
            calls.history.append({"usage": dict(usage)})

    llm = ChatOpenAI(model=model, base_url=base, api_key="local", **SAMPLING)
    transformer = LLMGraphTransformer(
        llm=llm, allowed_nodes=list(schema.entity_types), allowed_relationships=list(schema.predicates)
    )
    type_of = {t.casefold(): t for t in schema.entity_types}

    def extract(turns: list[Turn]) -> Graph:
        [document] = transformer.convert_to_graph_documents(
            [Document(page_content=render_turns(turns))], config={"callbacks": [Counter()]}
        )
        entities = [(str(n.id), type_of.get(str(n.type).casefold(), "MISC")) for n in document.nodes]
        triples = [(str(r.source.id), str(r.type), str(r.target.id)) for r in document.relationships]
        return peer_graph(entities, triples, turns, schema)

    return GraphExtractor(backend=Peer("langchain", model, extract, calls), max_chars=100_000)


def student_program(folder: str | None, schema: RelationSchema) -> GraphExtractor:
    if folder is None and shipped_student_dir() is None:
        raise SystemUnavailable("no trained student: none ships in optimized/student and --student was not given")
    return GraphExtractor(backend=folder or "student", schema=schema, max_chars=100_000)


def encoder_program(folder: str | None, schema: RelationSchema) -> GraphExtractor:
    if folder is None and shipped_encoder_dir() is None:
        raise SystemUnavailable("no encoder student: none ships in optimized/encoder and --encoder was not given")
    return GraphExtractor(backend=folder or "encoder", schema=schema, max_chars=100_000)


def build(system: str, schema: RelationSchema, args: argparse.Namespace, base: str) -> GraphExtractor:
    if system == "hotmem-teacher":
        return hotmem_program(Teacher(schema), base, args.model)
    if system == "hotmem-optimized":
        folder = args.optimized or shipped_teacher_dir()
        if folder is None:
            raise SystemUnavailable("no optimized teacher: none ships in optimized/teacher and --optimized was not given")
        # made for hotmem's conversation schema: other data sets get its instructions with their own inventory
        return hotmem_program(load_for_schema(folder, schema), base, args.model)
    if system == "hotmem-student":
        return student_program(args.student, schema)
    if system == "hotmem-encoder":
        return encoder_program(args.encoder, schema)
    if system == "kggen":
        return kggen_program(base, args.model, schema)
    if system == "langchain":
        return langchain_program(base, args.model, schema)
    raise ValueError(f"unknown system {system!r}; choose from {SYSTEMS}")


# --------------------------------------------------------------------------- running and reporting


#: What a system's output depends on: the version names the last commit that changed these.
CODE_PATHS = ("hotmem", "bench/compare.py", "bench/serve.py", "optimized", "pyproject.toml")


def code_version() -> str:
    """The last commit that changed `CODE_PATHS`, with `-dirty` when they have uncommitted changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("log", "-1", "--format=%h", "--abbrev=7", "--", *CODE_PATHS)
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def record_version(pair_dir: Path, version: str) -> list[str]:
    """Add `version` to the code versions that ran this (data set, system) pair; all of them, oldest first."""
    path = pair_dir / VERSIONS
    versions = json.loads(path.read_text()) if path.exists() else []
    if version not in versions:
        versions.append(version)
        write_atomic(path, json.dumps(versions))
    return versions


def failed_report(name: str, records: Sequence[Record], reason: str) -> dict:
    summary = Report(name, []).summary()
    return {**summary, "examples": len(records), "failures": len(records), "unavailable": reason}


def run(args: argparse.Namespace) -> dict:
    """Every system on every data set, a block of examples at a time (see `--block`), resuming from the rows."""
    out = Path(args.out)
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)  # every call reaches the server
    process = None
    base = args.api_base
    if base is None and not set(args.systems) <= IN_PROCESS:
        gguf = model_path(args.gguf)
        process, base = start_server(gguf, args.model, out / "server.log")
        logger.info("llama.cpp server for %s at %s", gguf.name, base)
    version = code_version()
    logger.info("code version %s", version)
    data = {}
    for dataset in args.datasets:
        split, default_limit = DATASETS[dataset]
        data[dataset] = (split, *load_dataset(dataset, split=split, limit=args.limit or default_limit))
    results: dict[str, dict[str, dict]] = {dataset: {} for dataset in data}
    programs: dict[tuple[str, str], GraphExtractor] = {}
    longest = max(len(records) for _, records, _ in data.values())
    block = args.block or longest
    progress = tqdm(total=sum(len(records) for _, records, _ in data.values()) * len(args.systems), unit="ex",
                    desc="compare")
    try:
        for upto in range(block, longest + block, block):
            for dataset, (split, records, schema) in data.items():
                if upto - block >= len(records):
                    continue
                for system in args.systems:
                    name = f"{system} on {dataset}/{split} ({len(records)})"
                    if "unavailable" in results[dataset].get(system, {}):
                        continue
                    if (dataset, system) not in programs:
                        try:
                            programs[dataset, system] = build(system, schema, args, base)
                        except SystemUnavailable as exc:
                            logger.warning("%s: %s", name, exc)
                            results[dataset][system] = failed_report(name, records, str(exc))
                            progress.update(len(records))
                            continue
                    program, versions = programs[dataset, system], record_version(out / dataset / system, version)
                    before = results[dataset].get(system, {}).get("examples", 0)
                    report = evaluate_program(
                        program, records[:upto], schema=schema, name=name,
                        out_dir=out / dataset / system, progress=False,
                        meta={"system": system, "schema": schema.name, "code": versions},
                    )
                    results[dataset][system] = {**report.summary(), "code": versions}
                    progress.update(results[dataset][system]["examples"] - before)
                    progress.set_postfix_str(f"{dataset} {system} {results[dataset][system]['examples']}")
                    write_results(out, results, args)  # after every block: an interrupted run keeps its table
    finally:
        progress.close()
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    return results


COLUMNS = ("relation F1", "triple F1", "entity F1", "schema-valid", "p50 / p95 s", "LM calls", "output tok",
           "failures", "code")


def _cells(s: dict) -> list[str]:
    if "unavailable" in s:
        return ["-", "-", "-", "-", "-", "-", "-", f"{s['failures']}/{s['examples']} ({s['unavailable']})", "-"]
    return [f"{s['relation_f1']:.3f}", f"{s['triple_f1']:.3f}", f"{s['entity_f1']:.3f}", f"{s['schema_valid_rate']:.3f}",
            f"{s['latency_p50_s']:.2f} / {s['latency_p95_s']:.2f}", f"{s['lm_calls_per_example']:.2f}",
            f"{s['output_tokens_per_example']:.0f}", f"{s['failures']}/{s['examples']}", ", ".join(s.get("code", []))]


def write_results(out: Path, results: dict, args: argparse.Namespace) -> None:
    command = "python bench/compare.py " + " ".join(sys.argv[1:])
    lines = ["# hotmem vs KGGen vs LangChain LLMGraphTransformer", "",
             f"Command: `{command}`", "",
             f"LM: {args.model} ({args.api_base or args.gguf + ' via llama-cpp-python server'}), "
             f"temperature 0, max 1024 new tokens, OpenAI json_schema enforced by the server. Scored by hotmem's metric "
             "(DialogRE: only annotated argument pairs score relations).", ""]
    for dataset, systems in results.items():
        lines += [f"## {dataset}", "", "| system | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
        lines += [f"| {system} | " + " | ".join(_cells(s)) + " |" for system, s in systems.items()]
        lines.append("")
    versions = sorted({v for systems in results.values() for s in systems.values() for v in s.get("code", [])})
    lines.append(f"Code: {', '.join(versions)}" + (" (rows from more than one version)" if len(versions) > 1 else ""))
    write_atomic(out / "results.md", "\n".join(lines) + "\n")
    payload = {"command": command, "code": versions, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "model": args.model, "gguf": args.gguf, "api_base": args.api_base, "results": results}
    write_atomic(out / "results.json", json.dumps(payload, indent=1))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=f"bench/results/compare-{datetime.now():%Y-%m-%d}")
    parser.add_argument("--systems", default=",".join(SYSTEMS), type=lambda s: s.split(","))
    parser.add_argument("--datasets", default=",".join(DATASETS), type=lambda s: s.split(","))
    parser.add_argument("--limit", type=int, default=None,
                        help="examples per data set (default: gold test 42, PersonaExt 100, DialogRE 30, CoNLL04 100)")
    parser.add_argument("--gguf", default="qwen2.5-coder-0.5b", help="embedded model name or GGUF path to serve")
    parser.add_argument("--api-base", default=None, help="use this running OpenAI-compatible server instead")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b", help="model name the server answers to")
    parser.add_argument("--optimized", default=None, help="optimized teacher folder (default: optimized/teacher)")
    parser.add_argument("--student", default=None, help="student folder (default: optimized/student)")
    parser.add_argument("--encoder", default=None, help="encoder student folder (default: optimized/encoder)")
    parser.add_argument("--block", type=int, default=10,
                        help="examples each system runs before the next system and data set take their turn "
                             "(0: a whole data set at a time)")
    args = parser.parse_args(argv)
    for name in args.systems:
        if name not in SYSTEMS:
            parser.error(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")
    for name in args.datasets:
        if name not in DATASETS:
            parser.error(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # hotmem.pipeline.evaluate: every block resumes its pair, and the run's own bar says where it is
    for chatty in ("LiteLLM", "httpx", "httpx2", "openai", "hotmem.pipeline.evaluate"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    arguments = parse_args()
    run(arguments)
    print((Path(arguments.out) / "results.md").read_text())
