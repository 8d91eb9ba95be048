import json

import pytest

from hotmem.assemble import merge_graphs
from hotmem.errors import InvalidInputError
from hotmem.names import is_grounded, normalize_name, snake_case
from hotmem.schema import CATEGORIES, CONVERSATION_SCHEMA, RelationSchema, RelationType
from hotmem.types import Entity, Graph, Relation, Turn, as_turns, speakers_of


def test_builtin_schema_covers_six_categories_with_60_plus_predicates():
    schema = CONVERSATION_SCHEMA
    assert len(schema.predicates) >= 60
    assert {r.category for r in schema.relations} == set(CATEGORIES)
    for relation in schema.relations:
        assert relation.description and relation.head_types and relation.tail_types
        assert set(relation.head_types + relation.tail_types) <= set(schema.entity_types)
    assert {"PERSON", "ORGANIZATION", "LOCATION", "DATE", "EVENT", "WORK", "MISC"} <= set(schema.entity_types)


def test_synonyms_inverses_and_symmetry():
    schema = CONVERSATION_SCHEMA
    assert schema.canonical("employed_by") == "works_at"
    assert schema.canonical("Works For") == "works_at"
    assert schema.canonical("flies_to_mars") is None
    assert schema.normalize_predicate("Flies To Mars") == "flies_to_mars"
    assert schema.inverse_of("parent_of") == "child_of"
    assert schema.inverse_of("mother_of") == "child_of"
    assert schema.inverse_of("married_to") == "married_to"
    assert schema.inverse_of("lives_in") is None


def test_a_fact_is_one_fact_however_it_is_stated():
    schema = CONVERSATION_SCHEMA
    stated = [
        Relation(subject="Ann", predicate="parent_of", object="Bo"),
        Relation(subject="Bo", predicate="child_of", object="Ann"),  # the same fact from the other end
        Relation(subject="ann", predicate="mother_of", object="Bo"),  # and with a synonym, once names are folded
        Relation(subject="Ann", predicate="married_to", object="Cy"),
        Relation(subject="Cy", predicate="married_to", object="Ann"),  # symmetric
        Relation(subject="Ann", predicate="lives_in", object="Oslo"),
        Relation(subject="Oslo", predicate="lives_in", object="Ann"),  # no inverse: another fact
    ]
    assert schema.fact("Bo", "child_of", "Ann") == schema.fact("Ann", "parent_of", "Bo")
    assert schema.distinct(stated) == [stated[0], stated[2], stated[3], stated[5], stated[6]]
    assert schema.distinct(stated, key=str.lower) == [stated[0], stated[3], stated[5], stated[6]]


def test_schema_rejects_inconsistent_definitions():
    with pytest.raises(ValueError, match="duplicate"):
        RelationSchema(name="x", entity_types=("A",), relations=(RelationType(name="r", description="d"),) * 2)
    with pytest.raises(ValueError, match="not in the schema"):
        RelationSchema(name="x", entity_types=("A",),
                       relations=(RelationType(name="r", description="d", head_types=("B",)),))


def test_allows_checks_endpoint_types():
    ok = Relation(subject="Anna", predicate="lives_in", object="Berlin")
    assert CONVERSATION_SCHEMA.allows(ok, "PERSON", "LOCATION")
    assert not CONVERSATION_SCHEMA.allows(ok, "PERSON", "FOOD")
    assert not CONVERSATION_SCHEMA.allows(Relation(subject="a", predicate="zzz", object="b"), None, None)


@pytest.mark.parametrize(
    ("name", "speakers", "key"),
    [
        ("The Beatles", (), "beatle"),
        ("I", (), "speaker"),
        ("my sister", (), "speaker 's sister"),
        ("Speaker's sister", (), "speaker 's sister"),
        ("Anna", ("Anna",), "speaker"),
        ("Anna's sister", ("Anna",), "speaker 's sister"),
        ("Anna", ("Anna", "Ben"), "anna"),
        ("golden retrievers", (), "golden retriever"),
        ("Berlin, Germany!", (), "berlin germany"),
    ],
)
def test_normalize_name(name, speakers, key):
    assert normalize_name(name, speakers) == key


def test_groundedness():
    text = "My sister works at Siemens."
    assert is_grounded("Siemens", text)
    assert is_grounded("speaker's sister", text)
    assert is_grounded("speaker", text)
    assert not is_grounded("Bosch", text)


def test_graph_json_round_trip_and_networkx():
    graph = Graph(
        entities=[Entity(name="Anna", type="PERSON"), Entity(name="Berlin", type="LOCATION", confidence=0.5)],
        relations=[Relation(subject="Anna", predicate="lives_in", object="Berlin", confidence=0.5)],
        confidence=0.5,
    )
    again = Graph.from_json(graph.to_json())
    assert again == graph
    assert json.loads(graph.to_json())["relations"][0]["predicate"] == "lives_in"
    nx_graph = graph.to_networkx()
    assert nx_graph.nodes["Berlin"]["type"] == "LOCATION"
    assert list(nx_graph.edges(keys=True)) == [("Anna", "Berlin", "lives_in")]


def test_turns_from_every_accepted_shape():
    assert as_turns("hi") == [Turn(text="hi")]
    assert as_turns("hi", speaker="Ann") == [Turn(speaker="Ann", text="hi")]
    assert as_turns([("Ann", "a"), {"speaker": "Bo", "text": "b"}])[1].speaker == "Bo"
    assert speakers_of(as_turns([("Ann", "a"), ("Bo", "b"), ("Ann", "c")])) == ["Ann", "Bo"]
    assert speakers_of(as_turns("x")) == ["speaker"]
    with pytest.raises(InvalidInputError):
        as_turns(42)
    with pytest.raises(InvalidInputError):
        as_turns([object()])


def test_merge_graphs_deduplicates_by_normalised_name():
    a = Graph(entities=[Entity(name="Berlin", type="LOCATION"), Entity(name="speaker", type="PERSON")],
              relations=[Relation(subject="speaker", predicate="lives_in", object="Berlin")])
    b = Graph(entities=[Entity(name="berlin", type="LOCATION"), Entity(name="I", type="PERSON")],
              relations=[Relation(subject="I", predicate="lives_in", object="berlin")], confidence=0.5)
    merged = merge_graphs([a, b])
    assert len(merged.entities) == 2
    assert len(merged.relations) == 1
    assert merged.confidence == 0.75


def test_snake_case():
    assert snake_case("Works At") == "works_at"
    assert snake_case("worksAt") == "works_at"
    assert snake_case("per:girl/boyfriend") == "per_girl_boyfriend"


def test_names_nothing():
    from hotmem.names import names_nothing

    assert names_nothing("than") and names_nothing("in and") and names_nothing("she") and names_nothing(" ")
    assert not names_nothing("Onitsha") and not names_nothing("the Louvre")


def test_a_schema_restricted_to_some_predicates():
    part = CONVERSATION_SCHEMA.restrict(["likes", "child_of", "lives_in"])
    assert part.predicates == ("lives_in", "child_of", "likes")  # the schema's order
    assert part.entity_types == CONVERSATION_SCHEMA.entity_types and part.name == CONVERSATION_SCHEMA.name
    assert part.get("child_of").inverse is None and part.get("married_to") is None  # parent_of is not in it
    assert part.fingerprint() != CONVERSATION_SCHEMA.fingerprint()
    assert CONVERSATION_SCHEMA.get("married_to") is not None  # the original keeps its lookups
    with pytest.raises(InvalidInputError, match="not predicates"):
        CONVERSATION_SCHEMA.restrict(["likes", "kills"])
