"""Schema alignment: the shipped PersonaExt map, mapping graphs into our schema, and checks at load."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from hotmem.alignment import AlignmentNotFoundError, SchemaAlignment, StaleAlignmentWarning, shipped_alignments
from hotmem.errors import HotmemError, SchemaMismatchError
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema, relation_type
from hotmem.types import Entity, Graph, Relation

NAME = "personaext"


#: Names the tests below use, to expand the map over where the corpus's own inventory is not here
TEST_NAMES = ("have_pet", "live_in_citystatecountry", "has_profession", "like_food", "like_sports", "like_general",
              "employed_by_company", "have_chidren", "misc_attribute", "have_no", "do_not_eat",
              "pre_employed_by_company", "marital_status", "name", "attend_school", "live_in_general", "have_family",
              "other", "like_animal", "own", "have_vehicle", "gender")


def _inventory() -> tuple[str, ...] | None:
    """PersonaExt's relation names, read where the data lies (the repository holds no copy)."""
    from hotmem.data import dataset_file, find_data_root, personaext_schema

    return personaext_schema(dataset_file("personaext")).predicates if find_data_root() is not None else None


@pytest.fixture(scope="module")
def alignment() -> SchemaAlignment:
    return SchemaAlignment.load(NAME).expand(_inventory() or TEST_NAMES)


def _graph(*triples: tuple[str, str, str, str, str]) -> Graph:
    """(head, head type, predicate, tail, tail type) rows -> a graph, as the PersonaExt loader builds them."""
    entities: dict[str, Entity] = {}
    for head, head_type, _, tail, tail_type in triples:
        entities.setdefault(head, Entity(name=head, type=head_type))
        entities.setdefault(tail, Entity(name=tail, type=tail_type))
    relations = [Relation(subject=h, predicate=p, object=t) for h, _, p, t, _ in triples]
    return Graph(entities=list(entities.values()), relations=relations)


def _write(tmp_path: Path, name: str = "map", **changes) -> Path:
    data = json.loads(SchemaAlignment.load(NAME).expand(TEST_NAMES).model_dump_json())
    if "predicates" in changes:  # a map by names alone
        data.update(rules=[], tail_types_by_suffix={})
    data.update(changes)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


# --------------------------------------------------------------------------- the shipped map


def test_shipped_map_loads_by_name_and_by_path(alignment):
    assert NAME in shipped_alignments()
    assert alignment.source == "personaext" and alignment.target == CONVERSATION_SCHEMA.name
    assert alignment.schema is CONVERSATION_SCHEMA
    path = Path(__file__).resolve().parent.parent / "hotmem" / "alignments" / NAME / "hotmem-conversation.json"
    assert SchemaAlignment.load(path) == SchemaAlignment.load(NAME)
    assert SchemaAlignment.load(path).rules == alignment.rules and alignment.rules
    # the shipped file decides by rules and copies no inventory: names are listed only once expanded
    assert SchemaAlignment.load(NAME).predicates == {}


def test_shipped_map_is_current_for_the_schema(alignment):
    """A stale fingerprint only warns at load; here it fails, so whoever edits the schema reviews the map too."""
    assert alignment.target_fingerprint == CONVERSATION_SCHEMA.fingerprint(), (
        "CONVERSATION_SCHEMA changed: review hotmem/alignments/personaext/hotmem-conversation.json, then update its "
        "target_fingerprint"
    )


def test_every_target_exists_and_every_tail_type_is_allowed(alignment):
    for source, mapping in alignment.mapped.items():
        spec = CONVERSATION_SCHEMA.get(mapping.predicate)
        assert spec is not None, source
        if mapping.tail_type:
            allowed = spec.head_types if mapping.flip else spec.tail_types
            assert mapping.tail_type in allowed, source


def test_the_map_lists_all_of_personaexts_inventory(alignment):
    """105 declared relations + 3 only used in the data; each is a decision (mapped or null), none an omission."""
    if _inventory() is None:
        pytest.skip("PersonaExt is not here: its inventory is read where the data lies")
    assert len(alignment.predicates) == 108
    assert len(alignment.mapped) + len(alignment.unmapped) == 108
    for name in (
        "have_pet",
        "live_in_citystatecountry",
        "misc_attribute",
        "has_profession",
        "have_chidren",
        "have_children",
        "like_sport",
        "like_subject",
        "dislike_music",
        "pre_employed_by_company",
    ):
        assert name in alignment.predicates


@pytest.mark.parametrize(
    ("source", "predicate", "tail_type", "flip"),
    [
        ("have_pet", "has_pet", "ANIMAL", False),
        ("live_in_citystatecountry", "lives_in", "LOCATION", False),
        ("has_profession", "works_as", "MISC", False),
        ("like_food", "likes", "FOOD", False),
        ("like_sports", "likes", "ACTIVITY", False),
        ("like_general", "likes", None, False),
        ("employed_by_company", "works_at", "ORGANIZATION", False),
        ("have_chidren", "child_of", "PERSON", True),
        ("misc_attribute", "has_trait", "MISC", False),
    ],
)
def test_key_decisions(alignment, source, predicate, tail_type, flip):
    mapping = alignment.mapping(source)
    assert mapping is not None
    assert (mapping.predicate, mapping.tail_type, mapping.flip) == (predicate, tail_type, flip)


@pytest.mark.parametrize(
    "source",
    [
        "have_no",
        "do_not_eat",
        "pre_employed_by_company",
        "marital_status",
        "name",
        "attend_school",
        "live_in_general",
        "have_family",
        "other",
    ],
)
def test_no_equivalent_stays_out(alignment, source):
    assert source in alignment.predicates and alignment.mapping(source) is None


# --------------------------------------------------------------------------- relations and graphs


def test_map_relation(alignment):
    relation = Relation(subject="speaker", predicate="have_pet", object="dog", confidence=0.8)
    assert alignment.map_relation(relation) == Relation(
        subject="speaker", predicate="has_pet", object="dog", confidence=0.8
    )
    son = alignment.map_relation(Relation(subject="speaker", predicate="have_chidren", object="son"))
    assert son.triple == ("son", "child_of", "speaker")
    assert alignment.map_relation(Relation(subject="speaker", predicate="marital_status", object="married")) is None
    assert alignment.map_relation(Relation(subject="speaker", predicate="not_a_relation", object="x")) is None


def test_map_graph_maps_retypes_and_drops(alignment):
    graph = _graph(
        ("speaker", "PERSON", "have_pet", "dog", "MISC"),
        ("speaker", "PERSON", "live_in_citystatecountry", "boston", "MISC"),
        ("speaker", "PERSON", "marital_status", "married", "MISC"),
        ("speaker", "PERSON", "have_chidren", "two sons", "PERSON"),
    )
    tally: Counter = Counter()
    mapped = alignment.map_graph(graph, tally=tally)
    assert {r.triple for r in mapped.relations} == {
        ("speaker", "has_pet", "dog"),
        ("speaker", "lives_in", "boston"),
        ("two sons", "child_of", "speaker"),
    }
    assert mapped.entity("dog").type == "ANIMAL"
    assert mapped.entity("boston").type == "LOCATION"
    assert mapped.entity("married") is None  # only in a dropped relation
    assert tally == Counter(triples=4, mapped=3, kept=3, unmapped=1)
    types = {e.name: e.type for e in mapped.entities}
    for relation in mapped.relations:
        assert CONVERSATION_SCHEMA.allows(relation, types[relation.subject], types[relation.object])


def test_map_graph_drops_and_counts_schema_invalid(alignment):
    """A head the schema does not allow ('we', typed MISC by the loader) drops the relation, counted as invalid."""
    graph = _graph(("we", "MISC", "have_pet", "cats", "ANIMAL"), ("speaker", "PERSON", "like_food", "tacos", "MISC"))
    tally: Counter = Counter()
    mapped = alignment.map_graph(graph, tally=tally)
    assert [r.triple for r in mapped.relations] == [("speaker", "likes", "tacos")]
    assert mapped.entity("tacos").type == "FOOD"
    assert mapped.entity("we") is None and mapped.entity("cats") is None
    assert tally["invalid"] == 1 and tally["kept"] == 1


def test_map_graph_counts_unlisted_and_keeps_orphans(alignment):
    graph = Graph(
        entities=[
            Entity(name="speaker", type="PERSON"),
            Entity(name="Paris", type="LOCATION"),
            Entity(name="x", type="MISC"),
        ],
        relations=[Relation(subject="speaker", predicate="invented_here", object="x")],
    )
    tally: Counter = Counter()
    mapped = alignment.map_graph(graph, tally=tally)
    assert mapped.relations == [] and [e.name for e in mapped.entities] == ["Paris"]
    assert tally == Counter(triples=1, unmapped=1, unlisted=1)
    assert alignment.map_graph(graph, keep_orphans=False).entities == []


def test_map_graph_adds_missing_endpoints(alignment):
    graph = Graph(relations=[Relation(subject="speaker", predicate="have_pet", object="parrot")])
    mapped = alignment.map_graph(graph)
    assert [r.triple for r in mapped.relations] == [("speaker", "has_pet", "parrot")]
    # the tail gets the map's type; the head the predicate's only allowed head type
    assert {(e.name, e.type) for e in mapped.entities} == {("speaker", "PERSON"), ("parrot", "ANIMAL")}


def test_coverage(alignment):
    graphs = [
        _graph(("speaker", "PERSON", "have_pet", "dog", "MISC")),
        _graph(("speaker", "PERSON", "have_pet", "cat", "ANIMAL"), ("speaker", "PERSON", "gender", "male", "MISC")),
        _graph(("we", "MISC", "have_pet", "fish", "ANIMAL")),
        _graph(("speaker", "PERSON", "mystery", "x", "MISC")),
    ]
    report = alignment.coverage(graphs)
    assert (report["graphs"], report["graphs_with_mapped"]) == (4, 2)
    assert (report["triples"], report["mapped"], report["unmapped"], report["invalid"], report["kept"]) == (
        5,
        3,
        2,
        1,
        2,
    )
    assert report["by_source"]["have_pet"] == {
        "target": "has_pet",
        "triples": 3,
        "mapped": 3,
        "unmapped": 0,
        "invalid": 1,
        "duplicate": 0,
        "kept": 2,
    }
    assert report["by_source"]["gender"]["target"] is None
    assert report["by_target"] == {"has_pet": 2}
    assert report["unlisted"] == {"mystery": 1}


# --------------------------------------------------------------------------- checks at load


def test_unknown_target_predicate_raises(tmp_path):
    path = _write(tmp_path, predicates={"have_pet": {"predicate": "has_petz"}})
    with pytest.raises(SchemaMismatchError, match="has_petz"):
        SchemaAlignment.load(path)


def test_tail_type_the_predicate_does_not_allow_raises(tmp_path):
    path = _write(tmp_path, predicates={"have_pet": {"predicate": "has_pet", "tail_type": "FOOD"}})
    with pytest.raises(SchemaMismatchError, match="FOOD"):
        SchemaAlignment.load(path)
    path = _write(tmp_path, predicates={"have_pet": {"predicate": "has_pet", "tail_type": "SPACESHIP"}})
    with pytest.raises(SchemaMismatchError, match="SPACESHIP"):
        SchemaAlignment.load(path)


def test_malformed_map_raises(tmp_path):
    path = _write(tmp_path, predicates={"have_pet": {"predicate": "has_pet", "tail": "ANIMAL"}})  # unknown key
    with pytest.raises(SchemaMismatchError):
        SchemaAlignment.load(path)
    path.write_text("{not json")
    with pytest.raises(SchemaMismatchError):
        SchemaAlignment.load(path)


def test_stale_fingerprint_warns_or_raises_when_strict(tmp_path):
    path = _write(tmp_path, target_fingerprint="000000000000")
    with pytest.warns(StaleAlignmentWarning):
        SchemaAlignment.load(path)
    with pytest.raises(SchemaMismatchError, match="fingerprint"):
        SchemaAlignment.load(path, strict=True)


def test_other_target_schema_must_be_passed(tmp_path):
    schema = RelationSchema(
        name="tiny",
        entity_types=("PERSON", "ANIMAL"),
        relations=(relation_type("has_pet", "owns an animal as a pet", "PERSON", "ANIMAL"),),
    )
    path = _write(
        tmp_path,
        "tiny",
        target="tiny",
        target_fingerprint=schema.fingerprint(),
        predicates={"have_pet": {"predicate": "has_pet", "tail_type": "ANIMAL"}, "own": None},
    )
    with pytest.raises(SchemaMismatchError, match="not built in"):
        SchemaAlignment.load(path)
    with pytest.raises(SchemaMismatchError, match="written for schema"):
        SchemaAlignment.load(_write(tmp_path), schema=schema)
    tiny = SchemaAlignment.load(path, schema=schema)
    assert tiny.schema is schema and tiny.unmapped == ("own",)


def test_missing_map_raises():
    with pytest.raises(AlignmentNotFoundError, match="shipped sources: conll04, dialogre, personaext"):
        SchemaAlignment.load("no-such-corpus")
    with pytest.raises(AlignmentNotFoundError, match="onto schema 'tiny'"):
        SchemaAlignment.load("personaext", schema=RelationSchema(name="tiny", entity_types=("PERSON",), relations=()))
    with pytest.raises(HotmemError):
        SchemaAlignment.load(Path("/nonexistent/map.json"))


def test_runtime_side_imports_only_the_contract():
    """hotmem.alignment must not pull in the data loaders, DSPy, torch or datasets."""
    code = (
        "import sys, hotmem.alignment\n"
        "bad = [m for m in ('hotmem.data', 'dspy', 'torch', 'datasets') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == "", f"hotmem.alignment imported {out.stdout.strip()}"


# --------------------------------------------------------------------------- on the real corpus (when present)


def _personaext_folder() -> Path | None:
    from hotmem.data import find_data_root

    root = find_data_root()
    folder = root / "personaext" if root is not None else None
    return folder if folder is not None and (folder / "dev.jsonl").is_file() else None


def test_personaext_corpus_maps(alignment):
    folder = _personaext_folder()
    if folder is None:
        pytest.skip("PersonaExt is not in the data root (../shared/data/personaext)")
    from hotmem.data import lenient_json_loads, load_personaext

    raw = lenient_json_loads((folder / "schema.json").read_text(encoding="utf-8"))
    declared = {t["type"] for h in raw["relation_types"] for t in h["types"]} | set(raw["e2_constraints"])
    assert len(declared) == 105
    records = load_personaext(folder / "dev.jsonl")
    used = {r.predicate for record in records for r in record.graph.relations}
    assert declared | used == set(alignment.predicates), (declared | used) ^ set(alignment.predicates)
    report = alignment.coverage(records)
    assert report["unlisted"] == {}
    assert report["triples"] == report["mapped"] + report["unmapped"]
    assert report["kept"] / report["triples"] > 0.7
    for record in records[:500]:
        mapped = alignment.map_graph(record.graph)
        types = {e.name: e.type for e in mapped.entities}
        for relation in mapped.relations:
            assert CONVERSATION_SCHEMA.allows(relation, types[relation.subject], types[relation.object])


def test_conflicting_retype_and_duplicates(alignment):
    """One tail retyped two ways: the first wins and the other relation is invalid; two relations landing on the
    same triple keep one."""
    graph = _graph(
        ("speaker", "PERSON", "like_food", "salmon", "MISC"),
        ("speaker", "PERSON", "like_animal", "salmon", "MISC"),
        ("speaker", "PERSON", "own", "boat", "MISC"),
        ("speaker", "PERSON", "have_vehicle", "boat", "MISC"),
    )
    tally: Counter = Counter()
    mapped = alignment.map_graph(graph, tally=tally)
    assert [r.triple for r in mapped.relations] == [("speaker", "likes", "salmon"), ("speaker", "owns", "boat")]
    assert (mapped.entity("salmon").type, mapped.entity("boat").type) == ("FOOD", "PRODUCT")
    assert (tally["kept"], tally["invalid"], tally["duplicate"]) == (2, 1, 1)


def test_a_map_produces_only_what_the_source_predicates_it_is_given_map_to():
    alignment = SchemaAlignment.load(NAME)
    assert alignment.produces(["have_pet", "like_food", "like_sports", "have_chidren", "have_no", "unheard_of"]) == (
        tuple(p for p in CONVERSATION_SCHEMA.predicates if p in {"has_pet", "likes", "child_of"}))
    assert "works_as" in alignment.targets and "works_as" not in alignment.produces(["employed_by_company"])
    assert alignment.produces([]) == ()


@pytest.mark.parametrize("name, source_predicates, targets", [
    ("conll04", ["Live_In", "Work_For", "OrgBased_In", "Located_In", "Kill"],
     ("lives_in", "works_at", "located_in", "headquartered_in")),
    ("dialogre", None, None),
])
def test_the_shipped_maps_of_annotated_corpora(name, source_predicates, targets):
    alignment = SchemaAlignment.load(name)
    assert name in shipped_alignments()
    assert set(alignment.targets) <= set(CONVERSATION_SCHEMA.predicates)
    if targets is not None:
        assert alignment.targets == targets
        assert all(alignment.lists(p) for p in source_predicates)


def test_dialogre_directions_follow_the_corpus():
    """DialogRE's `x per:parents y` says y is x's parent; its inverse listing is the same fact."""
    alignment = SchemaAlignment.load("dialogre")
    graph = Graph(entities=[Entity(name="Emma", type="PERSON"), Entity(name="Rachel", type="PERSON"),
                            Entity(name="Tag", type="PERSON"), Entity(name="Italian", type="MISC")],
                  relations=[Relation(subject="Emma", predicate="per:parents", object="Rachel"),
                             Relation(subject="Rachel", predicate="per:children", object="Emma"),
                             Relation(subject="Tag", predicate="per:boss", object="Rachel"),
                             Relation(subject="Tag", predicate="per:origin", object="Italian")])
    tally = Counter()
    mapped = alignment.map_graph(graph, tally=tally)
    assert {r.triple for r in mapped.relations} == {("Emma", "child_of", "Rachel"), ("Tag", "reports_to", "Rachel")}
    assert tally["duplicate"] == 1  # "Rachel parent_of Emma" is the same fact: one edge per fact
    assert tally["invalid"] == 1  # a nationality is no place: `from` takes a LOCATION
