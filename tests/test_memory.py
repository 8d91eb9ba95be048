"""hotmem.memory on real stores: DuckDB files in tmp_path and a throwaway PostgreSQL cluster (or
HOTMEM_TEST_POSTGRES_DSN). No model: graphs are given ready, or come from a fake extractor."""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

pytest.importorskip("duckdb")

from hotmem.errors import HotmemError, InvalidInputError  # noqa: E402
from hotmem.memory import AddResult, Memory, MemoryLockedError  # noqa: E402
from hotmem.types import Entity, Graph, Relation  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

PERSON, LOCATION, ORG = "PERSON", "LOCATION", "ORGANIZATION"


def G(*triples: tuple[str, str, str], types: dict[str, str] | None = None, confidence: float = 0.9) -> Graph:
    """A ready graph: triples, with entity types by name (PERSON unless told)."""
    types = types or {}
    names = dict.fromkeys(n for s, _, o in triples for n in (s, o))
    return Graph(
        entities=[Entity(name=n, type=types.get(n, PERSON)) for n in names],
        relations=[Relation(subject=s, predicate=p, object=o, confidence=confidence) for s, p, o in triples],
    )


# ------------------------------------------------------------------------------------------------ PostgreSQL fixture


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the session: HOTMEM_TEST_POSTGRES_DSN, else a throwaway cluster run as the
    `postgres` user (PostgreSQL refuses root) on a free loopback port."""
    pytest.importorskip("psycopg")
    dsn = os.environ.get("HOTMEM_TEST_POSTGRES_DSN")
    if dsn:
        yield dsn
        return
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql) and HOTMEM_TEST_POSTGRES_DSN is unset")
    root = Path(tempfile.mkdtemp(prefix="hotmem-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    run = lambda *args: subprocess.run([*as_user, *map(str, args)], check=True, capture_output=True)  # noqa: E731
    run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    run(bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_dsn(postgres_server):
    """A fresh database on the server, dropped after the test."""
    import psycopg

    name = f"hm_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(postgres_server)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(postgres_server, autocommit=True) as con:
        con.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["duckdb", "postgresql"])
def target(request, tmp_path):
    """Where a memory lives: a DuckDB file, or a PostgreSQL database."""
    if request.param == "duckdb":
        return str(tmp_path / "memory.duckdb")
    return request.getfixturevalue("postgres_dsn")


@pytest.fixture
def memory(target):
    with Memory(target) as m:
        yield m


def _counts(memory: Memory) -> dict[str, int]:
    return memory.stats()


def _assert_consistent(memory: Memory, result: AddResult | None = None) -> None:
    """Every fact's subject and object are live entities, and an add's result names them by their names."""
    dangling = memory._store.fetchall(
        "SELECT id FROM hm_facts WHERE subject_id NOT IN (SELECT id FROM hm_entities) "
        "OR object_id NOT IN (SELECT id FROM hm_entities)")
    assert dangling == []
    if result is not None:
        said = {n for f in [*result.added, *result.strengthened, *result.ended] for n in (f.subject, f.object)}
        assert said <= {e.name for e in memory.entities()}


def _child(code: str) -> list[str]:
    """A Python child running `code` with this checkout importable."""
    return [sys.executable, "-c", textwrap.dedent(code)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


# ------------------------------------------------------------------------------------------------ imports


def test_import_is_lazy():
    """`import hotmem.memory` loads no database driver, no model runtime and none of the training pipeline."""
    code = """
        import sys, hotmem
        before = set(sys.modules)
        import hotmem.memory
        new = set(sys.modules) - before
        bad = {"duckdb", "psycopg", "dspy", "llama_cpp", "torch", "transformers", "datasets", "gepa",
               "hotmem.data", "hotmem.pipeline", "hotmem.metric", "hotmem.evaluate", "hotmem.optimize",
               "hotmem.label", "hotmem.distill"}
        print(sorted(m for m in new if m.split(".")[0] in bad or m in bad or m.rsplit(".", 1)[0] in bad))
    """
    out = subprocess.run(_child(code), env=_env(), capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------------ time


def test_functional_predicate_ends_the_old_value_and_keeps_history(memory):
    memory.add("I live in Oslo.", speaker="Anna", session="s1", at="2024-01-01",
               graph=G(("I", "lives_in", "Oslo"), types={"Oslo": LOCATION}))
    result = memory.add("I moved to Bergen.", speaker="Anna", session="s2", at="2024-06-01",
                        graph=G(("Anna", "lives_in", "Bergen"), types={"Bergen": LOCATION}))
    assert [f.object for f in result.added] == ["Bergen"]
    assert [(f.object, f.ended_by) for f in result.ended] == [("Oslo", "superseded")]
    assert [f.object for f in memory.facts("Anna")] == ["Bergen"]
    history = memory.history("Anna", "lives_in")
    assert [(f.object, f.valid_from.date().isoformat(), f.valid_to and f.valid_to.date().isoformat())
            for f in history] == [("Oslo", "2024-01-01", "2024-06-01"), ("Bergen", "2024-06-01", None)]
    assert [f.object for f in memory.facts("Anna", at="2024-03-01")] == ["Oslo"]
    assert memory.facts("Anna", at="2023-01-01") == []
    # a non-functional predicate accumulates
    memory.add(graph=G(("Anna", "likes", "jazz"), types={"jazz": "MISC"}), speaker="Anna", at="2024-07-01")
    memory.add(graph=G(("Anna", "likes", "skiing"), types={"skiing": "ACTIVITY"}), speaker="Anna", at="2024-07-02")
    assert {f.object for f in memory.facts("Anna") if f.predicate == "likes"} == {"jazz", "skiing"}


def test_said_of_the_past_does_not_end_the_newer_value(memory):
    memory.add(graph=G(("Anna", "works_at", "Equinor"), types={"Equinor": ORG}), at="2024-05-01")
    memory.add(graph=G(("Anna", "works_at", "Telenor"), types={"Telenor": ORG}), at="2020-01-01")
    assert [f.object for f in memory.facts("Anna")] == ["Equinor"]
    old = [f for f in memory.history("Anna", "works_at") if f.object == "Telenor"][0]
    assert old.valid_to.date().isoformat() == "2024-05-01" and old.ended_by == "superseded"


def test_symmetric_functional_predicate(memory):
    memory.add(graph=G(("Anna", "married_to", "Ben")), at="2010-01-01")
    memory.add(graph=G(("Ben", "married_to", "Anna")), at="2011-01-01")  # the same fact, the other way round
    assert [(f.subject, f.object, f.mentions) for f in memory.facts("Anna")] == [("Anna", "Ben", 2)]
    memory.add(graph=G(("Ben", "married_to", "Cleo")), at="2020-01-01")
    assert memory.facts("Anna") == []
    assert [f.object for f in memory.facts("Ben")] == ["Cleo"]


def test_inverse_predicates_are_one_fact(memory):
    memory.add(graph=G(("Tom", "child_of", "Anna")))
    memory.add(graph=G(("Anna", "mother_of", "Tom")))
    facts = memory.facts("Tom")
    assert [(f.subject, f.predicate, f.object, f.mentions) for f in facts] == [("Anna", "parent_of", "Tom", 2)]


def test_negation_ends_a_fact_and_is_not_stored(memory):
    memory.add("I live in Oslo and work at Equinor.", speaker="Anna", at="2024-01-01",
               graph=G(("I", "lives_in", "Oslo"), ("I", "works_at", "Equinor"),
                       types={"Oslo": LOCATION, "Equinor": ORG}))
    # an extractor that misses the "not": the clause still ends the fact and the relation is kept out
    result = memory.add("I don't live in Oslo any more.", speaker="Anna", at="2024-09-01",
                        graph=G(("I", "lives_in", "Oslo"), types={"Oslo": LOCATION}))
    assert result.added == [] and result.strengthened == []
    assert [(f.object, f.ended_by) for f in result.ended] == [("Oslo", "negated")]
    assert result.negated == [("Anna", "lives_in", "Oslo")]
    assert [f.object for f in memory.facts("Anna")] == ["Equinor"]
    # an ending verb, with nothing extracted at all
    memory.add("Oh, and I left Equinor last week.", speaker="Anna", at="2024-10-01", graph=Graph())
    assert memory.facts("Anna") == []
    assert [f.ended_by for f in memory.history("Anna")] == ["negated", "negated"]


def test_moved_from_ends_only_the_old_place(memory):
    memory.add(graph=G(("Ben", "lives_in", "Oslo"), types={"Oslo": LOCATION}), speaker="Ben", at="2024-01-01")
    memory.add("We moved from Oslo to Bergen.", speaker="Ben", at="2024-02-01",
               graph=G(("I", "lives_in", "Bergen"), types={"Bergen": LOCATION}))
    assert [f.object for f in memory.facts("Ben")] == ["Bergen"]


# ------------------------------------------------------------------------------------------------ entities


def test_speaker_identity_across_sessions(memory):
    memory.add("I have a cat named Potola.", speaker="Anna", session="monday",
               graph=G(("I", "has_pet", "Potola"), types={"Potola": "ANIMAL"}))
    memory.add("My cat Potola loves me.", speaker="Anna", session="friday",
               graph=G(("me", "has_pet", "Potola"), types={"Potola": "ANIMAL"}))
    memory.add("Anna's cat is Potola.", speaker="Ben", session="friday",
               graph=G(("Anna", "has_pet", "Potola"), types={"Potola": "ANIMAL"}))
    assert [e.name for e in memory.entities()] == ["Anna", "Potola"]
    [fact] = memory.facts("Anna")
    assert fact.mentions == 3
    assert {(m.session, m.speaker) for m in memory.provenance(fact)} == {("monday", "Anna"), ("friday", "Anna"),
                                                                        ("friday", "Ben")}
    folds = [(m.entity, m.merged, m.reason) for m in memory.merges("Anna")]
    assert ("Anna", "I", "speaker") in folds and ("Anna", "me", "speaker") in folds


def test_kinship_names_resolve_and_merge_when_named(memory):
    memory.add("My sister lives in Rome.", speaker="Anna", session="s1",
               graph=G(("my sister", "lives_in", "Rome"), types={"Rome": LOCATION}))
    # another speaker says it with the name
    memory.add("Anna's sister likes opera.", speaker="Ben", session="s2",
               graph=G(("Anna's sister", "likes", "opera"), types={"opera": "MISC"}))
    assert memory.resolve("Anna's sister") == "Anna's sister"
    assert {f.predicate for f in memory.facts("Anna's sister")} == {"lives_in", "likes"}
    # then she is named: the kin entity becomes Maria
    result = memory.add("My sister Maria is visiting.", speaker="Anna", session="s3",
                        graph=G(("I", "sibling_of", "Maria")))
    assert [(m.entity, m.merged) for m in result.merges if m.reason == "kinship"] == [("Maria", "Anna's sister")]
    assert {f.predicate for f in memory.facts("Maria")} == {"lives_in", "likes", "sibling_of"}
    assert memory.resolve("Anna's sister") == "Maria"
    assert memory.resolve("my sister", speaker="Anna") == "Maria"


_SIBLINGS = ("My sister lives in Rome. My brother likes jazz.",
             G(("my sister", "lives_in", "Rome"), ("my brother", "likes", "jazz"), types={"Rome": LOCATION}))
_PARENTS = ("My mother likes opera. My father likes jazz.",
            G(("my mother", "likes", "opera"), ("my father", "likes", "jazz")))


@pytest.mark.parametrize("stored, named, merges", [
    # nothing in `sibling_of` says Maria's gender: the sister and the brother both stay
    (_SIBLINGS, ("Maria is visiting.", G(("I", "sibling_of", "Maria"))), []),
    # ... unless the same add does: the turn's text, or a gendered predicate
    (_SIBLINGS, ("My sister Maria is visiting.", G(("I", "sibling_of", "Maria"))), [("Maria", "Anna's sister")]),
    (_SIBLINGS, ("Maria is visiting.", G(("Maria", "sister_of", "Anna"))), [("Maria", "Anna's sister")]),
    (("My sister lives in Rome.", G(("my sister", "lives_in", "Rome"))),
     ("Maria is visiting.", G(("I", "sibling_of", "Maria"))), [("Maria", "Anna's sister")]),
    (("My sibling lives in Rome.", G(("my sibling", "lives_in", "Rome"))),
     ("Sam is visiting.", G(("Anna", "sibling_of", "Sam"))), [("Sam", "Anna's sibling")]),
    # a brother is not the sister; two named siblings and one sister: which one is she?
    (("My sister lives in Rome.", G(("my sister", "lives_in", "Rome"))),
     ("Tom is visiting.", G(("Tom", "brother_of", "Anna"))), []),
    (("My sister lives in Rome.", G(("my sister", "lives_in", "Rome"))),
     ("Maria and Joanna are visiting.", G(("I", "sibling_of", "Maria"), ("I", "sibling_of", "Joanna"))), []),
    (_PARENTS, ("Eva is visiting.", G(("Eva", "parent_of", "Anna"))), []),
    (_PARENTS, ("Eva is visiting.", G(("Eva", "mother_of", "Anna"))), [("Eva", "Anna's mother")]),
    # two words of one role are one person
    (("My mom likes opera. My mother likes jazz.", G(("my mom", "likes", "opera"), ("my mother", "likes", "jazz"))),
     ("Eva is visiting.", G(("Anna", "child_of", "Eva"))), [("Eva", "Anna's mother"), ("Eva", "Anna's mom")]),
], ids=["sister-and-brother", "said-sister", "sister_of", "sister-alone", "sibling-alone", "brother-is-no-sister",
        "two-named", "mother-and-father", "mother_of", "mom-and-mother"])
def test_a_named_relative_becomes_the_one_stored_kin_that_fits(memory, stored, named, merges):
    """A kin word may say a gender ("sister", "father"; "sibling" and "parent" do not): a named relative becomes the
    stored kin only when exactly one fits, never one of the other gender, and not when the relation leaves it open."""
    memory.add(stored[0], speaker="Anna", session="s1", graph=stored[1])
    kin = {e.name for e in memory.entities() if "'s " in e.name}
    result = memory.add(named[0], speaker="Anna", session="s2", graph=named[1])
    _assert_consistent(memory, result)
    assert [(m.entity, m.merged) for m in result.merges if m.reason == "kinship"] == merges
    merged = {m for _, m in merges}
    assert {e.name for e in memory.entities() if "'s " in e.name} == kin - merged
    for name in kin:
        assert memory.resolve(name) == next((e for e, m in merges if m == name), name)


def test_kin_named_already_is_not_named_again(memory):
    """"Anna's sister" has a name of her own (a stated alias): a new sibling is another person, not her."""
    memory.add("My sister lives in Rome.", speaker="Anna", graph=G(("my sister", "lives_in", "Rome")))
    memory.add("My sister is called Maria.", speaker="Anna", graph=G(("my sister", "alternate_names", "Maria")))
    assert memory.resolve("Maria") == memory.resolve("my sister", speaker="Anna")
    result = memory.add("Joanna is visiting.", speaker="Anna", graph=G(("I", "sibling_of", "Joanna")))
    assert result.merges == []
    assert memory.resolve("Joanna") == "Joanna" and memory.resolve("Maria") != "Joanna"


@pytest.mark.parametrize("text, key, words", [
    ("My sister Maria is visiting.", "maria", {"sister"}),
    ("Maria, my little sister, is here.", "maria", {"sister"}),
    ("Maria is Anna's sister.", "maria", {"sister"}),
    ("My brother is Tom.", "tom", {"brother"}),
    ("My sister Maria and my brother Tom came.", "tom", {"brother"}),
    ("Maria's sister is here.", "maria", set()),
    ("My sister's friend Maria is here.", "maria", set()),
    ("I have a sister. Maria is nice.", "maria", set()),
    ("My sister and Maria came.", "maria", set()),
])
def test_kin_said_of_a_name(text, key, words):
    from hotmem.memory.text import kin_said_of

    assert kin_said_of(text, key) == words


def test_stated_alias_merges_entities(memory):
    memory.add(graph=G(("Speaker 2", "lives_in", "New York"), types={"New York": LOCATION}), session="d1")
    memory.add(graph=G(("Chandler Bing", "works_at", "a data company"), types={"a data company": ORG}),
               session="d1")
    result = memory.add(graph=G(("Speaker 2", "per:alternate_names", "Chandler Bing")), session="d1")
    # the name said that the entity does not show: "Speaker 2" is now Chandler Bing
    assert [(m.entity, m.merged, m.reason) for m in result.merges] == [("Chandler Bing", "Speaker 2", "alias")]
    assert len(memory.entities()) == 3
    assert {f.predicate for f in memory.facts("Chandler Bing")} == {"lives_in", "works_at"}
    assert memory.resolve("Speaker 2") == "Chandler Bing"


@pytest.mark.parametrize("speaker, before, now, added, merges", [
    # "Maria" names Ross; then Ross becomes the older Joey, and so does the subject of "Maria likes opera"
    (None, G(("Joey", "likes", "jazz"), ("Ross", "alternate_names", "Maria")),
     G(("Maria", "alternate_names", "Joey"), ("Maria", "likes", "opera")), ("Joey", "likes", "opera"),
     [("Joey", "Maria", "alias"), ("Joey", "Ross", "entity")]),
    # the same through kinship, as first seen: Ben's sister is Maria, then Maria is the older Anna
    ("Ben", G(("Anna", "likes", "jazz"), ("my sister", "likes", "opera"), ("I", "sibling_of", "Maria")),
     G(("my sister", "alternate_names", "Anna"), ("my sister", "works_at", "Equinor"), types={"Equinor": ORG}),
     ("Anna", "works_at", "Equinor"), [("Anna", "my sister", "alias"), ("Anna", "Maria", "entity")]),
], ids=["alias", "kinship"])
def test_a_fact_about_an_entity_merged_in_the_same_add_lands_on_what_it_became(
        memory, tmp_path, speaker, before, now, added, merges):
    """A name may reach an entity through another key than its own, and that entity be merged away later in the
    same add: the add's facts follow it to the entity it became, never to the deleted one. The merge records say
    both the alias said and the stored entity it reached."""
    memory.add(graph=before, speaker=speaker, session="s1")
    result = memory.add(graph=now, speaker=speaker, session="s1")
    _assert_consistent(memory, result)
    assert [f.triple for f in result.added] == [added]
    assert [(m.entity, m.merged, m.reason) for m in result.merges] == merges
    path = tmp_path / "memory.jsonl"
    assert memory.export(path) == len(path.read_text().splitlines())


def test_first_name_folds_into_the_only_person_with_it(memory):
    memory.add(graph=G(("Chandler Bing", "lives_in", "New York"), types={"New York": LOCATION}))
    memory.add(graph=G(("Chandler", "friends_with", "Joey")))
    assert memory.resolve("Chandler") == "Chandler Bing"
    assert {f.predicate for f in memory.facts("Chandler Bing")} == {"lives_in", "friends_with"}
    # and the other way round: the lone "Joey" stored first takes the full name
    memory.add(graph=G(("Joey Tribbiani", "likes", "pizza"), types={"pizza": "FOOD"}))
    assert memory.resolve("Joey") == "Joey Tribbiani"
    # two people with the first name: no guess
    memory.add(graph=G(("Ross Geller", "likes", "dinosaurs"), ("Ross Jones", "likes", "films"),
                       types={"dinosaurs": "MISC", "films": "WORK"}))
    memory.add(graph=G(("Ross", "likes", "sandwiches"), types={"sandwiches": "FOOD"}))
    assert memory.resolve("Ross") == "Ross"
    with Memory(memory._store.target, first_names=False) as strict:
        strict.add(graph=G(("Rachel", "likes", "fashion"), ("Rachel Green", "likes", "shoes"),
                           types={"fashion": "MISC", "shoes": "MISC"}))
        assert strict.resolve("Rachel") == "Rachel" and strict.resolve("Rachel Green") == "Rachel Green"


# ------------------------------------------------------------------------------------------------ provenance


class FakeExtractor:
    """An extractor backend: any callable returning a Graph; `backend` and `model_version` go to provenance."""

    backend = "fake"
    model_version = "fake-1"

    def __init__(self, graphs: dict[str, Graph]):
        self.graphs = graphs
        self.calls = 0

    def __call__(self, turns, speaker=None):
        self.calls += 1
        text = " ".join(t.text for t in turns)
        return next((g for said, g in self.graphs.items() if said in text), Graph())


def test_extractor_and_full_provenance(target):
    extractor = FakeExtractor({"I work at Equinor.": G(("I", "works_at", "Equinor"), types={"Equinor": ORG},
                                                        confidence=0.6)})
    with Memory(target, extractor=extractor) as memory:
        memory.add("I work at Equinor.", speaker="Anna", session="s1", at="2024-01-01T10:00:00+02:00")
        memory.add([("Anna", "Hello!"), ("Ben", "Hi."), ("Anna", "I work at Equinor.")], session="s1",
                   at="2024-01-02")
        [fact] = memory.facts("Anna")
        assert fact.mentions == 2 and fact.max_confidence == 0.6
        assert fact.confidence == pytest.approx(1 - 0.4 * 0.4)  # repeated mentions strengthen
        first, second = memory.provenance(fact)
        assert (first.session, first.turn, first.speaker, first.text) == ("s1", 0, "Anna", "I work at Equinor.")
        assert first.at.isoformat() == "2024-01-01T08:00:00+00:00"  # stored in UTC
        assert (first.extractor, first.model_version, first.confidence) == ("fake", "fake-1", 0.6)
        assert (second.turn, second.speaker) == (3, "Anna")  # the session's running turn count, then its turn
        assert extractor.calls == 2  # once per add: the three turns went in one call
        memory.add("  ", speaker="Anna")  # nothing to extract: no call, no change
        assert extractor.calls == 2


# ------------------------------------------------------------------------------------------------ queries


def test_about_finds_mentioned_entities_and_their_neighbourhood(memory):
    memory.add(graph=G(("Anna", "lives_in", "Oslo"), ("Anna", "sibling_of", "Maria"), ("Maria", "lives_in", "Rome"),
                       ("Ben", "works_at", "Equinor"), types={"Oslo": LOCATION, "Rome": LOCATION, "Equinor": ORG}))
    facts = memory.about("I'm flying to Rome tomorrow")
    assert [f.triple for f in facts] == [("Maria", "lives_in", "Rome")]
    facts = memory.about("Did Maria call?")
    assert {f.triple for f in facts} == {("Anna", "sibling_of", "Maria"), ("Maria", "lives_in", "Rome")}
    facts = memory.about("my sister says hi", speaker="Anna")  # "my" -> Anna
    assert {f.triple for f in facts} == {("Anna", "lives_in", "Oslo"), ("Anna", "sibling_of", "Maria")}
    assert memory.about("nothing known here") == []


def test_graph_at_a_time_and_networkx(memory):
    memory.add(graph=G(("Anna", "lives_in", "Oslo"), types={"Oslo": LOCATION}), at="2024-01-01")
    memory.add(graph=G(("Anna", "lives_in", "Bergen"), ("Anna", "likes", "jazz"),
                       types={"Bergen": LOCATION, "jazz": "MISC"}), at="2024-06-01")
    now = memory.graph()
    assert isinstance(now, Graph)
    assert {r.triple for r in now.relations} == {("Anna", "lives_in", "Bergen"), ("Anna", "likes", "jazz")}
    then = memory.graph(at="2024-02-01")
    assert {r.triple for r in then.relations} == {("Anna", "lives_in", "Oslo")}
    assert then.entity("Oslo").type == LOCATION
    nx_graph = now.to_networkx()
    assert nx_graph.has_edge("Anna", "Bergen", key="lives_in")


def test_session_working_memory(memory):
    memory.add(graph=G(("Anna", "lives_in", "Oslo"), types={"Oslo": LOCATION}), session="s1")
    memory.add(graph=G(("Anna", "wants", "coffee"), types={"coffee": "FOOD"}), session="s2", persist=False)
    memory.add(graph=G(("Anna", "likes", "jazz"), types={"jazz": "MISC"}), session="s2", persist=False)
    memory.add(graph=G(("Anna", "lives_in", "Oslo"), types={"Oslo": LOCATION}), session="s2")
    assert {f.object for f in memory.facts("Anna")} == {"Oslo"}
    assert {f.object for f in memory.facts("Anna", session="s2")} == {"Oslo", "coffee", "jazz"}
    assert {r.object for r in memory.session_graph("s2").relations} == {"Oslo", "coffee", "jazz"}
    assert {r.object for r in memory.session_graph("s1").relations} == {"Oslo"}
    assert memory.end_session("s2") == 2
    assert memory.session_graph("s2").is_empty
    assert {f.object for f in memory.facts("Anna", session="s2")} == {"Oslo"}
    # keep=True moves working memory into the persistent graph (merging with what is already there)
    memory.add(graph=G(("Anna", "likes", "jazz"), types={"jazz": "MISC"}), session="s3", persist=False)
    memory.add(graph=G(("Anna", "lives_in", "Oslo"), types={"Oslo": LOCATION}), session="s3", persist=False)
    assert memory.end_session("s3", keep=True) == 2
    facts = {f.object: f for f in memory.facts("Anna")}
    assert set(facts) == {"Oslo", "jazz"} and facts["Oslo"].mentions == 3
    assert memory.stats()["facts"] == 2


def test_forget_deletes_a_person(memory):
    memory.add("I live in Oslo.", speaker="Anna", graph=G(("I", "lives_in", "Oslo"), ("I", "friends_with", "Ben"),
                                                          types={"Oslo": LOCATION}))
    memory.add(graph=G(("Ben", "works_at", "Equinor"), types={"Equinor": ORG}), speaker="Ben")
    assert memory.forget("Anna") == 2
    assert memory.facts("Anna") == [] and memory.resolve("Anna") is None
    assert [f.triple for f in memory.graph().relations] == [("Ben", "works_at", "Equinor")]
    stats = memory.stats()
    assert stats["facts"] == 1 and stats["mentions"] == 1
    assert memory.forget("Nobody") == 0


def test_forget_takes_her_kin_and_her_name_from_what_stays(memory, tmp_path):
    """A privacy request: her facts go, so do the entities named only through her ("Anna's mother", "Anna's cat")
    with theirs; her sister, named Maria since, stays Maria's without the names through Anna, and the provenance
    that stays keeps no word of her (speaker or text); another's own words stay whole."""
    memory.add("My sister lives in Rome. My mother likes opera.", speaker="Anna", session="s1", at="2024-01-01",
               graph=G(("my sister", "lives_in", "Rome"), ("my mother", "likes", "opera"),
                       types={"Rome": LOCATION, "opera": "MISC"}))
    memory.add("My cousin likes chess.", speaker="Anna", session="s1", at="2024-01-02",
               graph=G(("my cousin", "likes", "chess"), types={"chess": "MISC"}))
    memory.add("My sister Maria is visiting.", speaker="Anna", session="s2", at="2024-02-01",
               graph=G(("I", "sibling_of", "Maria")))
    # named by an alias, the cousin keeps showing as "Anna's cousin" (the older entity keeps its name)
    memory.add("Anna's cousin is Ross.", speaker="Ben", session="s2", at="2024-02-02",
               graph=G(("Anna's cousin", "alternate_names", "Ross")))
    memory.add("Maria works at Equinor, Anna says. Anna's cat likes fish.", speaker="Ben", session="s3",
               at="2024-03-01", graph=G(("Maria", "works_at", "Equinor"), ("Anna's cat", "likes", "fish"),
                                        types={"Equinor": ORG, "fish": "FOOD", "Anna's cat": "ANIMAL"}))
    memory.add("Ben likes jazz.", speaker="Anna", session="s3", at="2024-03-02",
               graph=G(("Ben", "likes", "jazz"), types={"jazz": "MISC"}))
    memory.add("I live in Oslo.", speaker="Ben", session="s3", at="2024-03-03",
               graph=G(("I", "lives_in", "Oslo"), types={"Oslo": LOCATION}))
    assert memory.resolve("Ross") == "Anna's cousin"
    mentions = memory.stats()["mentions"]

    # hers (sibling_of Maria), her mother's (opera), her cat's (fish)
    assert memory.forget("Anna") == 3
    _assert_consistent(memory)
    for name in ("Anna", "Anna's sister", "Anna's mother", "Anna's cat", "Anna's cousin"):
        assert memory.resolve(name) is None, name
    assert memory.resolve("Maria") == "Maria" and memory.resolve("Ross") == "Ross"
    facts = {f.triple: f for f in memory.graph().relations}
    assert set(facts) == {("Maria", "lives_in", "Rome"), ("Maria", "works_at", "Equinor"), ("Ross", "likes", "chess"),
                          ("Ben", "likes", "jazz"), ("Ben", "lives_in", "Oslo")}
    provenance = {f.triple: [(m.speaker, m.text) for m in memory.provenance(f)] for f in memory.facts("Maria")}
    assert provenance == {("Maria", "lives_in", "Rome"): [(None, "")],  # she said it
                          ("Maria", "works_at", "Equinor"): [("Ben", "")]}  # Ben said it, naming her
    [jazz] = [f for f in memory.facts("Ben") if f.object == "jazz"]
    assert [(m.speaker, m.text, m.session) for m in memory.provenance(jazz)] == [(None, "", "s3")]
    [oslo] = [f for f in memory.facts("Ben") if f.object == "Oslo"]
    assert [(m.speaker, m.text) for m in memory.provenance(oslo)] == [("Ben", "I live in Oslo.")]
    assert memory.stats()["mentions"] == mentions - 3  # the facts that stay keep their mention rows
    # nothing stored names her any more: names, merge records, provenance
    path = tmp_path / "memory.jsonl"
    memory.export(path)
    assert "anna" not in path.read_text().casefold()
    assert memory.forget("Anna") == 0


def test_forget_is_one_transaction(memory, monkeypatch):
    from hotmem.memory import memory as module

    memory.add("My sister lives in Rome.", speaker="Anna", graph=G(("my sister", "lives_in", "Rome"),
                                                                   ("I", "likes", "jazz")))
    memory.add("Anna is nice, and I like jazz.", speaker="Ben",
               graph=G(("Ben", "likes", "Anna"), ("I", "likes", "jazz")))
    before = memory._store.fetchall("SELECT * FROM hm_mentions ORDER BY id"), _counts(memory)

    def fail(*args):
        raise RuntimeError("power cut")

    monkeypatch.setattr(module, "says", fail)  # the last step: every deletion made, not yet committed
    with pytest.raises(RuntimeError):
        memory.forget("Anna")
    assert (memory._store.fetchall("SELECT * FROM hm_mentions ORDER BY id"), _counts(memory)) == before
    assert memory.resolve("Anna's sister") == "Anna's sister"


def test_export_import_roundtrip_across_stores(target, tmp_path):
    path = tmp_path / "memory.jsonl"
    with Memory(target) as memory:
        memory.add("I live in Oslo.", speaker="Anna", session="s1", at="2024-01-01",
                   graph=G(("I", "lives_in", "Oslo"), types={"Oslo": LOCATION}))
        memory.add("I moved to Bergen.", speaker="Anna", session="s2", at="2024-06-01",
                   graph=G(("I", "lives_in", "Bergen"), types={"Bergen": LOCATION}))
        memory.add(graph=G(("Speaker 1", "alternate_names", "Anna")), session="s2")
        lines = memory.export(path)
        before = memory.history("Anna", "lives_in")
    assert lines == len(path.read_text().splitlines())
    other = tmp_path / "copy.duckdb"
    with Memory(other) as copy:
        assert copy.import_(path) == 2
        after = copy.history("Anna", "lives_in")
        assert [f.model_dump(exclude={"id"}) for f in after] == [f.model_dump(exclude={"id"}) for f in before]
        assert copy.resolve("Speaker 1") == "Anna"
        assert len(copy.provenance(after[0])) == 1
        assert copy.import_(path) == 0  # idempotent


def test_import_of_a_bad_file_changes_nothing(memory, tmp_path):
    memory.add(graph=G(("Anna", "lives_in", "Oslo"), types={"Oslo": LOCATION}))
    before = _counts(memory)
    good = tmp_path / "good.jsonl"
    memory.export(good)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + '{"kind": "fact", "data": {"subject": "x"}}\n')
    with pytest.raises(InvalidInputError, match=r"bad.jsonl:\d+"):
        memory.import_(bad)
    with pytest.raises(InvalidInputError):
        memory.import_(tmp_path / "missing.jsonl")
    assert _counts(memory) == before


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("call", [
    lambda m: m.add(),
    lambda m: m.add(42),
    lambda m: m.add(b"bytes"),
    lambda m: m.add("text", speaker=7, graph=Graph()),
    lambda m: m.add("text", session="", graph=Graph()),
    lambda m: m.add("text", at="yesterday-ish", graph=Graph()),
    lambda m: m.add("text", turn=-1, graph=Graph()),
    lambda m: m.add("bad \ud800 text", graph=Graph()),
    lambda m: m.add(graph={"entities": "nope"}),
    lambda m: m.add(graph="not a graph"),
    lambda m: m.facts(""),
    lambda m: m.about(None),
    lambda m: m.history("Anna", ""),
    lambda m: m.forget(""),
    lambda m: m.forget(["Anna"]),
])
def test_bad_input_raises_typed_error_and_changes_nothing(memory, call):
    memory.add(graph=G(("Anna", "lives_in", "Oslo"), types={"Oslo": LOCATION}))
    before = _counts(memory)
    with pytest.raises(InvalidInputError):
        call(memory)
    assert _counts(memory) == before


def test_a_failure_inside_add_rolls_everything_back(memory, monkeypatch):
    from hotmem.memory import memory as module

    memory.add(graph=G(("Anna", "lives_in", "Oslo"), types={"Oslo": LOCATION}))
    before = _counts(memory)
    original = module._Writer.write

    def write_then_fail(self, *args, **kwargs):
        original(self, *args, **kwargs)  # everything written, not yet committed
        raise RuntimeError("power cut")

    monkeypatch.setattr(module._Writer, "write", write_then_fail)
    with pytest.raises(RuntimeError):
        memory.add(graph=G(("Anna", "lives_in", "Bergen"), ("Ben", "likes", "jazz"),
                           types={"Bergen": LOCATION, "jazz": "MISC"}))
    assert _counts(memory) == before
    assert [f.object for f in memory.facts("Anna")] == ["Oslo"]
    # nothing of the rolled-back add stays in the writer's cache either
    monkeypatch.setattr(module._Writer, "write", original)
    result = memory.add(graph=G(("Anna", "lives_in", "Bergen"), ("Ben", "likes", "jazz"),
                                types={"Bergen": LOCATION, "jazz": "MISC"}))
    assert [(f.object, f.ended_by) for f in result.ended] == [("Oslo", "superseded")]
    assert [f.triple for f in result.added] == [("Anna", "lives_in", "Bergen"), ("Ben", "likes", "jazz")]
    assert _counts(memory)["facts"] == before["facts"] + 2


def test_an_entity_an_add_never_met_is_an_internal_error(memory, monkeypatch):
    """An add names its facts' entities by what it met; an id it did not is a bug, raised (and rolled back) rather
    than shown as a number."""
    from hotmem.memory import memory as module

    memory.add(graph=G(("Anna", "lives_in", "Oslo"), types={"Oslo": LOCATION}), at="2024-01-01")
    before = _counts(memory)
    monkeypatch.setattr(module._Writer, "entities", lambda self, ids: {})  # Oslo, the ended value, never read
    with pytest.raises(AssertionError, match="internal error: entity"):
        memory.add(graph=G(("Anna", "lives_in", "Bergen"), types={"Bergen": LOCATION}), at="2024-02-01")
    assert _counts(memory) == before


# ------------------------------------------------------------------------------------------------ the writer's cache


def _conversation(seed: int, steps: int) -> list[tuple[str, tuple, dict]]:
    """Random adds (negations, aliases, kin, first names, working memory, times out of order), sessions ending and
    people forgotten: each a memory method's name and its arguments."""
    rng = random.Random(seed)
    people = ["Anna", "Ben", "Chandler", "Chandler Bing", "Joey", "Joey Tribbiani", "Maria", "Speaker 2", "Ross"]
    said = people + ["I", "my sister", "Anna's sister", "Ben's mother"]
    objects = {"lives_in": ["Oslo", "Bergen", "Rome"], "works_at": ["Equinor", "Telenor"], "likes": ["jazz", "opera"],
               "friends_with": people, "married_to": people, "sibling_of": people, "per:alternate_names": people,
               "child_of": people, "parent_of": people}
    negations = {"lives_in": "I don't live in {} any more.", "works_at": "I left {} last week.",
                 "likes": "I no longer like {}."}
    ops, at = [], datetime(2024, 1, 1)
    for _ in range(steps):
        at += timedelta(hours=rng.choice([1, 1, 5, -30]))
        session, speaker = rng.choice(["s1", "s2", "s3"]), rng.choice([*people[:5], None])
        if rng.random() < 0.04:
            ops.append(("end_session", (session,), {"keep": rng.random() < 0.5}))
            continue
        if rng.random() < 0.02:
            ops.append(("forget", (rng.choice(people),), {}))
            continue
        triples = []
        for _ in range(rng.choice([1, 2, 3])):
            predicate = rng.choice(sorted(objects))
            triples.append((rng.choice(said), predicate, rng.choice(objects[predicate])))
        text = "About " + ", ".join(o for _, _, o in triples) + "."
        if triples[0][1] in negations and rng.random() < 0.2:
            text = negations[triples[0][1]].format(triples[0][2])
        graph = G(*triples, types={o: "MISC" for _, p, o in triples if p in negations})
        ops.append(("add", (text,), {"graph": graph, "speaker": speaker, "session": session, "at": at,
                                      "persist": rng.random() < 0.85}))
    return ops


def test_the_writers_cache_changes_nothing(tmp_path):
    """The only writer of a DuckDB file answers an add's reads from what earlier adds taught it: the same
    conversation, with the cache emptied before every step, gives the same results and the same rows, and every
    step leaves the memory consistent (this seed's merges once left a fact on a deleted entity)."""
    dumps = []
    for forgetful in (False, True):
        with Memory(tmp_path / f"{forgetful}.duckdb") as memory:
            assert memory._store.cache is not None
            results = []
            for method, args, kwargs in _conversation(seed=1, steps=250):
                if forgetful:
                    memory._store.cache.clear()
                results.append(getattr(memory, method)(*args, **kwargs))
                _assert_consistent(memory, results[-1] if isinstance(results[-1], AddResult) else None)
            memory.export(tmp_path / f"{forgetful}.jsonl")
            tables = {t: memory._store.fetchall(f"SELECT * FROM hm_{t} ORDER BY 1, 2")
                      for t in ("entities", "aliases", "facts", "mentions", "merges", "sessions")}
            dumps.append((results, tables))
    assert dumps[0] == dumps[1]
    adds = [r for r in dumps[0][0] if isinstance(r, AddResult)]  # the conversation went everywhere
    assert {m.reason for r in adds for m in r.merges} == {"alias", "entity", "kinship", "first_name", "speaker"}
    assert {f.ended_by for r in adds for f in r.ended} == {"superseded", "negated"}
    assert any(r.strengthened for r in adds) and any(r.negated for r in adds)


def test_a_second_writer_in_the_process_turns_the_cache_off(tmp_path):
    path = tmp_path / "memory.duckdb"
    with Memory(path) as first:
        first.add(graph=G(("Anna", "lives_in", "Oslo"), types={"Oslo": LOCATION}), at="2024-01-01")
        assert first._store.cache is not None
        with Memory(path) as second:  # the same DuckDB database, through another connection
            assert first._store.cache is None and second._store.cache is None
            second.add(graph=G(("Anna", "lives_in", "Bergen"), types={"Bergen": LOCATION}), at="2024-02-01")
            result = first.add(graph=G(("Anna", "lives_in", "Rome"), types={"Rome": LOCATION}), at="2024-03-01")
            assert [f.object for f in result.ended] == ["Bergen"]
        assert first._store.cache is not None  # alone again, starting from what is stored
        result = first.add(graph=G(("Anna", "lives_in", "Oslo"), types={"Oslo": LOCATION}), at="2024-04-01")
        assert [f.object for f in result.ended] == ["Rome"]
    with Memory(path, read_only=True) as reader:
        assert reader._store.cache is None
        assert [f.object for f in reader.history("Anna", "lives_in")] == ["Oslo", "Bergen", "Rome", "Oslo"]


# ------------------------------------------------------------------------------------------------ processes


_ADD_LOOP = """
    import sys
    from hotmem.memory import Memory
    from hotmem.types import Entity, Graph, Relation
    with Memory(sys.argv[1]) as memory:
        for i in range(int(sys.argv[2]), 10**6):
            person = f"Person {i}"
            graph = Graph(entities=[Entity(name=person, type="PERSON"), Entity(name=f"City {i % 7}", type="LOCATION")],
                          relations=[Relation(subject=person, predicate="lives_in", object=f"City {i % 7}"),
                                     Relation(subject=person, predicate="likes", object=f"Thing {i % 5}"),
                                     Relation(subject=person, predicate="friends_with", object="Anna")])
            memory.add(f"{person} lives in City {i % 7}.", speaker=person, session=f"s{i % 3}", graph=graph)
            print(i, flush=True)
"""


def _check_complete(memory: Memory) -> int:
    """Every fact has its mentions and every mention full provenance; each add landed whole (3 facts a person)."""
    store = memory._store
    broken = store.fetchall(
        "SELECT f.id FROM hm_facts f LEFT JOIN (SELECT fact_id, count(*) AS n FROM hm_mentions GROUP BY fact_id) m "
        "ON m.fact_id = f.id WHERE m.n IS NULL OR m.n <> f.mentions")
    assert broken == []
    incomplete = store.fetchone(
        "SELECT count(*) FROM hm_mentions WHERE session IS NULL OR turn IS NULL OR text IS NULL OR text = '' "
        "OR said_at IS NULL OR extractor IS NULL OR speaker IS NULL")
    assert incomplete[0] == 0
    orphans = store.fetchone(
        "SELECT count(*) FROM hm_mentions WHERE fact_id NOT IN (SELECT id FROM hm_facts)")
    assert orphans[0] == 0
    per_person = store.fetchall(
        "SELECT e.name, count(*) FROM hm_facts f JOIN hm_entities e ON e.id = f.subject_id "
        "WHERE e.name LIKE 'Person ' || '%' GROUP BY e.name")
    assert all(n == 3 for _, n in per_person), [p for p in per_person if p[1] != 3]
    return len(per_person)


@pytest.mark.parametrize("kills", [3])
def test_sigkill_mid_add_leaves_the_store_before_or_after(target, kills):
    """A writer killed at random moments: the store opens, and holds whole adds only, each with full provenance."""
    done = 0
    for round_ in range(kills):
        child = subprocess.Popen(_child(_ADD_LOOP) + [target, str(done)], env=_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        printed = 0
        deadline = time.monotonic() + 60
        while printed < 15 + 7 * round_ and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            printed += 1
        time.sleep(0.003 * (round_ + 1))  # land inside some add
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert printed >= 15, child.stderr.read()
        with Memory(target) as memory:
            people = _check_complete(memory)
        assert people >= done + printed  # every committed add is there (maybe one more, killed before printing)
        done = people
    assert done >= 3 * 15


def test_second_duckdb_writer_process_gets_a_typed_error(tmp_path):
    path = tmp_path / "memory.duckdb"
    with Memory(path) as memory:
        memory.add(graph=G(("Anna", "lives_in", "Oslo"), types={"Oslo": LOCATION}))
        code = """
            import sys
            from hotmem.memory import Memory, MemoryLockedError
            from hotmem.errors import HotmemError
            try:
                Memory(sys.argv[1])
            except MemoryLockedError as exc:
                print("locked", isinstance(exc, HotmemError))
        """
        out = subprocess.run(_child(code) + [str(path)], env=_env(), capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "locked True", out.stderr
        memory.add(graph=G(("Anna", "likes", "jazz"), types={"jazz": "MISC"}))  # the writer is undisturbed
    with Memory(path) as memory:
        assert len(memory.facts("Anna")) == 2
    assert issubclass(MemoryLockedError, HotmemError)


def test_two_postgres_writer_processes_both_land(postgres_dsn):
    Memory(postgres_dsn).close()  # schema first, so the two children only write
    code = """
        import sys
        from hotmem.memory import Memory
        from hotmem.types import Entity, Graph, Relation
        who = sys.argv[2]
        with Memory(sys.argv[1]) as memory:
            for i in range(40):
                # both writers name the same new entities at the same time: resolution must not split them
                graph = Graph(relations=[Relation(subject=f"{who} {i}", predicate="friends_with", object=f"Shared {i}"),
                                         Relation(subject=f"Shared {i}", predicate="lives_in", object="Oslo")])
                memory.add(f"{who} {i} is friends with Shared {i}.", speaker=who, session=who, graph=graph)
    """
    children = [subprocess.Popen(_child(code) + [postgres_dsn, who], env=_env(), stderr=subprocess.PIPE, text=True)
                for who in ("Writer A", "Writer B")]
    for child in children:
        assert child.wait(timeout=120) == 0, child.stderr.read()
    with Memory(postgres_dsn) as memory:
        names = [e.name for e in memory.entities()]
        assert len(names) == len(set(names)) == 40 * 3 + 1  # 2 x 40 writers' people, 40 shared, Oslo
        [oslo] = [f for f in memory.facts("Shared 0") if f.predicate == "lives_in"]
        assert oslo.mentions == 2
        assert memory.stats()["mentions"] == 2 * 40 * 2
        _check_complete_pg = memory._store.fetchall(
            "SELECT count(*) FROM hm_facts f WHERE f.mentions <> (SELECT count(*) FROM hm_mentions m "
            "WHERE m.fact_id = f.id)")
        assert _check_complete_pg == [(0,)]


# ------------------------------------------------------------------------------------------------ CLI


def test_cli(tmp_path, capsys):
    import argparse

    from hotmem.memory.cli import add_parser

    parser = argparse.ArgumentParser(prog="hotmem")
    add_parser(parser.add_subparsers(dest="command"))
    path = str(tmp_path / "memory.duckdb")
    graph = tmp_path / "graph.json"
    graph.write_text(G(("I", "lives_in", "Oslo"), types={"Oslo": LOCATION}).to_json())

    def run(*argv: str) -> tuple[int, str]:
        args = parser.parse_args(["memory", *argv])
        code = args.func(args)
        return code, capsys.readouterr().out

    code, out = run("add", "--db", path, "--speaker", "Anna", "--session", "s1", "--at", "2024-01-01",
                    "--graph", str(graph), "I live in Oslo.")
    assert code == 0 and "Anna --lives_in--> Oslo" in out
    graph.write_text(G(("I", "lives_in", "Bergen"), types={"Bergen": LOCATION}).to_json())
    run("add", "--db", path, "--speaker", "Anna", "--at", "2024-06-01", "--graph", str(graph), "I moved to Bergen.")
    code, out = run("query", "--db", path, "Anna")
    assert code == 0 and "Bergen" in out and "Oslo" not in out
    code, out = run("query", "--db", path, "--about", "Is Bergen nice?")
    assert "Bergen" in out
    code, out = run("history", "--db", path, "Anna", "lives_in")
    assert code == 0 and out.index("Oslo") < out.index("Bergen")
    code, out = run("query", "--db", path, "--json", "Anna")
    assert json.loads(out)[0]["object"] == "Bergen"
    code, out = run("export", "--db", path, str(tmp_path / "out.jsonl"))
    assert code == 0 and (tmp_path / "out.jsonl").is_file()
    code, out = run("query", "--db", path, "Nobody")
    assert code == 0 and "no facts" in out
    code, out = run("add", "--db", path, "--graph", str(tmp_path / "missing.json"), "x")
    assert code == 2
