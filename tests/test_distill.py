import json
import sys
import types
import warnings

import pytest
from conftest import needs_embedded, needs_smollm

from hotmem.assemble import MAX_NAME_CHARS
from hotmem.errors import DistillError, InvalidInputError
from hotmem.pipeline.distill import DistillConfig, choose_backend, lora_kwargs, sft_dataset, training_dtype
from hotmem.schema import CONVERSATION_SCHEMA
from hotmem.students.format import (STUDENT_SYSTEM_PROMPT, graph_to_target, parse_student_output,
                                    student_json_schema, student_messages)
from hotmem.types import Entity, Graph, Relation, as_turns

GRAPH = Graph(
    entities=[Entity(name="Potola", type="ANIMAL"), Entity(name="five years", type="QUANTITY"),
              Entity(name="speaker", type="PERSON")],
    relations=[Relation(subject="Potola", predicate="has_age", object="five years"),
               Relation(subject="speaker", predicate="has_pet", object="Potola")],
)
TEXT = "Did I tell you that Potola is five years old? She's my cat."


def test_compact_target_round_trips_through_the_student_parser():
    target = graph_to_target(GRAPH)
    assert target.startswith('{"e":[["Potola","ANIMAL"]') and " " not in target.replace("five years", "")
    parsed = parse_student_output(target, as_turns(TEXT), CONVERSATION_SCHEMA)
    assert {r.triple for r in parsed.relations} == {r.triple for r in GRAPH.relations}
    assert parsed.confidence == 1.0


def test_the_lines_format_round_trips_with_types_and_lone_entities():
    graph = GRAPH.model_copy(update={"entities": [*GRAPH.entities, Entity(name="Oslo|Norway", type="LOCATION")]})
    target = graph_to_target(graph, "lines")
    assert target == ("Potola|ANIMAL|has_age|five years|QUANTITY\nspeaker|PERSON|has_pet|Potola|ANIMAL\n"
                      "Oslo/Norway|LOCATION\n")
    parsed = parse_student_output(target, as_turns(TEXT + " I live in Oslo/Norway."), CONVERSATION_SCHEMA,
                                  answer_format="lines")
    assert {r.triple for r in parsed.relations} == {r.triple for r in GRAPH.relations}
    assert {(e.name, e.type) for e in parsed.entities} >= {("Potola", "ANIMAL"), ("five years", "QUANTITY")}
    # a cut or malformed line is skipped, not fatal; no answer is an empty graph
    cut = parse_student_output("speaker|PERSON|has_pet|Potola|ANIMAL\nspeaker|PERS", as_turns(TEXT),
                               CONVERSATION_SCHEMA, answer_format="lines")
    assert [r.triple for r in cut.relations] == [("speaker", "has_pet", "Potola")]
    assert parse_student_output("", as_turns(TEXT), CONVERSATION_SCHEMA, answer_format="lines").is_empty
    assert graph_to_target(Graph(), "lines") == ""
    with pytest.raises(InvalidInputError, match="answer_format"):
        graph_to_target(GRAPH, "yaml")


def test_the_lines_grammar_enumerates_the_schema_and_bounds_lines_and_names():
    from hotmem.students.format import lines_grammar

    closed = lines_grammar(CONVERSATION_SCHEMA)
    assert "root ::= line{0,24}" in closed and f"{{0,{MAX_NAME_CHARS - 1}}}" in closed
    assert all(f'"{p}"' in closed for p in CONVERSATION_SCHEMA.predicates)
    assert all(f'"{t}"' in closed for t in CONVERSATION_SCHEMA.entity_types)
    assert '"lives_in"' not in lines_grammar(CONVERSATION_SCHEMA, closed=False)


def test_forced_text_completes_types_and_predicates_and_keeps_a_names_first_type():
    from hotmem.students.format import forced_continuation

    cases = {
        "Ann|PER": "SON",  # the one type starting so
        "Ann|PERSON": "",  # then `|predicate` or a line break
        "Ann|PERSON|sibl": "ing_of",  # the one predicate starting so (the `|` after it goes with the next name)
        "Ann|PERSON|l": "",  # lives_in, likes, ...
        "Ann|PERSON|lives_in|Rome|LOC": "ATION\n",  # an object's type ends the line
        "Ann|PERSON|lives_in|Rome|": "",  # a new name: the model types it
        "speaker|": "PERSON",
        "Ann|PERSON|lives_in|Rome|LOCATION\nRome|": "LOCATION",  # typed before: the graph keeps that type
        "Ann|PERSON|friends_with|Ann|": "PERSON\n",
        "Ann|PERSON|lives_in|Rome|LOCATION\n": "",
    }
    assert {answer: forced_continuation(answer) for answer in cases} == cases
    assert forced_continuation("Ann|PERSON|sibl", closed=False) == ""  # open predicates are the model's to write


def test_forced_text_never_contradicts_a_gold_answer():
    """At every character of every gold graph written as a `lines` answer, what would be forced is what follows."""
    from hotmem.data.gold import load_gold
    from hotmem.students.format import forced_continuation

    answers = [graph_to_target(record.graph, "lines") for record in load_gold()]
    forced = 0
    for answer in answers:
        for end in range(len(answer)):
            text = forced_continuation(answer[:end])
            assert answer[end:].startswith(text), (answer[:end], text)
            forced += len(text) > 0
    assert len(answers) >= 100 and forced > len(answers)


def test_student_parser_applies_the_teachers_cleanup():
    raw = json.dumps({"e": [["Potola", "ANIMAL"], ["she", "ANIMAL"], ["speaker", "PERSON"]],
                      "r": [["speaker", "has_pet", "Potola"], ["speaker", "has_pet", "Potola"],
                            ["Potola", "lives_in", "Narnia"]]})
    graph = parse_student_output(raw, as_turns(TEXT), CONVERSATION_SCHEMA)
    assert [e.name for e in graph.entities] == ["Potola", "speaker"]  # pronoun dropped
    assert [r.triple for r in graph.relations] == [("speaker", "has_pet", "Potola")]  # duplicate, dangling dropped


def test_sft_example_shows_the_schema_it_must_use_then_the_conversation():
    from hotmem.pipeline.mixture import sft_example
    from hotmem.students.format import schema_prompt

    shown = ["has_pet", "lives_in", "dating", "born_in"]
    example = sft_example(as_turns(TEXT), GRAPH, CONVERSATION_SCHEMA, shown)
    system = example["prompt"][0]["content"]
    assert system == schema_prompt(CONVERSATION_SCHEMA, shown)
    assert system.startswith(STUDENT_SYSTEM_PROMPT)
    # grouped by endpoint types, in the order shown
    assert system.endswith("Relations by SUBJECT>OBJECT types:\nPERSON>ANIMAL: has_pet\n"
                           "PERSON|ANIMAL>LOCATION: lives_in born_in\nPERSON>PERSON: dating")
    with pytest.raises(InvalidInputError, match="not a predicate"):
        schema_prompt(CONVERSATION_SCHEMA, ["has_pet", "likes_cheese"])
    assert example["prompt"][1] == {"role": "user", "content": TEXT}
    assert example["completion"] == [{"role": "assistant", "content": graph_to_target(GRAPH)}]
    lines = sft_example(as_turns(TEXT), GRAPH, CONVERSATION_SCHEMA, shown, answer_format="lines")
    assert lines["prompt"][0]["content"].startswith("Extract the knowledge graph of the conversation, a fact a line")
    assert lines["prompt"][0]["content"].endswith(system.split("\n", 1)[1])  # the same schema inventory
    assert lines["completion"][0]["content"] == graph_to_target(GRAPH, "lines")


def test_an_empty_mixture_is_a_clear_error():
    with pytest.raises(DistillError, match="no example to train on"):
        sft_dataset([])


def test_student_schema_enumerates_types_and_predicates():
    schema = student_json_schema(CONVERSATION_SCHEMA, closed=True)
    relation = schema["properties"]["r"]["items"]["prefixItems"][1]
    assert set(relation["enum"]) == set(CONVERSATION_SCHEMA.predicates)
    entity_items, relation_items = (schema["properties"][key]["items"]["prefixItems"] for key in ("e", "r"))
    names = [entity_items[0], relation_items[0], relation_items[2]]
    assert all(name["maxLength"] == MAX_NAME_CHARS for name in names)  # a name loop is closed, not cut at max_tokens
    assert student_json_schema(CONVERSATION_SCHEMA, closed=False)["properties"]["r"]["items"]["prefixItems"][1] == {
        "type": "string"}


def test_cpu_machines_get_the_trl_backend_and_unsloth_is_refused_clearly():
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert choose_backend("auto") == "trl"
    with pytest.raises(DistillError, match="CUDA GPU"):
        choose_backend("unsloth")
    with pytest.raises(DistillError, match="'auto', 'unsloth' or 'trl'"):
        choose_backend("tpu")


def test_bfloat16_only_where_the_hardware_computes_it(monkeypatch):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    # an AVX2-only CPU runs bfloat16 matmuls on a slow reference kernel: a 2-step run took over 15 minutes
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert training_dtype("auto") == "float32"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert training_dtype("auto") == "bfloat16"
    assert training_dtype("float32") == "float32"
    with pytest.raises(DistillError, match="'auto', 'bfloat16' or 'float32'"):
        training_dtype("float16")


def test_activations_are_recomputed_only_where_memory_runs_short(tmp_path):
    pytest.importorskip("trl")
    from hotmem.pipeline.distill import sft_config

    config = DistillConfig(out_dir=str(tmp_path))
    assert sft_config(config, bf16=True, use_cpu=True).gradient_checkpointing is False  # CPU: compute is short
    assert sft_config(config, bf16=False, use_cpu=False).gradient_checkpointing is True
    forced = DistillConfig(out_dir=str(tmp_path), gradient_checkpointing=True)
    assert sft_config(forced, bf16=True, use_cpu=True).gradient_checkpointing is True


def test_unsloth_path_builds_the_same_lora_recipe(monkeypatch):
    """Unsloth cannot import here: a stand-in records what hotmem asks of it, to compare with the PEFT config."""
    pytest.importorskip("peft")
    from peft import LoraConfig

    from hotmem.pipeline import distill

    calls = {}

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(name, **kwargs):
            calls["from_pretrained"] = (name, kwargs)
            return "model", "tokenizer"

        @staticmethod
        def get_peft_model(model, **kwargs):
            calls["get_peft_model"] = kwargs
            return "peft-model"

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    config = DistillConfig(lora_r=8, lora_alpha=16)
    model, tokenizer, peft_config, source = distill.load_base(config, "unsloth")
    assert (model, peft_config, source) == ("peft-model", None, "Qwen/Qwen2.5-0.5B-Instruct")
    assert calls["from_pretrained"][1]["max_seq_length"] == config.max_seq_length
    unsloth_lora = {k: v for k, v in calls["get_peft_model"].items() if k in lora_kwargs(config)}
    assert unsloth_lora == lora_kwargs(config)
    peft = LoraConfig(task_type="CAUSAL_LM", **lora_kwargs(config))
    assert (peft.r, peft.lora_alpha, set(peft.target_modules)) == (8, 16, set(unsloth_lora["target_modules"]))
    # an embedded GGUF named as the base: Unsloth loads the same model's hub weights; the export keeps the GGUF's name
    *_, source = distill.load_base(DistillConfig(base_model="qwen2.5-coder-1.5b"), "unsloth")
    assert calls["from_pretrained"][0] == "Qwen/Qwen2.5-Coder-1.5B-Instruct" and source == "qwen2.5-coder-1.5b"


@pytest.mark.integration
@needs_smollm
def test_tiny_lora_trains_resumes_and_exports_a_gguf_llama_cpp_reads(tmp_path):
    """The real TRL + PEFT path end to end on a tiny random Qwen2 (seconds on CPU), tokenizer from SmolLM2's GGUF."""
    for module in ("torch", "trl", "peft", "gguf", "datasets"):
        pytest.importorskip(module)
    import gguf
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from hotmem.llama.models import model_path
    from hotmem.pipeline.distill import distill, sft_dataset

    path = model_path("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    import random

    from hotmem.pipeline.mixture import Mixture, example_rows
    from hotmem.types import Record

    pairs = [(Record(id=f"x{i}", turns=as_turns(TEXT), graph=GRAPH), CONVERSATION_SCHEMA) for i in range(8)]
    dataset = sft_dataset(example_rows(pairs, "test", Mixture(sources=[]), random.Random(0))[0])
    config = DistillConfig(out_dir=str(tmp_path / "student"), max_steps=2, save_steps=1, logging_steps=1,
                           batch_size=2, lora_r=4, lora_alpha=8, max_seq_length=768)
    result = distill(config, dataset, base=(model, tokenizer, "tiny-qwen2"), progress=False)
    assert result.manifest["global_step"] == 2 and result.manifest["loss_history"]
    assert result.manifest["sessions"] == 1 and result.manifest["seconds_total"] > 0
    assert result.manifest["peak_rss_gb"] > 0
    out = result.out_dir
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "merged" / "config.json").is_file()
    reader = gguf.GGUFReader(str(out / "adapter.gguf"))
    names = {t.name for t in reader.tensors}
    assert len(names) == 2 * 2 * 7  # layers x (A, B) x projections
    a = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight.lora_a")
    assert list(a.shape) == [32, 4] and a.tensor_type == gguf.GGMLQuantizationType.F16  # ggml order: (in, r)
    # no embedded GGUF has this base's vocabulary: the export says how to convert it, and so does loading it
    from hotmem.errors import StudentNotFoundError
    from hotmem.students.lora import Student

    with pytest.raises(StudentNotFoundError, match="convert_hf_to_gguf"):
        Student(out)
    # a checkpoint mid-run, as a student on the base GGUF it was trained on (here SmolLM2's, as if dequantized)
    from hotmem.pipeline.distill import export_checkpoint

    checkpoint = out / "checkpoints" / "checkpoint-2"
    with pytest.raises(DistillError, match="only the end-of-run export"):
        export_checkpoint(checkpoint, tmp_path / "mid")  # this one was trained on an in-memory model
    adapter_config = json.loads((checkpoint / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = str(path.parent)
    (checkpoint / "adapter_config.json").write_text(json.dumps(adapter_config))
    mid = export_checkpoint(checkpoint, tmp_path / "mid", DistillConfig(gguf_fallback="smollm2-135m"))
    assert len(gguf.GGUFReader(str(mid / "adapter.gguf")).tensors) == 2 * 2 * 7
    spec = json.loads((mid / "student.json").read_text())
    assert (spec["prompt"], spec["base_gguf"], spec["lora_gguf"]) == ("schema", "smollm2-135m", "adapter.gguf")
    assert spec["answer_format"] == "json"  # what the run's rows taught (recorded beside its checkpoints)
    record = json.loads((out / "checkpoints" / "data.json").read_text())
    assert record["base_model"] == "tiny-qwen2"  # the source the run was given: no embedded GGUF, so the fallback above
    (out / "checkpoints" / "data.json").write_text(json.dumps({**record, "base_model": "smollm2-135m"}))
    spec = json.loads((export_checkpoint(checkpoint, tmp_path / "mid2") / "student.json").read_text())
    assert spec["base_gguf"] == "smollm2-135m"  # a run on an embedded base: its GGUF, whatever the fallback
    with pytest.raises(DistillError, match="not a LoRA checkpoint"):
        export_checkpoint(tmp_path, tmp_path / "mid")
    # a second run with a larger budget continues from the last checkpoint
    model = Qwen2ForCausalLM(model.config)
    model.name_or_path = str(path.parent)  # as a base dequantized from a GGUF: a folder without a config.json
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = distill(DistillConfig(**{**config.__dict__, "max_steps": 3}), dataset,
                        base=(model, tokenizer, "tiny-qwen2"), progress=False)
    # PEFT's complaint about that folder at every save stays out of the user's log
    assert not [w for w in caught if "Could not find a config file" in str(w.message)]
    assert again.manifest["global_step"] == 3
    # the clock went on from the checkpoint: both sessions' time, counted once
    saved = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    before = saved["stateful_callbacks"]["TrainingClock"]["attributes"]
    assert again.manifest["sessions"] == 2 and again.manifest["seconds_total"] > before["seconds"] > 0
    assert again.manifest["seconds_total"] < before["seconds"] + again.manifest["seconds_this_run"] + 1
    # resuming on other examples would mix two runs: refused
    other = sft_dataset(example_rows(pairs[:6], "test", Mixture(sources=[]), random.Random(1))[0])
    with pytest.raises(DistillError, match="trained on other examples"):
        distill(DistillConfig(**{**config.__dict__, "max_steps": 4}), other,
                base=(Qwen2ForCausalLM(model.config), tokenizer, "tiny-qwen2"), progress=False)
    # a checkpoint written before hotmem kept a clock resumes, and its next save carries the clock
    state_file = out / "checkpoints" / "checkpoint-3" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["stateful_callbacks"]["TrainingClock"]
    state_file.write_text(json.dumps(state))
    later = distill(DistillConfig(**{**config.__dict__, "max_steps": 4}), dataset,
                    base=(Qwen2ForCausalLM(model.config), tokenizer, "tiny-qwen2"), progress=False)
    assert later.manifest["global_step"] == 4 and later.manifest["sessions"] == 1
    saved = json.loads((out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["TrainingClock"]["attributes"]["sessions"] == 1


@needs_smollm
def test_chats_of_several_examples_train_with_the_loss_on_every_answer(tmp_path):
    """Rows of `examples_per_prompt` > 1: TRL masks every answer of a chat and nothing else, with Qwen2.5's chat
    template (the students' base; TRL patches it with generation markers); a template it cannot patch is refused
    before training. SmolLM2's tokenizer stands in for Qwen's: both write ChatML, and Qwen's loads in minutes."""
    for module in ("torch", "trl", "peft", "datasets"):
        pytest.importorskip(module)
    import random

    from peft import LoraConfig
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    from trl import SFTTrainer
    from trl.chat_template_utils import qwen2_5_chat_template

    from hotmem.llama.models import model_path
    from hotmem.pipeline.distill import _ESCAPED_TOOL_EXAMPLE, _answers, _check_chat_template, distill, sft_config
    from hotmem.pipeline.mixture import Mixture, example_rows, share_prompts
    from hotmem.types import Record

    pairs = [(Record(id=f"x{i}", turns=as_turns(f"{TEXT} ({i})"), graph=GRAPH), CONVERSATION_SCHEMA)
             for i in range(5)]
    alone = example_rows(pairs, "test", Mixture(sources=[], whole_schema_rate=1.0, answer_format="lines"),
                         random.Random(0))[0]
    rows = share_prompts(alone, per_prompt=3, max_chars=8000)
    assert [row["id"] for row in rows] == ["x0+x1+x2", "x3+x4"]
    assert _answers(sft_dataset(rows)) == _answers(sft_dataset(alone)) == 5  # the manifest's "examples"
    path = model_path("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tiny = Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1)
    config = DistillConfig(out_dir=str(tmp_path / "student"), max_steps=1, batch_size=2, lora_r=2, lora_alpha=4)
    with pytest.raises(DistillError, match="examples_per_prompt"):  # SmolLM2's own template
        distill(config, sft_dataset(rows), base=(Qwen2ForCausalLM(tiny), tokenizer, "tiny"), progress=False)
    tokenizer.chat_template = qwen2_5_chat_template.replace(*reversed(_ESCAPED_TOOL_EXAMPLE))
    _check_chat_template(tokenizer)  # Qwen2.5-Coder-1.5B's GGUF: the same template but an escaped tool example
    assert tokenizer.chat_template == qwen2_5_chat_template
    trainer = SFTTrainer(model=Qwen2ForCausalLM(tiny), args=sft_config(config, bf16=False, use_cpu=True, chats=True),
                         train_dataset=sft_dataset(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(task_type="CAUSAL_LM", **lora_kwargs(config)))
    for chat, answers in zip(trainer.train_dataset, (alone[:3], alone[3:])):
        trained = tokenizer.decode([t for t in chat["labels"] if t != -100])
        assert trained == "".join(f"\n{row['completion'][0]['content']}<|im_end|>\n" for row in answers)


def _tiny_qwen2_and_four_examples():
    """SmolLM2's tokenizer, a one-layer Qwen2 config of its vocabulary, and four SFT rows of TEXT: seconds to train."""
    for module in ("torch", "trl", "peft"):
        pytest.importorskip(module)
    import random

    from transformers import AutoTokenizer, Qwen2Config

    from hotmem.llama.models import model_path
    from hotmem.pipeline.mixture import Mixture, example_rows
    from hotmem.types import Record

    path = model_path("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tiny = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2)
    pairs = [(Record(id=f"x{i}", turns=as_turns(TEXT), graph=GRAPH), CONVERSATION_SCHEMA) for i in range(4)]
    return tokenizer, tiny, sft_dataset(example_rows(pairs, "test", Mixture(sources=[]), random.Random(0))[0])


def test_a_second_stage_trains_on_from_the_earlier_runs_adapter(tmp_path):
    """`init_from`: the earlier run's adapter, trainable, on the same base and answer format; the manifest and
    card carry the earlier stage."""
    import torch
    from transformers import Qwen2ForCausalLM

    from hotmem.pipeline.distill import _start_from_earlier, distill, sft_dataset
    from hotmem.pipeline.mixture import Mixture, MixtureSource, build_examples

    tokenizer, tiny, dataset = _tiny_qwen2_and_four_examples()
    recipe = {"max_steps": 2, "save_steps": 2, "batch_size": 2, "lora_r": 4, "lora_alpha": 8, "max_seq_length": 2048}
    first = distill(DistillConfig(out_dir=str(tmp_path / "first"), **recipe), dataset,
                    base=(Qwen2ForCausalLM(tiny), tokenizer, "tiny-qwen2"), progress=False)
    assert first.manifest["global_step"] == 2
    from safetensors.torch import load_file

    trained = load_file(str(tmp_path / "first" / "adapter" / "adapter_model.safetensors"))
    config = DistillConfig(out_dir=str(tmp_path / "second"), init_from=str(tmp_path / "first"), **recipe)
    model, peft_config, earlier = _start_from_earlier(config, Qwen2ForCausalLM(tiny), object(), "tiny-qwen2", "json")
    assert peft_config is None and earlier["folder"] == "first" and earlier["steps"] == 2
    state = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    assert state.keys() == trained.keys() and all(torch.equal(state[k], trained[k]) for k in state)
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k)  # trained, not a fresh B = 0
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    with pytest.raises(DistillError, match="only fits the base it was trained on"):
        _start_from_earlier(config, Qwen2ForCausalLM(tiny), object(), "qwen2.5-coder-0.5b", "json")
    with pytest.raises(DistillError, match="answer_format"):
        _start_from_earlier(config, Qwen2ForCausalLM(tiny), object(), "tiny-qwen2", "lines")
    with pytest.raises(DistillError, match="no trained LoRA student"):
        _start_from_earlier(DistillConfig(init_from=str(tmp_path)), Qwen2ForCausalLM(tiny), object(), "x", "json")
    with pytest.raises(DistillError, match="set lora_r and lora_alpha to match"):
        _start_from_earlier(DistillConfig(**{**config.__dict__, "lora_alpha": 16}), Qwen2ForCausalLM(tiny),
                            object(), "tiny-qwen2", "json")
    # a shipped student keeps only its adapter GGUF (as optimized/student): the adapter is rebuilt from it
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for name in ("adapter.gguf", "student.json", "manifest.json"):
        (shipped / name).write_bytes((tmp_path / "first" / name).read_bytes())
    from_gguf = DistillConfig(out_dir=str(tmp_path / "from-gguf"), init_from=str(shipped), **recipe)
    model, _, earlier = _start_from_earlier(from_gguf, Qwen2ForCausalLM(tiny), object(), "tiny-qwen2", "json")
    assert earlier["steps"] == 2 and (tmp_path / "from-gguf" / "init-adapter" / "adapter_config.json").is_file()
    state = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    assert state.keys() == trained.keys()  # the GGUF held f16: equal to its rounding
    assert all(torch.allclose(state[k], trained[k], rtol=1e-3, atol=1e-6) for k in state)
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    # the whole second stage: its manifest and card name the first
    mixture = Mixture(sources=[MixtureSource("gold", limit=4)], whole_schema_rate=1.0)
    rows, sources = build_examples(mixture)
    second = distill(config, sft_dataset(rows), base=(Qwen2ForCausalLM(tiny), tokenizer, "tiny-qwen2"),
                     progress=False, sources=sources, mixture=mixture)
    assert second.manifest["init_from"]["folder"] == "first" and second.manifest["global_step"] == 2
    assert "Earlier stage: `first`" in (tmp_path / "second" / "card.md").read_text()


@needs_smollm
def test_a_lora_soup_is_the_weighted_sum_of_its_runs_updates(tmp_path):
    """`soup_students`: a run and the run trained on from it become one adapter whose weight update is the weighted
    sum of theirs, exactly; runs that share no stage are refused."""
    import torch
    from safetensors.torch import load_file
    from transformers import Qwen2ForCausalLM

    from hotmem.pipeline.distill import distill, earlier_lora_shape, soup_students

    tokenizer, tiny, dataset = _tiny_qwen2_and_four_examples()
    recipe = {"max_steps": 2, "save_steps": 2, "batch_size": 2, "lora_r": 4, "lora_alpha": 8, "max_seq_length": 2048,
              "learning_rate": 1e-2}

    def train(name, init_from=None):
        config = DistillConfig(out_dir=str(tmp_path / name), init_from=init_from, **recipe)
        return distill(config, dataset, base=(Qwen2ForCausalLM(tiny), tokenizer, "tiny-qwen2"), progress=False)

    first = train("first")
    second = train("second", init_from=str(first.out_dir))
    soup = soup_students([first.out_dir, second.out_dir], DistillConfig(out_dir=str(tmp_path / "soup")),
                         weights=[0.25, 0.75], base=(Qwen2ForCausalLM(tiny), tokenizer, "tiny-qwen2"))

    def updates(folder):
        adapter = json.loads((folder / "adapter" / "adapter_config.json").read_text())
        state = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
        scaling = adapter["lora_alpha"] / adapter["r"]
        return {k.replace(".lora_A.weight", ""): scaling * state[k.replace("lora_A", "lora_B")] @ state[k]
                for k in state if "lora_A" in k}

    runs, mixed = [updates(r.out_dir) for r in (first, second)], updates(soup.out_dir)
    assert mixed.keys() == runs[0].keys() and not torch.allclose(runs[0][next(iter(mixed))], runs[1][next(iter(mixed))])
    for key, update in mixed.items():
        assert torch.allclose(update, 0.25 * runs[0][key] + 0.75 * runs[1][key], atol=1e-6), key
    assert soup.manifest["recipe"]["lora_r"] == 8 and soup.manifest["soup_weights"] == [0.25, 0.75]
    assert (soup.out_dir / "adapter.gguf").is_file() and (soup.out_dir / "merged" / "config.json").is_file()
    card = (soup.out_dir / "card.md").read_text()
    assert "`first` (0.25), `second` (0.75)" in card
    assert card.count("### Earlier stage: `first`") == card.count("### Earlier stage: `second`") == 1
    # the best approximation of a lower rank: all of the sum at its own rank, a recorded share of it below
    at_rank = {r: soup_students([first.out_dir, second.out_dir], DistillConfig(out_dir=str(tmp_path / f"r{r}")),
                                weights=[0.25, 0.75], rank=r, base=(Qwen2ForCausalLM(tiny), tokenizer, "tiny-qwen2"))
               for r in (8, 2)}
    assert at_rank[8].manifest["soup_left_out"] < 1e-6 and at_rank[8].manifest["recipe"]["lora_r"] == 8
    assert all(torch.allclose(u, mixed[k], atol=1e-5) for k, u in updates(at_rank[8].out_dir).items())
    assert 0 < at_rank[2].manifest["soup_left_out"] < 1 and at_rank[2].manifest["recipe"]["lora_r"] == 2
    assert "best rank-2 approximation" in (at_rank[2].out_dir / "card.md").read_text()
    # a later stage trains on from the soup, at its rank and alpha (what `hotmem distill --init-from` reads)
    third = DistillConfig(out_dir=str(tmp_path / "third"), init_from=str(soup.out_dir), **recipe)
    third.lora_r, third.lora_alpha = earlier_lora_shape(third)
    assert (third.lora_r, third.lora_alpha) == (8, 8)
    assert distill(third, dataset, base=(Qwen2ForCausalLM(tiny), tokenizer, "tiny-qwen2"),
                   progress=False).manifest["init_from"]["folder"] == "soup"
    alone = train("alone")  # trained from the base: shares no stage with `second`
    with pytest.raises(DistillError, match="share no earlier stage"):
        soup_students([second.out_dir, alone.out_dir], DistillConfig(out_dir=str(tmp_path / "no")))
    with pytest.raises(DistillError, match="2 weights for 3 runs"):
        soup_students([first.out_dir, second.out_dir, first.out_dir], DistillConfig(out_dir=str(tmp_path / "no")),
                      weights=[0.5, 0.5])


def test_asking_for_a_missing_student_says_how_to_get_one(tmp_path):
    from hotmem.errors import StudentNotFoundError
    from hotmem.extractor import GraphExtractor

    with pytest.raises(StudentNotFoundError, match="hotmem distill"):
        GraphExtractor(backend=str(tmp_path))


@pytest.mark.integration
@needs_embedded
def test_merged_student_gguf_is_quantized_and_answers_like_its_base(tmp_path):
    """The real export path: base dequantized from the embedded GGUF, LoRA merged, written and quantized by
    llama.cpp. A fresh LoRA is the identity (B = 0), so the merged GGUF must decode what the base GGUF decodes."""
    for module in ("torch", "peft", "gguf", "transformers"):
        pytest.importorskip(module)
    import gguf
    from llama_cpp import Llama
    from peft import get_peft_model

    from hotmem.llama.gguf import write_merged_gguf
    from hotmem.llama.models import model_path
    from hotmem.pipeline.distill import DistillConfig, load_base

    model, _tokenizer, peft_config, source = load_base(DistillConfig(base_model=str(tmp_path / "no-such-model")), "trl")
    assert source == "qwen2.5-coder-0.5b"
    merged = get_peft_model(model, peft_config).merge_and_unload()
    out = write_merged_gguf(merged.state_dict(), model_path(source), tmp_path / "student.gguf")
    assert not list(tmp_path.glob("*.tmp"))
    reader = gguf.GGUFReader(str(out))
    assert {t.tensor_type.name for t in reader.tensors} >= {"Q8_0", "F32"}
    assert out.stat().st_size < 1.4 * model_path(source).stat().st_size  # quantized: F16 would be 2.5 times

    def greedy(path):  # requantizing adds noise: compare next tokens, where a wrong layout shows at once
        llm = Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
        return [llm(prompt, max_tokens=1, temperature=0)["choices"][0]["text"]
                for prompt in ("The capital of France is", "def add(a, b):\n    return", "1, 2, 3, 4,")]

    assert greedy(out) == greedy(model_path(source))


@needs_embedded
def test_the_shipped_student_merged_answers_as_its_lora_applied_at_run_time(tmp_path, monkeypatch):
    """A real LoRA's updates are small: the merged GGUF's quantization must not round them away (at Q4_0 a trained
    student's answers came out garbled while the same LoRA applied at run time answered well)."""
    from hotmem.data import load_gold
    from hotmem.students import lora

    monkeypatch.setattr(lora, "cache_dir", lambda: tmp_path)
    turns = [record.turns for record in load_gold(split="dev")[:4]]
    merged, live = lora.Student(merge=True), lora.Student(merge=False)
    assert merged.engine.model.startswith(str(tmp_path)) and live.engine.lora_path

    def answers(student):
        return [student.engine.chat(student_messages(t, student.system_prompt), max_tokens=96,
                                    **student._constraint)["choices"][0]["message"]["content"] for t in turns]

    same = sum(a == b for a, b in zip(answers(merged), answers(live)))
    assert same >= 3, f"only {same} of 4 answers agree"
    assert merged.engine.llama.cache is None  # one fixed prefix: the context keeps it, no RAM state cache


@needs_smollm
def test_lora_folded_into_its_base_gguf_decodes_like_the_lora_applied_at_run_time(tmp_path):
    """What a shipped student does on first use: base GGUF + LoRA GGUF -> one GGUF (gguf and numpy, no training
    stack). The folded weights are W + alpha/r * B A, and llama.cpp must decode them as it decodes the live LoRA."""
    torch = pytest.importorskip("torch")
    import gguf
    import numpy as np
    from llama_cpp import Llama

    from hotmem.llama.gguf import merge_lora_gguf, write_lora_gguf
    from hotmem.llama.models import model_path

    base = model_path("smollm2-135m")
    generator = torch.Generator().manual_seed(0)
    rank, alpha, width = 4, 8.0, 576
    adapter = {}
    for layer in range(3):
        for projection in ("q_proj", "o_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{projection}"
            adapter[f"{prefix}.lora_A.weight"] = torch.randn(rank, width, generator=generator) * 0.2
            adapter[f"{prefix}.lora_B.weight"] = torch.randn(width, rank, generator=generator) * 0.2
    lora = tmp_path / "adapter.gguf"
    write_lora_gguf(adapter, lora, alpha=alpha, architecture="llama")
    merged = merge_lora_gguf(base, lora, tmp_path / "merged.gguf", quantization=None)
    assert not list(tmp_path.glob("*.tmp"))

    folded = next(t for t in gguf.GGUFReader(str(merged)).tensors if t.name == "blk.1.attn_q.weight")
    original = next(t for t in gguf.GGUFReader(str(base)).tensors if t.name == "blk.1.attn_q.weight")
    a = adapter["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].half().float().numpy()
    b = adapter["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"].half().float().numpy()
    expected = gguf.quants.dequantize(original.data, original.tensor_type) + alpha / rank * (b @ a)
    np.testing.assert_allclose(np.asarray(folded.data, np.float32), expected, rtol=1e-2, atol=2e-3)

    def next_tokens(model, lora_path=None):  # the first token: later ones drift apart on near-ties
        llm = Llama(model_path=str(model), lora_path=lora_path, n_ctx=256, n_threads=2, verbose=False)
        return [llm(prompt, max_tokens=1, temperature=0)["choices"][0]["text"]
                for prompt in ("The capital of France is", "My sister lives in", "1, 2, 3, 4,")]

    folded_tokens = next_tokens(merged)
    assert folded_tokens == next_tokens(base, str(lora)) and folded_tokens != next_tokens(base)  # the LoRA matters
    stray = tmp_path / "stray.gguf"  # an adapter for a deeper model than this base
    write_lora_gguf({k.replace("layers.0.", "layers.99."): v for k, v in adapter.items() if "layers.0." in k},
                    stray, alpha=alpha, architecture="llama")
    with pytest.raises(DistillError, match="does not fit"):
        merge_lora_gguf(base, stray, tmp_path / "stray-merged.gguf")


def test_evaluating_the_student_without_one_says_how_to_get_one(monkeypatch, capsys):
    from hotmem.cli import main
    from hotmem.students import lora

    monkeypatch.setattr(lora, "shipped_student_dir", lambda: None)
    assert main(["evaluate", "--program", "student", "--dataset", "gold", "--split", "dev", "--limit", "1"]) == 2
    assert "hotmem distill" in capsys.readouterr().err


def test_a_gguf_that_is_no_lora_adapter_is_refused_by_name(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from hotmem.llama.gguf import read_lora_gguf

    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(DistillError, match="not a LoRA adapter GGUF"):
        read_lora_gguf(path, ["q_proj"])
