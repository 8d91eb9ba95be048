"""Stage 5: distil the teacher's labels into a LoRA on a small Qwen (the student).

The student answers in one call, in a compact format designed for few output tokens:

    {"e":[["Potola","ANIMAL"],["speaker","PERSON"]],"r":[["speaker","has_pet","Potola"]]}

One recipe (LoRA on every linear projection, the same hyperparameters) trains on either backend: Unsloth's
`FastLanguageModel` where a CUDA GPU exists, TRL's `SFTTrainer` with PEFT otherwise. Checkpoints go to
`out_dir/checkpoints`; running again resumes from the last one.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hotmem.data import load_gold
from hotmem.evaluate import write_atomic
from hotmem.lm import EMBEDDED_MODELS, STUDENT_BASE_HUB_ID, model_path
from hotmem.schema import CONVERSATION_SCHEMA, Graph, HotmemError, RelationSchema, Turn, render_turns
from hotmem.signatures import MAX_ENTITIES, MAX_NAME_CHARS

logger = logging.getLogger(__name__)

#: Short on purpose: the student pays for every prompt token on every call.
STUDENT_SYSTEM_PROMPT = (
    "Extract the knowledge graph of the conversation as JSON: e = entities [name, TYPE], r = relations "
    "[subject, predicate, object]. I/me/my is the speaker (their name, else \"speaker\"); resolve pronouns; "
    "only facts stated as true; {\"e\":[],\"r\":[]} when there are none."
)

#: Qwen2 module names: every linear projection of attention and MLP gets a LoRA.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class DistillError(HotmemError):
    """Training cannot start as configured (no labels, a backend that cannot run here, no base weights)."""


# --------------------------------------------------------------------------- the student's output format


def graph_to_target(graph: Graph) -> str:
    """The compact JSON the student learns to write (no confidences: they are derived, as for the teacher)."""
    return json.dumps(
        {"e": [[e.name, e.type] for e in graph.entities], "r": [[r.subject, r.predicate, r.object] for r in graph.relations]},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def student_json_schema(schema: RelationSchema = CONVERSATION_SCHEMA, closed: bool = True,
                        max_items: int = MAX_ENTITIES) -> dict[str, Any]:
    """JSON schema of the compact format, for constrained decoding (types and, closed, predicates enumerated).

    The teacher's list bounds and a bound on names apply: where a small model would loop inside a list or a name
    until `max_tokens` cut the JSON, the grammar closes it."""
    predicate: dict[str, Any] = {"type": "string", "enum": list(schema.predicates)} if closed else {"type": "string"}
    name = {"type": "string", "maxLength": MAX_NAME_CHARS}
    return {
        "type": "object",
        "properties": {
            "e": {"type": "array", "maxItems": max_items, "items": {
                "type": "array", "prefixItems": [name, {"type": "string", "enum": list(schema.entity_types)}],
                "minItems": 2, "maxItems": 2}},
            "r": {"type": "array", "maxItems": max_items, "items": {
                "type": "array", "prefixItems": [name, predicate, name],
                "minItems": 3, "maxItems": 3}},
        },
        "required": ["e", "r"],
    }


def student_messages(turns: Sequence[Turn]) -> list[dict[str, str]]:
    """The chat the student sees: the fixed system prompt, then the conversation."""
    return [{"role": "system", "content": STUDENT_SYSTEM_PROMPT}, {"role": "user", "content": render_turns(turns)}]


def sft_example(turns: Sequence[Turn], graph: Graph) -> dict[str, Any]:
    """One SFT example in TRL's conversational prompt-completion format: the loss is on the graph only."""
    return {"prompt": student_messages(turns), "completion": [{"role": "assistant", "content": graph_to_target(graph)}]}


def sft_dataset(labels: Iterable[dict[str, Any]], *, gold_repeats: int = 0):
    """Chat-format SFT examples from labelled rows (`turns` and `graph` as `hotmem label` saves them).

    `gold_repeats` > 0 mixes in our hand-annotated train split that many times: the teacher's labels are noisy and
    rarely carry relations, and the gold examples are the few complete graphs the student can copy. The dev and test
    splits are never used, so evaluation stays held out.
    """
    from datasets import Dataset

    if gold_repeats < 0:
        raise DistillError(f"gold_repeats must be 0 or more, got {gold_repeats}")
    rows = []
    for row in labels:
        turns = [Turn(**t) for t in row["turns"]]
        graph = row["graph"] if isinstance(row["graph"], Graph) else Graph.from_json(row["graph"])
        rows.append({"id": row["id"], **sft_example(turns, graph)})
    gold = load_gold("train") if gold_repeats else []
    for repeat in range(gold_repeats):
        rows.extend({"id": f"{record.id}#{repeat}", **sft_example(record.turns, record.graph)} for record in gold)
    if not rows:
        raise DistillError("no labelled examples to train on: run `hotmem label` first")
    return Dataset.from_list(rows)


# --------------------------------------------------------------------------- the recipe


@dataclass
class DistillConfig:
    """One recipe for both backends. Defaults follow the CPU measurement in the distillation issue (batch 4, 256)."""

    out_dir: str = "runs/student"
    base_model: str = STUDENT_BASE_HUB_ID
    #: Used when `base_model` cannot be loaded (no hub): an embedded GGUF, dequantized by transformers.
    gguf_fallback: str = "qwen2.5-coder-0.5b"
    backend: str = "auto"  # "auto" | "unsloth" | "trl"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = LORA_TARGET_MODULES
    max_seq_length: int = 256
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1
    warmup_ratio: float = 0.05
    logging_steps: int = 5
    save_steps: int = 25
    seed: int = 0
    #: copies of the gold train split mixed into the labels (see `sft_dataset`); recorded here for the manifest
    gold_repeats: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def choose_backend(requested: str = "auto") -> str:
    """`unsloth` where a CUDA GPU and Unsloth exist, else `trl`. Asking for Unsloth without them is an error."""
    unsloth_ready = cuda_available() and importlib.util.find_spec("unsloth") is not None
    if requested == "auto":
        return "unsloth" if unsloth_ready else "trl"
    if requested == "unsloth" and not unsloth_ready:
        raise DistillError(
            "the Unsloth backend needs a CUDA GPU and `pip install unsloth`; "
            f"cuda available: {cuda_available()}, unsloth installed: {importlib.util.find_spec('unsloth') is not None}. "
            "Use backend='trl' (the same recipe on CPU)."
        )
    if requested not in {"unsloth", "trl"}:
        raise DistillError(f"backend is 'auto', 'unsloth' or 'trl', not {requested!r}")
    return requested


def lora_kwargs(config: DistillConfig) -> dict[str, Any]:
    """The LoRA half of the recipe, as both PEFT's `LoraConfig` and Unsloth's `get_peft_model` take it."""
    return {"r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
            "target_modules": list(config.target_modules), "bias": "none"}


def sft_config(config: DistillConfig, *, bf16: bool, use_cpu: bool = False):
    """The training half of the recipe: TRL's `SFTConfig` (Unsloth trains through TRL's trainer too)."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(Path(config.out_dir) / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        lr_scheduler_type="cosine",
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=2,
        max_length=config.max_seq_length,
        bf16=bf16,
        use_cpu=use_cpu,
        seed=config.seed,
        report_to=[],
        dataloader_num_workers=0,
        **config.extra,
    )


# --------------------------------------------------------------------------- training


@dataclass
class DistillResult:
    out_dir: Path
    manifest: dict[str, Any]


def load_base(config: DistillConfig, backend: str):
    """(model, tokenizer, peft_config or None, where the weights came from) for the chosen backend."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel  # imports only where a GPU exists

        model, tokenizer = FastLanguageModel.from_pretrained(
            config.base_model, max_seq_length=config.max_seq_length, load_in_4bit=False, dtype=None
        )
        model = FastLanguageModel.get_peft_model(
            model, **lora_kwargs(config), use_gradient_checkpointing="unsloth", random_state=config.seed
        )
        return model, tokenizer, None, config.base_model

    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    peft_config = LoraConfig(task_type="CAUSAL_LM", **lora_kwargs(config))
    # The local cache first, the hub only when it answers (an unreachable hub costs a minute of retries).
    for local_only in (True, False):
        if not local_only and not Path(config.base_model).exists() and not _hub_reachable():
            break
        try:
            tokenizer = AutoTokenizer.from_pretrained(config.base_model, local_files_only=local_only)
            model = AutoModelForCausalLM.from_pretrained(
                config.base_model, dtype=torch.bfloat16, local_files_only=local_only
            )
            return model, tokenizer, peft_config, config.base_model
        except OSError as exc:
            logger.info("cannot load %s%s: %s", config.base_model, " from the local cache" * local_only, exc)
    gguf = model_path(config.gguf_fallback)
    logger.warning("%s is not available here; dequantizing %s instead", config.base_model, gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    # The weights are dequantized into ordinary tensors; only transformers' GGUF marker remains, and the Trainer
    # refuses to train "GGUF-quantized" models. Drop the marker.
    model.hf_quantizer, model.is_quantized = None, False
    model.config.quantization_config = None
    return model, tokenizer, peft_config, config.gguf_fallback


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _last_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def distill(config: DistillConfig, dataset, *, base: tuple | None = None, progress: bool = True) -> DistillResult:
    """Train the student's LoRA on a chat-format SFT data set (see `sft_dataset`), then export it.

    `base`: an already loaded `(model, tokenizer, source)` to train on with TRL, instead of `config.base_model`.
    """
    import resource
    import time

    from trl import SFTTrainer

    if len(dataset) == 0:
        raise DistillError("the SFT data set is empty")
    if base is not None:
        from peft import LoraConfig

        backend, (model, tokenizer, base_source) = "trl", base
        peft_config = LoraConfig(task_type="CAUSAL_LM", **lora_kwargs(config))
    else:
        backend = choose_backend(config.backend)
        model, tokenizer, peft_config, base_source = load_base(config, backend)
    on_cpu = not cuda_available()
    args = sft_config(config, bf16=True, use_cpu=on_cpu)
    args.disable_tqdm = not progress
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    resume = _last_checkpoint(Path(args.output_dir))
    if resume:
        logger.info("resuming from %s", resume)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started
    steps_now = trainer.state.global_step - (int(Path(resume).name.split("-")[-1]) if resume else 0)
    lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    tokens_now = sum(lengths) / len(lengths) * config.batch_size * config.gradient_accumulation_steps * steps_now
    out = Path(config.out_dir)
    manifest = {
        "backend": backend,
        "base_model": base_source,
        "recipe": {**asdict(config), "target_modules": list(config.target_modules)},
        "examples": len(dataset),
        "global_step": trainer.state.global_step,
        "train_loss": output.training_loss,
        "seconds_this_run": round(seconds, 1),
        "seconds_per_step": round(seconds / steps_now, 2) if steps_now else None,
        "tokens_per_second": round(tokens_now / seconds, 1) if steps_now else None,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "loss_history": [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h],
    }
    export_student(trainer.model, tokenizer, out, base_source, config)
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1, default=str) + "\n")
    return DistillResult(out, manifest)


# --------------------------------------------------------------------------- export

def _gguf_names(architecture: str, n_blocks: int):
    """gguf's own Hugging Face -> llama.cpp tensor-name map for an architecture (the one llama.cpp's converter uses)."""
    import gguf

    arch = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}.get(architecture)
    if arch is None:
        raise DistillError(f"gguf does not know the architecture {architecture!r}")
    return gguf.get_tensor_name_map(arch, n_blocks)


def write_lora_gguf(adapter_state: dict[str, Any], path: Path, alpha: float, architecture: str = "qwen2") -> int:
    """A PEFT LoRA as a llama.cpp adapter GGUF (`llama.cpp --lora`, llama-cpp-python `lora_path`, Ollama ADAPTER).

    PEFT stores lora_A as (r, in) and lora_B as (out, r); ggml's dimension order is the reverse of numpy's, which
    is the (in, r) / (r, out) layout llama.cpp expects, so the arrays go in as they are. Returns the tensor count.
    """
    import re

    import gguf
    import numpy as np

    pattern = re.compile(r"(?:base_model\.model\.)?(.*layers\.(\d+)\..*)\.lora_([AB])\.weight$")
    layers = [int(m.group(2)) for m in map(pattern.search, adapter_state) if m]
    names = _gguf_names(architecture, max(layers, default=0) + 1)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    count = 0
    for name, tensor in sorted(adapter_state.items()):
        match = pattern.search(name)
        target = names.get_name(match.group(1)) if match else None
        if target is None:
            raise DistillError(f"unexpected adapter tensor {name}: cannot map it to llama.cpp")
        # F16 as llama.cpp's own LoRA converter writes: half the size of F32 (18 MB at rank 16 on the 0.5B)
        array = tensor.detach().float().cpu().numpy().astype(np.float16)
        writer.add_tensor(f"{target}.weight.lora_{match.group(3).lower()}", array)
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count


#: llama.cpp quantization of the merged student. Q4_0, not the base's Q4_K_M mix: llama.cpp repacks Q4_0 for its
#: fastest CPU kernels (measured on 2 cores: prompt 212 against 144 tok/s, 50 free tokens in 0.73 against 1.27 s),
#: and the shipped student scored no worse with it (gold test relation F1 0.204 against 0.182, p50 1.34 against
#: 1.46 s, same engine).
MERGED_QUANTIZATION = "Q4_0"


def write_merged_gguf(state_dict: dict[str, Any], base_gguf: Path, path: Path,
                      quantization: str | None = MERGED_QUANTIZATION) -> Path:
    """The merged student as one GGUF: the base GGUF's metadata (architecture, tokenizer, chat template) with the
    merged weights, quantized by llama.cpp's own quantizer. No LoRA at inference: llama.cpp cannot use its
    repacked CPU kernels for weights a LoRA touches, which made decoding ~2x slower.

    `state_dict` holds Hugging Face names (`model.layers.0.self_attn.q_proj.weight`, ...). Written atomically.
    """
    import gguf

    reader = gguf.GGUFReader(str(base_gguf))
    architecture = str(reader.fields["general.architecture"].contents())
    names = _gguf_names(architecture, int(reader.fields[f"{architecture}.block_count"].contents()))
    weights = {}
    for hf_name, tensor in state_dict.items():
        target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is not None:
            weights[target] = tensor.detach().float().cpu().numpy()
    return _write_like_base(reader, weights, Path(base_gguf).name, Path(path), quantization)


def merge_lora_gguf(base_gguf: Path, lora_gguf: Path, path: Path,
                    quantization: str | None = MERGED_QUANTIZATION) -> Path:
    """The base GGUF with a LoRA GGUF folded into its weights (W + alpha/r * B A), from the two GGUFs alone: gguf and
    numpy, no torch. A student ships as its small adapter, and this builds the fast single GGUF where it runs."""
    import gguf
    import numpy as np

    base, lora = gguf.GGUFReader(str(base_gguf)), gguf.GGUFReader(str(lora_gguf))
    if "adapter.lora.alpha" not in lora.fields:
        raise DistillError(f"{lora_gguf} is not a llama.cpp LoRA adapter (no adapter.lora.alpha)")
    alpha = float(lora.fields["adapter.lora.alpha"].contents())
    pairs = {t.name: t for t in lora.tensors}
    weights = {}
    for info in base.tensors:
        weight = gguf.quants.dequantize(info.data, info.tensor_type).astype(np.float32)
        a, b = pairs.pop(f"{info.name}.lora_a", None), pairs.pop(f"{info.name}.lora_b", None)
        if a is not None and b is not None:
            a, b = np.asarray(a.data, np.float32), np.asarray(b.data, np.float32)  # (r, in), (out, r)
            weight = weight + (alpha / a.shape[0]) * (b @ a)
        weights[info.name] = weight
    if pairs:
        raise DistillError(f"{lora_gguf.name} does not fit {base_gguf.name}: no base tensor for {sorted(pairs)[:3]}")
    return _write_like_base(base, weights, Path(base_gguf).name, Path(path), quantization)


def _write_like_base(reader, weights: dict[str, Any], base_name: str, path: Path, quantization: str | None) -> Path:
    """`weights` (llama.cpp names, numpy arrays) under the metadata of the GGUF `reader` read, quantized. Atomic."""
    import ctypes
    import os
    import uuid

    import gguf
    import numpy as np

    architecture = str(reader.fields["general.architecture"].contents())
    unique = uuid.uuid4().hex[:8]  # two processes building the same file do not share temporaries
    f16 = path.with_name(f"{path.name}.{unique}.f16.tmp")
    writer = gguf.GGUFWriter(str(f16), architecture)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF.") or field.name == "general.file_type":
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for info in reader.tensors:
        if info.name not in weights:
            raise DistillError(f"the merged model has no tensor for {info.name} of {base_name}")
        array = weights[info.name]
        expected = tuple(int(d) for d in reversed(info.shape))
        if array.shape != expected:
            raise DistillError(f"{info.name}: merged shape {array.shape}, base GGUF {expected}")
        # llama.cpp keeps norms and biases in F32; matrices go to F16 before quantization
        writer.add_tensor(info.name, array.astype(np.float16 if array.ndim == 2 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if quantization is None:
        os.replace(f16, path)
        return path
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quantization}")
    params.nthread = os.cpu_count() or 1
    partial = path.with_name(f"{path.name}.{unique}.tmp")
    try:
        if llama_cpp.llama_model_quantize(str(f16).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
            raise DistillError(f"llama.cpp could not quantize {f16} to {quantization}")
        os.replace(partial, path)
    finally:
        f16.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    return path


OLLAMA_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}<|im_start|>user
{{ .Prompt }}<|im_end|>
<|im_start|>assistant
"""


def ollama_modelfile(model_gguf: str, adapter_gguf: str | None = None) -> str:
    """`ollama create hotmem-student -f Modelfile`: the merged GGUF, or a base GGUF with the LoRA GGUF on top."""
    adapter = f"ADAPTER {adapter_gguf}\n" if adapter_gguf else ""
    return (
        f"FROM {model_gguf}\n{adapter}"
        f'TEMPLATE """{OLLAMA_TEMPLATE}"""\n'
        f'SYSTEM """{STUDENT_SYSTEM_PROMPT}"""\n'
        "PARAMETER temperature 0\nPARAMETER stop <|im_end|>\n"
    )


def export_student(model, tokenizer, out: Path, base_source: str, config: DistillConfig) -> dict[str, str]:
    """Adapter, merged weights, GGUFs (LoRA on the base GGUF, and merged + quantized) and an Ollama Modelfile."""
    from peft import get_peft_model_state_dict

    files = {"adapter": "adapter", "merged": "merged", "lora_gguf": "adapter.gguf"}  # relative to `out`
    model.save_pretrained(out / files["adapter"])
    tokenizer.save_pretrained(out / files["adapter"])
    write_lora_gguf(get_peft_model_state_dict(model), out / files["lora_gguf"], alpha=config.lora_alpha)
    merged = model.merge_and_unload()
    merged.save_pretrained(out / files["merged"])
    tokenizer.save_pretrained(out / files["merged"])
    if base_source in EMBEDDED_MODELS or base_source.endswith(".gguf"):
        # The LoRA was trained on these very (dequantized) weights, so the base GGUF's metadata fits the merge.
        files["base_gguf"] = base_source
        files["merged_gguf"] = "student.gguf"
        write_merged_gguf(merged.state_dict(), model_path(base_source), out / files["merged_gguf"])
        (out / "Modelfile").write_text(ollama_modelfile("./" + files["merged_gguf"]))
        files["modelfile"] = "Modelfile"
    else:
        logger.warning("base %s has no GGUF here: convert %s with llama.cpp's convert_hf_to_gguf.py for llama.cpp "
                       "and Ollama", base_source, out / files["merged"])
    write_atomic(out / "student.json", json.dumps({"system_prompt": STUDENT_SYSTEM_PROMPT, **files}, indent=1) + "\n")
    return files
