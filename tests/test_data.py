"""Tests of hotmem.data: the packaged gold set, the research-corpus loaders and the data-set registry.

Three groups: the gold set (always runs: it ships with the package), loaders on small synthetic files written to
tmp_path (always run: they pin the parsing rules), and checks against the real corpora under the data root
(skipped where `../shared/data` is absent, e.g. in CI without the research data). Expected numbers come from each
data set's DESCRIPTION.md, or are derived from it as explained next to the assertion.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hotmem import data
from hotmem.data import (
    CONLL04_SCHEMA,
    DATASETS,
    DIALOGRE_SCHEMA,
    DatasetFormatError,
    DatasetNotFoundError,
    conll04,
    dnli_schema,
    iter_convai2_utterances,
    lenient_json_loads,
    load_conll04,
    load_convai2,
    load_dataset,
    load_dialogre,
    load_gold,
    load_personaext,
    personaext_schema,
)
from hotmem.errors import HotmemError, InvalidInputError
from hotmem.names import SPEAKER
from hotmem.schema import CATEGORIES, CONVERSATION_SCHEMA
from hotmem.types import Record

DATA_ROOT = data.find_data_root()


def needs(dataset: str):
    """Skip unless the research data set's folder exists where load_dataset would look."""
    folder = DATA_ROOT / DATASETS[dataset].relative_path if DATA_ROOT else None
    return pytest.mark.skipif(folder is None or not folder.is_dir(), reason=f"{dataset} not under the data root")


def triples(record: Record) -> set[tuple[str, str, str]]:
    return {r.triple for r in record.graph.relations}


def assert_endpoints_are_entities(records: list[Record]) -> None:
    for record in records:
        names = {e.name for e in record.graph.entities}
        for relation in record.graph.relations:
            assert relation.subject in names and relation.object in names, (record.id, relation)


# --------------------------------------------------------------------------- gold


def test_gold_loads_and_fits_the_conversation_schema():
    records = load_gold()
    assert records, "no gold records: hotmem/gold/*.jsonl is missing or empty"
    ids = [r.id for r in records]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert_endpoints_are_entities(records)
    predicates = set(CONVERSATION_SCHEMA.predicates)
    unknown = [(r.id, rel.predicate) for r in records for rel in r.graph.relations if rel.predicate not in predicates]
    assert not unknown, unknown
    assert all(r.turns for r in records)


def test_gold_filters_by_split_and_category():
    records = load_gold()
    for split in ("train", "dev", "test"):
        subset = load_gold(split=split)
        assert all(r.split == split for r in subset)
        assert {r.id for r in subset} == {r.id for r in records if r.split == split}
    category = records[0].category or CATEGORIES[0]
    subset = load_gold(category=category)
    assert subset and all(r.category == category for r in subset)
    both = load_gold(split="train", category=category)
    assert {r.id for r in both} == {r.id for r in subset if r.split == "train"}


def test_gold_rejects_unknown_filters():
    with pytest.raises(InvalidInputError):
        load_gold(split="validation")
    with pytest.raises(InvalidInputError):
        load_gold(category="Cooking")


def test_load_dataset_gold_uses_the_conversation_schema():
    records, schema = load_dataset("gold", split="dev", limit=3)
    assert schema is CONVERSATION_SCHEMA
    assert [r.id for r in records] == [r.id for r in load_gold(split="dev")][:3]


def _gold_line(record_id: str, split: str = "train") -> str:
    return json.dumps(
        {
            "id": record_id,
            "category": "Daily Life",
            "split": split,
            "turns": [{"speaker": None, "text": "I live in Oslo."}],
            "graph": {
                "entities": [{"name": "speaker", "type": "PERSON"}, {"name": "Oslo", "type": "LOCATION"}],
                "relations": [{"subject": "speaker", "predicate": "lives_in", "object": "Oslo"}],
            },
        }
    )


def test_gold_directory_reads_every_file_sorted_by_id(tmp_path: Path):
    (tmp_path / "b.jsonl").write_text(_gold_line("b-1") + "\n\n" + _gold_line("a-2", "dev") + "\n")
    (tmp_path / "a.jsonl").write_text(_gold_line("c-1") + "\n")
    (tmp_path / "notes.txt").write_text("not gold")
    records = load_gold(directory=tmp_path)
    assert [r.id for r in records] == ["a-2", "b-1", "c-1"]
    assert [r.id for r in load_gold(split="dev", directory=tmp_path)] == ["a-2"]
    assert records[0].graph.relations[0].triple == ("speaker", "lives_in", "Oslo")


def test_gold_bad_line_names_file_and_line(tmp_path: Path):
    (tmp_path / "daily.jsonl").write_text(_gold_line("ok") + "\n" + '{"id": "broken", "turns": "nope"}\n')
    with pytest.raises(DatasetFormatError) as info:
        load_gold(directory=tmp_path)
    assert info.value.line == 2
    assert "daily.jsonl:2" in str(info.value)
    assert isinstance(info.value, HotmemError)


def test_gold_truncated_line_and_duplicate_ids_fail(tmp_path: Path):
    (tmp_path / "partial.jsonl").write_text(_gold_line("x")[:40])
    with pytest.raises(DatasetFormatError, match=r"partial\.jsonl:1"):
        load_gold(directory=tmp_path)
    (tmp_path / "partial.jsonl").write_text(_gold_line("x") + "\n" + _gold_line("x") + "\n")
    with pytest.raises(DatasetFormatError, match="duplicate id 'x'"):
        load_gold(directory=tmp_path)


# --------------------------------------------------------------------------- lenient JSON


def test_lenient_json_fixes_trailing_and_missing_commas_and_comments():
    text = """{
        "values": ["employed", "quitting"
                   ""],
        "types": [{"a": 1}
                  {"b": "x, ]"},],   // trailing comma, then a comment
        "url": "http://example.com", // strings keep their // and commas
    }"""
    assert lenient_json_loads(text) == {
        "values": ["employed", "quitting", ""],
        "types": [{"a": 1}, {"b": "x, ]"}],
        "url": "http://example.com",
    }


def test_lenient_json_leaves_strict_json_alone():
    value = {"a": [1, "b , ]", {"c": None}], "d": 'e\\" ",', "f": "// not a comment"}
    assert lenient_json_loads(json.dumps(value, indent=2)) == value


# --------------------------------------------------------------------------- errors and registry


def test_registry_lists_every_data_set():
    assert set(DATASETS) == {"gold", "personaext", "dialogre", "convai2", "conll04"}
    for name, spec in DATASETS.items():
        assert spec.name == name and callable(spec.loader) and callable(spec.schema)
    with pytest.raises(InvalidInputError, match="unknown data set"):
        load_dataset("squad")


def test_missing_data_root_says_where_it_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(data.DATA_DIR_ENV, str(missing))
    assert data.data_root_candidates() == [missing]
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("dialogre")
    message = str(info.value)
    assert str(missing) in message and "HOTMEM_DATA_DIR" in message and "path=" in message
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, HotmemError)
    assert info.value.tried == (missing,)


def test_data_root_is_found_from_a_subfolder_of_the_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # as a notebook's kernel runs in notebooks/
    checkout = Path(data.__file__).resolve().parents[2]
    assert data.data_root_candidates() == [(tmp_path / ".." / "shared" / "data").resolve(),
                                           (checkout / ".." / "shared" / "data").resolve()]


def test_missing_data_set_under_an_existing_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="conll04"):
        load_dataset("conll04")
    with pytest.raises(DatasetNotFoundError, match="missing.json"):
        load_dialogre(tmp_path / "missing.json")


def test_bad_split_and_limit_are_rejected(tmp_path: Path):
    (tmp_path / "dev.jsonl").write_text("")
    with pytest.raises(InvalidInputError, match="no split 'train'"):
        load_dataset("personaext", path=tmp_path, split="train")
    with pytest.raises(InvalidInputError):
        load_dataset("personaext", path=tmp_path, limit=-1)


# --------------------------------------------------------------------------- loaders on synthetic files

_SCHEMA_JSON = """{
  "relation_types": [
    {"hierarchy_type": "Employment", "display": "Employment", "types": [
        {"type": "employed_by_company", "display": "Employed by Company", "examples": []},
        {"type": "has_profession", "display": "Has Profession", "examples": []},
    ]},
    {"hierarchy_type": "Possessions", "display": "Owns/Haves", "types": [
        {"type": "have_pet", "display": "Has Pet", "examples": []}
    ]}
  ],
  "entity_types": [],
  "e2_constraints": {
    "employed_by_company": ["company"],
    "has_profession": ["profession", "other"],
    "have_pet": ["animal"]
    "dislike_music": ["music_genre", "music_artist"],
  }
}"""


@pytest.fixture
def personaext_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "personaext"
    folder.mkdir()
    (folder / "schema.json").write_text(_SCHEMA_JSON)
    rows = [
        {"text": "my boyfriend works at nasa !", "triples": [["my boyfriend", "employed_by_company", "nasa"]]},
        {"text": "mine is a cat named tom", "triples": [["mine", "have_pet", "cat"]]},
        {"text": "i have two kids", "triples": [["i", "have_children", "two kids"]]},
    ]
    (folder / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def test_personaext_loader_maps_first_person_and_types(personaext_dir: Path):
    records = load_personaext(personaext_dir)
    assert [r.id for r in records] == ["personaext-dev-00001", "personaext-dev-00002", "personaext-dev-00003"]
    first = records[0]
    assert first.source == "personaext" and first.split == "dev" and first.turns[0].speaker is None
    assert triples(first) == {("speaker's boyfriend", "employed_by_company", "nasa")}
    assert first.graph.entity("speaker's boyfriend").type == "PERSON"
    assert first.graph.entity("nasa").type == "ORGANIZATION"  # company -> ORGANIZATION via e2_constraints
    assert triples(records[1]) == {(SPEAKER, "have_pet", "cat")}
    assert records[1].graph.entity(SPEAKER).type == "PERSON"
    assert records[1].graph.entity("cat").type == "ANIMAL"
    assert [r.id for r in load_personaext(personaext_dir / "dev.jsonl", limit=2)] == [r.id for r in records[:2]]
    assert load_personaext(personaext_dir, limit=0) == []


def test_mapped_personaext_keeps_the_records_whose_every_triple_maps(personaext_dir: Path):
    with (personaext_dir / "dev.jsonl").open("a") as rows:
        rows.write(json.dumps({"text": "i do not have a dog", "triples": [["i", "do_not_have", "dog"]]}) + "\n")
    records, schema = load_dataset("personaext-conversation", path=personaext_dir)
    assert [r.id for r in records] == ["personaext-dev-00001", "personaext-dev-00002", "personaext-dev-00003"]
    assert triples(records[1]) == {(SPEAKER, "has_pet", "cat")}
    # the whole schema runs (a program made for it applies); each record scores what the corpus's triples map to:
    # not `dislikes`, which the map could produce but no line here is annotated with
    assert schema.fingerprint() == CONVERSATION_SCHEMA.fingerprint()
    assert set(records[1].scored_predicates) == {"works_at", "has_pet", "child_of"}
    # skip and limit count the corpus's own lines: the negation on line 4 is dropped, not replaced by a later line
    assert [r.id for r in load_dataset("personaext-conversation", path=personaext_dir, skip=2, limit=2)[0]] == [
        "personaext-dev-00003"]
    assert [r.id for r in load_dataset("personaext", path=personaext_dir, skip=1, limit=1)[0]] == [
        "personaext-dev-00002"]
    with pytest.raises(InvalidInputError, match="no shipped alignment"):
        load_dataset("gold-conversation")
    with pytest.raises(InvalidInputError, match="skip"):
        load_dataset("personaext", path=personaext_dir, skip=-1)


def test_personaext_schema_from_lenient_json_plus_unseen(personaext_dir: Path):
    schema = personaext_schema(personaext_dir)
    listed = ("employed_by_company", "has_profession", "have_pet", "dislike_music")  # incl. e2_constraints-only
    assert schema.predicates == (*listed, "have_children")  # + a name only the data uses
    assert schema.get("employed_by_company").description == "Employed by Company"
    assert schema.get("employed_by_company").category == "Employment"
    assert schema.get("employed_by_company").head_types == ("PERSON",)
    assert schema.get("employed_by_company").tail_types == ("ORGANIZATION",)
    assert schema.get("has_profession").tail_types == ()  # "other" allowed -> any type
    assert schema.get("dislike_music").tail_types == ("PERSON", "MISC")  # artist -> PERSON, genre -> MISC
    assert schema.get("have_children").description == "have children"
    assert {"PERSON", "MISC"} <= set(schema.entity_types)
    assert personaext_schema(personaext_dir / "dev.jsonl") == schema


def test_personaext_bad_triple_names_line(tmp_path: Path):
    (tmp_path / "dev.jsonl").write_text(json.dumps({"text": "x", "triples": [["i", "like"]]}) + "\n")
    with pytest.raises(DatasetFormatError, match=r"dev\.jsonl:1"):
        load_personaext(tmp_path)


_CONVAI2 = "\n".join(
    [
        "partner's persona: i am a stay at home dad.\t['i', 'have_chidren', 'children']",
        "your persona: i was raised in a single parent household.\t['i', 'other', '<blank>']",
        "your persona: my father used to work for home depot.\t['my father', 'job_status', 'unemployed']",
        "1\thello what are doing today ?",
        "2\ti just got done watching a horror movie"
        "\t['i', 'like_watching', 'horror']\t['i', 'favorite_movie', 'horror']",
        "partner's persona: i like dogs.\t['i', 'like_animal', 'dogs']",
        "1\tdo you like dogs ?",
        "",
    ]
)


@pytest.fixture
def convai2_dir(tmp_path: Path, personaext_dir: Path) -> Path:
    folder = tmp_path / "convai2_dnli"
    folder.mkdir()
    (folder / "valid_dialogueNLI.txt").write_text(_CONVAI2)
    return folder


def test_convai2_loader_records_per_line(convai2_dir: Path):
    records = load_convai2(convai2_dir)
    assert [r.id for r in records] == [
        "convai2-valid-0001-p01",
        "convai2-valid-0001-y03",
        "convai2-valid-0001-u02",
        "convai2-valid-0002-p01",
    ]
    assert records[0].text == "i am a stay at home dad."
    assert triples(records[1]) == {("speaker's father", "job_status", "unemployed")}
    assert triples(records[2]) == {(SPEAKER, "like_watching", "horror"), (SPEAKER, "favorite_movie", "horror")}
    assert all(r.source == "convai2" and r.split == "dev" and r.turns[0].speaker is None for r in records)
    everything = load_convai2(convai2_dir, labeled_only=False)
    assert len(everything) == 7  # 4 persona lines + 3 utterances; the <blank> one keeps an empty graph
    assert everything[1].graph.is_empty
    assert list(iter_convai2_utterances(convai2_dir)) == [
        "hello what are doing today ?",
        "i just got done watching a horror movie",
        "do you like dogs ?",
    ]


def test_mapped_convai2_reads_its_dnli_triples_with_personaext_s_map(convai2_dir: Path):
    # the DNLI relation names are the ones PersonaExt re-annotated ConvAI2 with: one map reads both
    records, schema = load_dataset("convai2-conversation", path=convai2_dir)
    assert [r.id for r in records] == ["convai2-valid-0001-p01", "convai2-valid-0001-u02", "convai2-valid-0002-p01"]
    assert triples(records[0]) == {("children", "child_of", SPEAKER)}  # have_chidren [sic], flipped
    assert triples(records[1]) == {(SPEAKER, "likes", "horror"), (SPEAKER, "favorite", "horror")}
    assert set(records[0].scored_predicates) == {"child_of", "likes", "favorite"}  # job_status stays out
    assert schema.fingerprint() == CONVERSATION_SCHEMA.fingerprint()


def test_label_corpus_by_name_finds_the_file_under_the_data_root(convai2_dir: Path, monkeypatch):
    from hotmem.cli import _corpus

    monkeypatch.setenv(data.DATA_DIR_ENV, str(convai2_dir.parent))
    assert data.dataset_file("convai2") == convai2_dir / "valid_dialogueNLI.txt"
    utterances = list(_corpus("convai2", None))
    assert [u.turns[0].text for u in utterances][:1] == ["hello what are doing today ?"]
    with pytest.raises(InvalidInputError, match="packaged"):
        data.dataset_file("gold")


def test_dnli_schema_uses_seen_names_and_personaext_descriptions(convai2_dir: Path, personaext_dir: Path):
    schema = dnli_schema(convai2_dir)  # finds ../personaext beside it
    assert schema.predicates == ("favorite_movie", "have_chidren", "job_status", "like_animal", "like_watching")
    assert schema.get("job_status").description == "job status"  # not in the synthetic PersonaExt schema
    plain = dnli_schema(convai2_dir, personaext_path=convai2_dir / "none")
    assert plain.predicates == schema.predicates


def test_convai2_malformed_triple_names_line(tmp_path: Path):
    (tmp_path / "valid_dialogueNLI.txt").write_text("your persona: hi.\t['i', 'like'\n")
    with pytest.raises(DatasetFormatError, match=r"valid_dialogueNLI\.txt:1"):
        load_convai2(tmp_path)


def test_dialogre_loader_on_a_small_file(tmp_path: Path):
    dialogue = [
        ["Speaker 1: I'm your mother.", "Speaker 2, Speaker 3: Ehh?", "Speaker 2: Ross lives in New York."],
        [
            {"x": "Speaker 2", "y": "Speaker 1", "r": ["per:parents"], "rid": [15], "t": ["mother"],
             "x_type": "PER", "y_type": "PER"},
            {"x": "Speaker 2", "y": "lady", "r": ["unanswerable"], "rid": [37], "t": [""],
             "x_type": "PER", "y_type": "STRING"},
            {"x": "Ross", "y": "New York", "r": ["per:place_of_residence", "per:visited_place"], "rid": [18, 20],
             "t": ["", ""], "x_type": "PER", "y_type": "GPE"},
            # the same facts labelled the other way round: DialogRE annotates both directions of a pair
            {"x": "Speaker 1", "y": "Speaker 2", "r": ["per:children"], "rid": [16], "t": [""],
             "x_type": "PER", "y_type": "PER"},
            {"x": "Ross", "y": "Speaker 1", "r": ["per:friends"], "rid": [4], "t": [""],
             "x_type": "PER", "y_type": "PER"},
            {"x": "Speaker 1", "y": "Ross", "r": ["per:friends"], "rid": [4], "t": [""],
             "x_type": "PER", "y_type": "PER"},
        ],
    ]
    folder = tmp_path / "v2_en"
    folder.mkdir()
    (folder / "dev.json").write_text(json.dumps([dialogue, dialogue]))
    records = load_dialogre(tmp_path)
    assert [r.id for r in records] == ["dialogre-dev-0000", "dialogre-dev-0001"]
    record = records[0]
    assert [(t.speaker, t.text) for t in record.turns] == [
        ("Speaker 1", "I'm your mother."),
        ("Speaker 2, Speaker 3", "Ehh?"),
        ("Speaker 2", "Ross lives in New York."),
    ]
    assert triples(record) == {  # one statement a fact, the first: as the extractor states it
        ("Speaker 2", "per:parents", "Speaker 1"),
        ("Ross", "per:place_of_residence", "New York"),
        ("Ross", "per:visited_place", "New York"),
        ("Ross", "per:friends", "Speaker 1"),
    }
    assert {e.name: e.type for e in record.graph.entities} == {
        "Speaker 2": "PERSON", "Speaker 1": "PERSON", "lady": "MISC", "Ross": "PERSON", "New York": "LOCATION",
    }
    assert record.source == "dialogre" and record.split == "dev"
    assert record.scored_pairs == [("Speaker 2", "Speaker 1"), ("Speaker 2", "lady"), ("Ross", "New York"),
                                   ("Speaker 1", "Speaker 2"), ("Ross", "Speaker 1"), ("Speaker 1", "Ross")]
    assert len(load_dataset("dialogre", path=tmp_path, limit=1)[0]) == 1


def test_dialogre_schema_inverses_and_symmetry():
    assert len(DIALOGRE_SCHEMA.relations) == 36
    assert DIALOGRE_SCHEMA.entity_types == ("PERSON", "ORGANIZATION", "LOCATION", "QUANTITY", "MISC")
    assert DIALOGRE_SCHEMA.inverse_of("per:children") == "per:parents"
    assert DIALOGRE_SCHEMA.inverse_of("per:subordinate") == "per:boss"
    assert DIALOGRE_SCHEMA.inverse_of("gpe:births_in_place") == "per:place_of_birth"
    assert DIALOGRE_SCHEMA.inverse_of("org:students") == "per:schools_attended"
    assert DIALOGRE_SCHEMA.inverse_of("per:girl/boyfriend") == "per:girl/boyfriend"
    assert DIALOGRE_SCHEMA.get("per:title").tail_types == ("MISC",)
    assert DIALOGRE_SCHEMA.get("per:age").tail_types == ("QUANTITY",)
    symmetric = {r.name for r in DIALOGRE_SCHEMA.relations if r.symmetric}
    assert symmetric == {
        "per:spouse", "per:siblings", "per:friends", "per:girl/boyfriend", "per:roommate", "per:neighbor",
        "per:other_family", "per:alumni", "per:acquaintance",
    }


def test_detokenize_ptb_tokens():
    text, spans = conll04._detokenize(
        ["`", "`", "He", "was", "n't", "here", ",", "''", "said", "Kevin", "O", "'Brien", "(", "AP", ")", "."]
    )
    assert text == '"He wasn\'t here," said Kevin O\'Brien (AP).'
    assert text[spans[9][0] : spans[11][1]] == "Kevin O'Brien"
    text, _ = conll04._detokenize(["Newspaper", "`", "Explains", "'", "U.S.", "It", "'s", '"', "JFK", '"', "-LRB-", "x"])
    assert text == "Newspaper 'Explains' U.S. It's \"JFK\" (x"


def test_conll04_loader_on_a_small_file(tmp_path: Path):
    sentence = {
        "tokens": ["John", "Wilkes", "Booth", ",", "who", "assassinated", "President", "Lincoln", ",", "was", "an",
                   "actor", "."],
        "entities": [[0, 3, "Peop"], [6, 8, "Peop"]],
        "relations": [[0, 3, 6, 8, "Kill"]],
    }
    (tmp_path / "valid.CoNLL04.json").write_text(json.dumps([sentence]))
    (record,) = load_conll04(tmp_path)
    assert record.id == "conll04-valid-0000" and record.split == "dev" and record.source == "conll04"
    assert record.text == "John Wilkes Booth, who assassinated President Lincoln, was an actor."
    assert triples(record) == {("John Wilkes Booth", "Kill", "President Lincoln")}
    assert {e.type for e in record.graph.entities} == {"PERSON"}
    broken = dict(sentence, relations=[[0, 3, 9, 10, "Kill"]])  # tail span is not an entity
    (tmp_path / "valid.CoNLL04.json").write_text(json.dumps([broken]))
    with pytest.raises(DatasetFormatError, match=r"item 0"):
        load_conll04(tmp_path)


def test_conll04_schema():
    assert CONLL04_SCHEMA.predicates == ("Live_In", "OrgBased_In", "Located_In", "Work_For", "Kill")
    assert CONLL04_SCHEMA.get("Work_For").head_types == ("PERSON",)
    assert CONLL04_SCHEMA.get("Work_For").tail_types == ("ORGANIZATION",)


# --------------------------------------------------------------------------- the real corpora


@pytest.fixture(scope="module")
def personaext_real() -> tuple[list[Record], object]:
    return load_dataset("personaext")


@pytest.fixture(scope="module")
def convai2_real() -> tuple[list[Record], object]:
    return load_dataset("convai2")


@needs("personaext")
def test_personaext_real(personaext_real):
    records, schema = personaext_real
    assert len(records) == 11248  # DESCRIPTION: 11,248 utterances, one triple each
    first = records[0]
    assert first.id == "personaext-dev-00001"
    assert first.text.endswith("i do not work but my boyfriend works at nasa !")
    assert triples(first) == {("speaker's boyfriend", "employed_by_company", "nasa")}
    assert first.graph.entity("speaker's boyfriend").type == "PERSON"
    assert_endpoints_are_entities(records)
    used = {rel.predicate for r in records for rel in r.graph.relations}
    assert used <= set(schema.predicates)
    # schema.json: 101 listed + 4 only in e2_constraints = the 105 PersonaExt reports; the data adds have_children,
    # like_sport and like_subject (spelling variants the schema lacks).
    assert len(schema.relations) == 108
    assert {"have_children", "like_sport", "like_subject", "job_status"} <= set(schema.predicates)
    assert schema.get("job_status").description == "Job Status"
    assert {"PERSON", "MISC"} <= set(schema.entity_types)
    assert [r.id for r in load_personaext(DATA_ROOT / "personaext", limit=5)] == [r.id for r in records[:5]]


@needs("personaext")
def test_personaext_schema_json_is_not_strict_json():
    text = (DATA_ROOT / "personaext" / "schema.json").read_text(encoding="utf-8")
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    raw = lenient_json_loads(text)
    listed = [t["type"] for h in raw["relation_types"] for t in h["types"]]
    assert len(listed) == len(set(listed)) == 101
    assert raw["e2_constraints"]["job_status"] == ["job_status"]


@needs("dialogre")
def test_dialogre_real():
    records, schema = load_dataset("dialogre")
    assert schema is DIALOGRE_SCHEMA
    assert len(records) == 358  # DESCRIPTION: v2_en dev 358 dialogues, 4,685 turns
    assert sum(len(r.turns) for r in records) == 4685
    # 1,992 labels in dev, 395 of them `unanswerable`; of the 1,597 others, 398 restate a fact the other way round
    assert sum(len(r.graph.relations) for r in records) == 1199
    first = records[0]
    assert first.id == "dialogre-dev-0000"
    assert (first.turns[0].speaker, first.turns[0].text) == ("Speaker 1", "Hey!")
    assert ("Estelle", "per:client", "Speaker 1") in triples(first)
    assert first.graph.entity("agent").type == "MISC"
    assert_endpoints_are_entities(records)
    # dev uses all 36; the gpe:/org: five only ever restate a per: fact, so it is the per: statement that stays
    inverse_side = {p for p in schema.predicates if p.startswith(("gpe:", "org:"))}
    assert {rel.predicate for r in records for rel in r.graph.relations} == set(schema.predicates) - inverse_side
    train, _ = load_dataset("dialogre", split="train")
    assert len(train) == 1073 and sum(len(r.turns) for r in train) == 14024
    assert train[0].id == "dialogre-train-0000" and train[0].split == "train"


@needs("convai2")
def test_convai2_real(convai2_real):
    records, schema = convai2_real
    everything = load_convai2(DATA_ROOT / "convai2_dnli", labeled_only=False)
    assert len(everything) == 8978 + 15602  # DESCRIPTION: persona lines + utterances of valid_dialogueNLI
    assert sum(1 for _ in iter_convai2_utterances(DATA_ROOT / "convai2_dnli")) == 15602
    assert everything[-1].id == "convai2-valid-1000-u16"  # 1,000 dialogues
    # DESCRIPTION: 8,958 + 5,095 lines carry a triple; 120 of them carry only <blank> placeholders
    assert len(records) == 8958 + 5095 - 120
    first = records[0]
    assert first.id == "convai2-valid-0001-p01" and first.text == "horror movies are my favorites."
    assert triples(first) == {(SPEAKER, "favorite_movie", "horror")}
    by_id = {r.id: r for r in records}
    assert triples(by_id["convai2-valid-0001-p03"]) == {("speaker's father", "job_status", "unemployed")}
    assert_endpoints_are_entities(records)
    used = {rel.predicate for r in records for rel in r.graph.relations}
    assert used == set(schema.predicates) and len(used) == 53  # 54 labels in the file minus the `<blank>` placeholder
    if (DATA_ROOT / "personaext").is_dir():
        assert schema.get("favorite_movie").description == "Favorite Movie"


@needs("conll04")
def test_conll04_real():
    records, schema = load_dataset("conll04")
    assert schema is CONLL04_SCHEMA
    assert len(records) == 231  # DESCRIPTION: valid 231 sentences, 893 entities, 343 relations
    raw = json.loads((DATA_ROOT / "conll04" / "valid.CoNLL04.json").read_text(encoding="utf-8"))
    assert sum(len(s["relations"]) for s in raw) == 343
    # 12 of the 343 repeat a triple already in their sentence (same names at other token offsets): a graph keeps one.
    assert sum(len(r.graph.relations) for r in records) == 331
    first = records[0]
    assert first.text == "John Wilkes Booth, who assassinated President Lincoln, was an actor."
    assert triples(first) == {("John Wilkes Booth", "Kill", "President Lincoln")}
    assert_endpoints_are_entities(records)
    assert all(e.name in r.text for r in records for e in r.graph.entities)
    assert {e.type for r in records for e in r.graph.entities} == {"PERSON", "LOCATION", "ORGANIZATION", "MISC"}
    train, _ = load_dataset("conll04", split="train")
    assert len(train) == 922 and train[0].split == "train"
