import json

import dspy
import pytest
from conftest import needs_smollm

from hotmem.data import CONLL04_SCHEMA, load_gold
from hotmem.errors import ProgramNotFoundError, SchemaMismatchError
from hotmem.pipeline.optimize import OptimizeConfig, best_score_curve, optimize
from hotmem.schema import CONVERSATION_SCHEMA
from hotmem.teacher.program import Teacher
from hotmem.teacher.saved import MANIFEST_FILE, load_program, save_program


def test_saved_state_is_json_and_round_trips(tmp_path):
    teacher = Teacher()
    teacher.relations.signature = teacher.relations.signature.with_instructions("Only extract lives_in.")
    save_program(teacher, tmp_path, {"note": "test"})
    state = json.loads((tmp_path / "program.json").read_text())
    assert sorted(state) == ["coref", "decompose", "entities", "relations"]
    assert state["relations"]["signature"]["instructions"] == "Only extract lives_in."
    loaded = load_program(tmp_path)
    assert loaded.relations.signature.instructions == "Only extract lives_in."
    assert loaded.dump_state() == teacher.dump_state()
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["note"] == "test"


def test_a_saved_program_reads_what_it_read_when_saved(tmp_path):
    from hotmem.teacher.saved import load_instructions

    save_program(Teacher(reads="sentences"), tmp_path)
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["reads"] == "sentences"
    assert load_program(tmp_path).reads == "sentences"
    assert load_instructions(tmp_path, CONLL04_SCHEMA).reads == "sentences"
    save_program(Teacher(), tmp_path / "before")
    manifest = json.loads((tmp_path / "before" / MANIFEST_FILE).read_text())
    del manifest["reads"]  # saved before teachers could read sentences
    (tmp_path / "before" / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert load_program(tmp_path / "before").reads == "statements"


def test_a_saved_program_checks_its_facts_when_it_did_when_saved(tmp_path):
    save_program(Teacher(reads="sentences", verify=True), tmp_path)
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["verifies"] is True
    loaded = load_program(tmp_path)
    assert loaded.verifies and loaded.verify.signature.instructions == Teacher(verify=True).verify.signature.instructions
    assert loaded.verify_threshold is None
    save_program(Teacher(reads="sentences", verify=True, verify_threshold=0.4), tmp_path / "by-probability")
    assert load_program(tmp_path / "by-probability").verify_threshold == 0.4
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    del manifest["verifies"]  # saved before teachers could check facts: no verify predictor then
    manifest["predictors"].remove("verify")
    save_program(Teacher(reads="sentences"), tmp_path / "before")
    (tmp_path / "before" / MANIFEST_FILE).write_text(json.dumps({**manifest, "reads": "sentences"}))
    assert not load_program(tmp_path / "before").verifies


def test_loading_for_another_schema_says_so(tmp_path):
    save_program(Teacher(), tmp_path)
    with pytest.raises(SchemaMismatchError, match="made for schema 'hotmem-conversation'"):
        load_program(tmp_path, schema=CONLL04_SCHEMA)
    with pytest.raises(ProgramNotFoundError, match="no saved program"):
        load_program(tmp_path / "nowhere")


def test_instructions_carry_over_to_another_schema_without_its_inventory(tmp_path):
    from hotmem.teacher.saved import load_instructions

    teacher = Teacher()
    teacher.entities.signature = teacher.entities.signature.with_instructions("Name every person.")
    save_program(teacher, tmp_path)
    moved = load_instructions(tmp_path, schema=CONLL04_SCHEMA)
    assert moved.entities.signature.instructions == "Name every person."
    inventory = moved.relations.signature.output_fields["relations"].json_schema_extra["desc"]
    assert "Live_In" in inventory and "sibling_of" not in inventory
    assert moved.schema is CONLL04_SCHEMA
    with pytest.raises(ProgramNotFoundError, match="no saved program"):
        load_instructions(tmp_path / "nowhere")


def test_load_for_schema_restores_the_whole_program_only_for_its_own_schema(tmp_path):
    from hotmem.teacher.saved import load_for_schema

    teacher = Teacher()
    teacher.entities.signature = teacher.entities.signature.with_instructions("Name every person.")
    teacher.relations.demos = teacher.relations.demos[:1]
    save_program(teacher, tmp_path)
    same = load_for_schema(tmp_path)
    assert same.entities.signature.instructions == "Name every person." and len(same.relations.demos) == 1
    other = load_for_schema(tmp_path, CONLL04_SCHEMA)
    assert other.entities.signature.instructions == "Name every person."
    assert other.relations.demos == Teacher(CONLL04_SCHEMA).relations.demos  # demos name the saved schema's predicates
    with pytest.raises(ProgramNotFoundError, match="no saved program"):
        load_for_schema(tmp_path / "nowhere")


def test_best_score_curve_is_monotone():
    candidates = [
        {"discovered_at_metric_calls": 0, "val_score": 0.3},
        {"discovered_at_metric_calls": 20, "val_score": 0.2},
        {"discovered_at_metric_calls": 10, "val_score": 0.5},
    ]
    assert best_score_curve(candidates) == [(0, 0.3), (10, 0.5), (20, 0.5)]


@pytest.mark.integration
@needs_smollm
def test_tiny_gepa_run_writes_every_artifact_and_resumes(tmp_path):
    from hotmem.lm import make_lm

    records = [r for r in load_gold(split="train") if len(r.text) < 70][:4]
    lm = make_lm("embedded/smollm2-135m", max_tokens=256)
    config = OptimizeConfig(budget=12, log_dir=str(tmp_path / "log"), out_dir=str(tmp_path / "out"),
                            reflection_minibatch_size=1, demos=1, demo_candidates=2)
    result = optimize(config, records[:2], records[2:], task_lm=lm, reflection_lm=lm)
    out = result.out_dir
    for name in ("program.json", "manifest.json", "candidates.json", "pareto.json", "instructions.md"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total_metric_calls"] >= 4 and manifest["valset"] == [r.id for r in records[2:]]
    assert manifest["peak_rss_gb"] > 0
    assert load_program(out).dump_state() == result.program.dump_state()
    # the same call again continues from the log dir instead of starting over
    again = optimize(config, records[:2], records[2:], task_lm=lm, reflection_lm=lm)
    assert again.manifest["total_metric_calls"] == manifest["total_metric_calls"]


def test_selector_skips_predictors_that_did_not_run():
    from types import SimpleNamespace

    from hotmem.pipeline.optimize import RanPredictorSelector

    program = Teacher()
    names = [name for name, _ in program.named_predictors()]
    assert names[0] == "coref"
    state = SimpleNamespace(list_of_named_predictors=names,
                            named_predictor_id_to_update_next_for_program_candidate=[0])
    # first-person text: the teacher ran every step but coref
    trace = [(program.decompose, {}, None), (program.entities, {}, None), (program.relations, {}, None)]
    selector = RanPredictorSelector(program)
    picked = [selector(state, [{"trace": trace}], [0.5], 0, {})[0] for _ in range(4)]
    assert picked == ["decompose", "entities", "relations", "decompose"]
    with_coref = [(program.coref, {}, None), *trace]
    assert selector(state, [{"trace": with_coref}], [0.5], 0, {}) == ["entities"]


def test_rule_proposer_keeps_the_instruction_and_bounds_learned_rules():
    from hotmem.pipeline.optimize import LEARNED_RULES, RuleProposer

    proposer = RuleProposer(max_rules=2)
    lm = dspy.utils.DummyLM([{"rule": "Write  relatives with their possessor."}, {"rule": "Never list a pronoun."}])
    items = [{"Inputs": {"statements": ["Tom is my brother."]}, "Generated Outputs": {"entities": []},
              "Feedback": "Missed entities: Tom."}]
    with dspy.context(lm=lm):
        first = proposer({"entities": "List the entities."}, {"entities": items}, ["entities"])["entities"]
        second = proposer({"entities": first}, {"entities": items}, ["entities"])["entities"]
    assert first == f"List the entities.\n\n{LEARNED_RULES}\n- Write relatives with their possessor."
    assert second.endswith("- Write relatives with their possessor.\n- Never list a pronoun.")
    assert "Missed entities: Tom." in lm.history[0]["messages"][-1]["content"]
    third = proposer.add_rule(second, "Use the name as written.")
    assert third.count("\n- ") == 2 and "possessor" not in third  # the oldest learned rule goes first
    assert proposer.add_rule(third, "Never list a pronoun.") == third


def test_contrast_proposer_writes_the_most_frequent_correction_as_a_rule_and_asks_the_lm_otherwise():
    from hotmem.pipeline.metric import GraphMetric, to_example
    from hotmem.pipeline.optimize import EMPTY_GRAPH_RULE, LEARNED_RULES, ContrastProposer
    from hotmem.types import Entity, Graph, Record, Relation, Turn

    def item(text, gold, predicted):
        """A reflective-dataset item whose feedback is the metric's own, for the relations step."""
        graph = lambda rels: Graph(entities=[Entity(name=n, type="PERSON" if n[0].isupper() else "PRODUCT")  # noqa
                                             for n in {n for r in rels for n in (r[0], r[2])}],
                                   relations=[Relation(subject=a, predicate=p, object=b) for a, p, b in rels])
        example = to_example(Record(id="x", turns=[Turn(text=text)], graph=graph(gold)))
        pred = dspy.Prediction(graph=graph(predicted), statements=[text], extracted_entities=[],
                               extracted_relations=[])
        feedback = GraphMetric()(example, pred, pred_name="relations", trace=[]).feedback
        return {"Inputs": {}, "Generated Outputs": {}, "Feedback": feedback}

    games = [item("Tom plays chess.", [("Tom", "plays_game", "chess")], [("Tom", "plays", "chess")]),
             item("Mia plays Go.", [("Mia", "plays_game", "go")], [("Mia", "plays", "go")]),
             item("Nice!", [], [("Ann", "likes", "cake")])]
    proposer = ContrastProposer(CONVERSATION_SCHEMA)
    rules = proposer.contrast_rules(games)
    assert rules[0] == ("`plays_game` (plays a video or board game) is not `plays` (plays a sport or an instrument): "
                        "write `plays_game` when a statement says the first.")
    assert rules[1:] == [EMPTY_GRAPH_RULE]
    lm = dspy.utils.DummyLM([{"rule": "List the speaker too."}])
    with dspy.context(lm=lm):
        first = proposer({"relations": "Extract."}, {"relations": games}, ["relations"])["relations"]
        second = proposer({"relations": first}, {"relations": games}, ["relations"])["relations"]
        entities = proposer({"entities": "List."}, {"entities": games}, ["entities"])["entities"]
    assert first == f"Extract.\n\n{LEARNED_RULES}\n- {rules[0]}"
    assert second == f"{first}\n- {EMPTY_GRAPH_RULE}"  # a rule the instruction has is not proposed again
    assert entities.endswith("- List the speaker too.") and len(lm.history) == 1  # other steps: the LM's rule


def test_gold_demos_answer_with_gold_for_statements_that_mention_it():
    from hotmem.pipeline.optimize import add_gold_demos
    from hotmem.types import Entity, Graph, Record, Relation, Turn

    def record(id_, text, entities, relations):
        return Record(id=id_, turns=[Turn(text=text)], graph=Graph(
            entities=[Entity(name=n, type=t) for n, t in entities],
            relations=[Relation(subject=s, predicate=p, object=o) for s, p, o in relations]))

    records = [
        record("a", "My sister Ana lives in Oslo.", [("Ana", "PERSON"), ("Oslo", "LOCATION")],
               [("Ana", "lives_in", "Oslo")]),
        record("b", "I work at Equinor.", [("speaker", "PERSON"), ("Equinor", "ORGANIZATION")],
               [("speaker", "works_at", "Equinor")]),
        record("c", "hi there", [], []),  # nothing to demonstrate: no LM call
    ]
    # first-person texts: coref is skipped, one decompose call per record with relations, in shuffled order
    lm = dspy.utils.DummyLM({"My sister Ana": {"statements": ["Ana lives in Oslo.", "Ana is speaker's sister."]},
                             "I work at Equinor": {"statements": ["The speaker is happy."]}},
                            adapter=dspy.JSONAdapter())
    program = Teacher()
    seeds = len(program.relations.demos)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        add_gold_demos(program, records, k=4, progress=False)
    assert len(lm.history) == 2
    # b's statements never mention Equinor, so only a qualifies; the seed demos stay first
    assert len(program.relations.demos) == seeds + 1
    demo = program.relations.demos[-1]
    assert demo.statements == ["Ana lives in Oslo.", "Ana is speaker's sister."]
    assert demo.relations == [{"subject": "Ana", "predicate": "lives_in", "object": "Oslo"}]
    assert program.entities.demos[-1].entities == [{"name": "Ana", "type": "PERSON"}, {"name": "Oslo", "type": "LOCATION"}]


def test_graph_extractor_runs_the_shipped_optimized_teacher_where_it_fits(tmp_path, monkeypatch):
    from hotmem.extractor import GraphExtractor
    from hotmem.teacher import saved

    teacher = Teacher()
    teacher.relations.signature = teacher.relations.signature.with_instructions("Only extract lives_in.")
    save_program(teacher, tmp_path, {"task_lm": "local/tuned-on"})
    monkeypatch.setattr(saved, "shipped_teacher_dir", lambda: tmp_path)
    tuned_on, other = dspy.utils.DummyLM([]), dspy.utils.DummyLM([])
    tuned_on.model, other.model = "local/tuned-on", "local/other"
    unoptimized = Teacher().relations.signature.instructions

    def relations_instruction(**kwargs) -> str:
        return GraphExtractor(backend="teacher", **kwargs).backend.program.relations.signature.instructions

    assert relations_instruction(lm=tuned_on) == "Only extract lives_in."
    # on another LM, another schema or open extraction: the unoptimized teacher (its demos and instructions were
    # tuned to one LM, and the demos name this schema's predicates)
    assert relations_instruction(lm=other) == unoptimized
    conll04_instruction = Teacher(CONLL04_SCHEMA).relations.signature.instructions
    assert relations_instruction(lm=tuned_on, schema=CONLL04_SCHEMA) == conll04_instruction
    assert relations_instruction(lm=tuned_on, closed=False) == Teacher(closed=False).relations.signature.instructions


def test_the_shipped_optimized_teacher_fits_the_current_schema():
    """A schema change that the shipped state was not made for fails here, not in a user's GraphExtractor()."""
    from hotmem.teacher.saved import shipped_teacher_dir

    shipped = shipped_teacher_dir()
    if shipped is None:
        pytest.skip("no optimized teacher ships")
    program = load_program(shipped)
    state = json.loads((shipped / "program.json").read_text())
    assert program.relations.signature.instructions == state["relations"]["signature"]["instructions"]
    assert len(program.relations.demos) == len(state["relations"]["demos"]) > 0


def test_the_shipped_teachers_demonstration_pool_is_gold_train_alone():
    """What ships may hold our own annotations only, and never an evaluation record (gold dev and test)."""
    from hotmem.teacher.demos import POOL_FILE
    from hotmem.teacher.saved import shipped_teacher_dir
    from hotmem.types import render_turns

    shipped = shipped_teacher_dir()
    if shipped is None or not (shipped / POOL_FILE).is_file():
        pytest.skip("the shipped teacher retrieves no demonstrations")
    pool = [json.loads(line) for line in (shipped / POOL_FILE).read_text().splitlines()]
    texts = {split: {render_turns(r.turns) for r in load_gold(split)} for split in ("train", "dev", "test")}
    assert {item["source"] for item in pool} == {"gold"}
    assert {item["conversation"] for item in pool} <= texts["train"]
    assert not {item["conversation"] for item in pool} & (texts["dev"] | texts["test"])
    assert len(load_program(shipped).retriever.pool) == len(pool)


def test_score_curve_png_leaves_the_process_backend_alone(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    from hotmem.pipeline.optimize import plot_score_curve

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands for a notebook's inline backend: the plot must not switch it to Agg
    try:
        candidates = [{"discovered_at_metric_calls": 0, "val_score": 0.3},
                      {"discovered_at_metric_calls": 9, "val_score": 0.4}]
        path = plot_score_curve(candidates, tmp_path / "curve.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
