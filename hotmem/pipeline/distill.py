"""Distil the teacher's labels into a LoRA on a small Qwen (the student).

The student answers in one call, in a compact format designed for few output tokens:

    {"e":[["Potola","ANIMAL"],["speaker","PERSON"]],"r":[["speaker","has_pet","Potola"]]}

One recipe (LoRA on every linear projection, the same hyperparameters) trains on either backend: Unsloth's
`FastLanguageModel` where a CUDA GPU exists, TRL's `SFTTrainer` with PEFT otherwise. Checkpoints go to
`out_dir/checkpoints`; running again resumes from the last one, on the same examples only (a digest of the data
set is kept beside the checkpoints: resuming on other data would silently mix two runs). `init_from` starts a
second stage from a finished run's adapter, on other data at a lower learning rate.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hotmem.errors import DistillError, ModelNotAvailableError
from hotmem.io import write_atomic
from hotmem.llama.gguf import read_lora_gguf, write_lora_gguf, write_merged_gguf
from hotmem.llama.models import EMBEDDED_MODELS, model_path
from hotmem.pipeline.mixture import (Mixture, earlier_stage, earlier_stages_for_card, mixture_name, model_card,
                                     soup_listing, soup_runs, stage_ancestors, training_seconds, write_manifest)
from hotmem.pipeline.resources import peak_rss_gb
from hotmem.schema import CONVERSATION_SCHEMA
from hotmem.students.format import schema_prompt

logger = logging.getLogger(__name__)

#: Hub id of the student's base model (used where a hub is reachable).
STUDENT_BASE_HUB_ID = "Qwen/Qwen2.5-0.5B-Instruct"

#: a second stage's learning rate (`DistillConfig.init_from`): the adapter is trained already, and a small stage's
#: data would pull it far from what the first one taught
STAGE_TWO_LEARNING_RATE = 1e-4

#: Qwen2 module names: every linear projection of attention and MLP gets a LoRA.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def sft_dataset(rows: Sequence[dict[str, Any]]):
    """The SFT data set from chat-format rows (`hotmem.pipeline.mixture.build_examples`)."""
    from datasets import Dataset

    if not rows:
        raise DistillError("no example to train on: give a mixture that holds data (`build_examples`)")
    return Dataset.from_list(list(rows))


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
    #: long enough for a whole-schema prompt (the conversation schema's inventory is ~1,200 tokens): TRL cuts an
    #: over-long example from the right, which would cut the answer (the mixture drops such examples instead)
    max_seq_length: int = 2048
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1
    warmup_ratio: float = 0.05
    logging_steps: int = 5
    save_steps: int = 25
    seed: int = 0
    #: None: off on a CPU, where compute is what runs short and a 0.5B's activations fit in RAM (recomputing them
    #: costs about a third more compute); on with a GPU, where memory runs short
    gradient_checkpointing: bool | None = None
    #: "auto": bfloat16 where the hardware computes it natively (a CUDA GPU that supports it; a CPU with
    #: AVX512-BF16 or AMX), else float32 — on a CPU without them PyTorch's bfloat16 matmul ran 130x slower here
    dtype: str = "auto"  # "auto" | "bfloat16" | "float32"
    #: a finished run's folder whose adapter this run goes on training (a second stage, e.g. the conversation
    #: schema shown whole after a mixture of schemas); its optimizer state and schedule are not carried over
    init_from: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def training_dtype(requested: str = "auto") -> str:
    """The dtype to train in (`DistillConfig.dtype`): "auto" picks bfloat16 only where it is computed natively."""
    if requested not in {"auto", "bfloat16", "float32"}:
        raise DistillError(f"dtype is 'auto', 'bfloat16' or 'float32', not {requested!r}")
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


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


def sft_config(config: DistillConfig, *, bf16: bool, use_cpu: bool = False, chats: bool = False):
    """The training half of the recipe: TRL's `SFTConfig` (Unsloth trains through TRL's trainer too). `chats`: the
    rows are `messages` chats of several examples (`hotmem.pipeline.mixture.share_prompts`), the loss on every
    answer; else prompt-completion rows, the loss on the completion."""
    from trl import SFTConfig

    return SFTConfig(
        assistant_only_loss=chats,
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
        restore_callback_states_from_checkpoint=True,  # the training clock (`training_clock`) goes on counting
        max_length=config.max_seq_length,
        # batches of similar length: little padding, without packing's need for FlashAttention (no GPU here)
        train_sampling_strategy="group_by_length",
        bf16=bf16,
        use_cpu=use_cpu,
        gradient_checkpointing=(not use_cpu if config.gradient_checkpointing is None
                                else config.gradient_checkpointing),
        seed=config.seed,
        report_to=[],
        dataloader_num_workers=0,
        **config.extra,
    )


# --------------------------------------------------------------------------- training


def training_clock():
    """A `TrainerCallback` that keeps a run's training time, sessions and peak RSS across resumes: transformers
    saves its state in each checkpoint's trainer_state.json (`ExportableState`) and restores it on resume, so a run
    trained over several sittings reports its whole time. Work lost after the last checkpoint is not counted."""
    import time

    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class TrainingClock(TrainerCallback, ExportableState):
        def __init__(self):
            self.seconds, self.sessions, self.peak_rss_gb = 0.0, 0, 0.0
            self._started: float | None = None
            self._before = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self._before, self._started = self.seconds, time.perf_counter()
            self.sessions += 1
            # a checkpoint written before the clock existed restores a state without it, and transformers' next
            # save looks the clock up there
            state.stateful_callbacks.setdefault(type(self).__name__, self.state())

        def read(self) -> dict[str, float]:
            if self._started is not None:
                self.seconds = self._before + time.perf_counter() - self._started
            self.peak_rss_gb = max(self.peak_rss_gb, peak_rss_gb())
            return {"seconds": round(self.seconds, 1), "sessions": self.sessions, "peak_rss_gb": self.peak_rss_gb}

        def state(self) -> dict:
            return {"args": {}, "attributes": self.read()}

    return TrainingClock()


@dataclass
class DistillResult:
    out_dir: Path
    manifest: dict[str, Any]


def load_base(config: DistillConfig, backend: str):
    """(model, tokenizer, peft_config or None, where the weights came from) for the chosen backend."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel  # imports only where a GPU exists

        if config.init_from:  # Unsloth loads an adapter folder as its base with the adapter on it, trainable
            model, tokenizer = FastLanguageModel.from_pretrained(
                str(_earlier_adapter(config)), max_seq_length=config.max_seq_length, load_in_4bit=False, dtype=None
            )
            return model, tokenizer, None, config.base_model
        weights = config.base_model
        if config.base_model in EMBEDDED_MODELS:  # an embedded GGUF by name: its unquantized weights, from the hub
            weights = EMBEDDED_MODELS[config.base_model].hub_id
            logger.info("Unsloth trains %s on its hub weights, %s", config.base_model, weights)
        model, tokenizer = FastLanguageModel.from_pretrained(
            weights, max_seq_length=config.max_seq_length, load_in_4bit=False, dtype=None
        )
        model = FastLanguageModel.get_peft_model(
            model, **lora_kwargs(config), use_gradient_checkpointing="unsloth", random_state=config.seed
        )
        return model, tokenizer, None, config.base_model

    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    peft_config = LoraConfig(task_type="CAUSAL_LM", **lora_kwargs(config))
    if config.base_model in EMBEDDED_MODELS:  # an embedded GGUF asked for by name: no hub to try
        return (*_dequantized_gguf(config.base_model, config), peft_config, config.base_model)
    # The local cache first, the hub only when it answers (an unreachable hub costs a minute of retries).
    for local_only in (True, False):
        if not local_only and not Path(config.base_model).exists() and not _hub_reachable():
            break
        try:
            tokenizer = AutoTokenizer.from_pretrained(config.base_model, local_files_only=local_only)
            model = AutoModelForCausalLM.from_pretrained(
                config.base_model, dtype=getattr(torch, training_dtype(config.dtype)), local_files_only=local_only
            )
            return model, tokenizer, peft_config, config.base_model
        except OSError as exc:
            logger.info("cannot load %s%s: %s", config.base_model, " from the local cache" * local_only, exc)
    logger.warning("%s is not available here; dequantizing %s instead", config.base_model,
                   model_path(config.gguf_fallback).name)
    return (*_dequantized_gguf(config.gguf_fallback, config), peft_config, config.gguf_fallback)


def _dequantized_gguf(name: str, config: DistillConfig):
    """(model, tokenizer) of an embedded GGUF, dequantized by transformers into trainable tensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = model_path(name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=getattr(torch, training_dtype(config.dtype)))
    # The weights are dequantized into ordinary tensors; only transformers' GGUF marker remains, and the Trainer
    # refuses to train "GGUF-quantized" models. Drop the marker.
    model.hf_quantizer, model.is_quantized = None, False
    model.config.quantization_config = None
    return model, tokenizer


def _earlier_adapter(config: DistillConfig) -> Path:
    """The earlier stage's PEFT adapter folder (`_run_adapter`), rebuilt if need be under this run's folder."""
    return _run_adapter(Path(config.init_from), Path(config.out_dir) / "init-adapter")


def earlier_lora_shape(config: DistillConfig) -> tuple[int, float]:
    """(rank, alpha) of the `init_from` run's LoRA (a soup's is the sum of its runs' ranks, its alpha the rank)."""
    trained = json.loads((_earlier_adapter(config) / "adapter_config.json").read_text())
    return trained["r"], trained["lora_alpha"]


def _run_adapter(folder: Path, rebuilt: Path) -> Path:
    """A finished run's PEFT adapter folder: its own, or one rebuilt at `rebuilt` from a shipped student's adapter
    GGUF (`optimized/student` keeps only that)."""
    adapter = folder / "adapter"
    if (adapter / "adapter_config.json").is_file():
        return adapter
    spec_file = folder / "student.json"
    lora_gguf = json.loads(spec_file.read_text()).get("lora_gguf") if spec_file.is_file() else None
    if not lora_gguf or not (folder / lora_gguf).is_file():
        raise DistillError(f"init_from: no trained LoRA student at {folder} (a finished `hotmem distill` run's "
                           "folder, or an exported student with its adapter GGUF, is expected)")
    if not (rebuilt / "adapter_config.json").is_file():
        _adapter_from_gguf(folder, folder / lora_gguf, rebuilt)
    return rebuilt


def _adapter_from_gguf(folder: Path, lora_gguf: Path, out: Path) -> None:
    """A PEFT adapter folder from an exported student's adapter GGUF, with the LoRA settings its manifest recorded
    (rank and alpha come from the GGUF). Written whole or not at all."""
    import shutil

    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    manifest_file = folder / "manifest.json"
    recipe = json.loads(manifest_file.read_text()).get("recipe", {}) if manifest_file.is_file() else {}
    defaults = DistillConfig()
    target_modules = recipe.get("target_modules") or list(defaults.target_modules)
    state, alpha = read_lora_gguf(lora_gguf, target_modules)
    rank = next(v.shape[0] for k, v in state.items() if "lora_A" in k)
    present = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in state})
    peft_config = LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=int(alpha) if alpha.is_integer() else alpha,
                             target_modules=present,
                             lora_dropout=recipe.get("lora_dropout", defaults.lora_dropout),
                             base_model_name_or_path=recipe.get("base_model"))
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # f32 as a run saves its adapter; the GGUF held f16
    save_file({k: torch.from_numpy(v).float() for k, v in state.items()}, str(partial / "adapter_model.safetensors"))
    peft_config.save_pretrained(str(partial))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    logger.info("rebuilt the PEFT adapter of %s from %s (rank %d, alpha %g)", folder, lora_gguf.name, rank, alpha)


def _start_from_earlier(config: DistillConfig, model, peft_config, base_source: str, answer_format: str):
    """A second stage: check that the earlier run was trained on the same base and answer format, and put its
    adapter on the model, trainable (with TRL; Unsloth loaded it already). Returns (model, peft_config, earlier)."""
    adapter = _earlier_adapter(config)
    earlier = earlier_stage(Path(config.init_from))
    spec_file = Path(config.init_from) / "student.json"
    spec = json.loads(spec_file.read_text()) if spec_file.is_file() else {}
    if earlier["base_model"] != base_source:
        raise DistillError(f"init_from: {config.init_from} was trained on {earlier['base_model']!r}, this run "
                           f"on {base_source!r}: an adapter only fits the base it was trained on")
    if spec.get("answer_format", "json") != answer_format:
        raise DistillError(f"init_from: {config.init_from} writes its answers as {spec.get('answer_format', 'json')!r}"
                           f", this mixture teaches {answer_format!r}: set the mixture's answer_format to match")
    trained = json.loads((adapter / "adapter_config.json").read_text())
    if (trained.get("r"), trained.get("lora_alpha")) != (config.lora_r, config.lora_alpha):
        # the export writes the adapter GGUF with this run's alpha: a mismatch would rescale every update
        raise DistillError(f"init_from: {config.init_from} has a rank-{trained.get('r')} LoRA with alpha "
                           f"{trained.get('lora_alpha')}, this run asks for rank {config.lora_r}, alpha "
                           f"{config.lora_alpha}: set lora_r and lora_alpha to match")
    if peft_config is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    logger.info("starting from the adapter of %s", config.init_from)
    return model, None, earlier


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


#: beside the checkpoints: which examples they were trained on
DATA_RECORD = "data.json"


def _same_data(checkpoints: Path, dataset, resuming: bool, answer_format: str, base_source: str) -> None:
    """Record the data set's digest (and the answer format its rows teach and the base, which a checkpoint's export
    needs) beside the checkpoints; when resuming, refuse other data."""
    rows = json.dumps(dataset.to_list(), sort_keys=True, ensure_ascii=False).encode()
    digest = hashlib.sha256(rows).hexdigest()[:16]
    record = checkpoints / DATA_RECORD
    if resuming and record.is_file():
        before = json.loads(record.read_text())
        if before.get("sha256") != digest:
            raise DistillError(f"the checkpoints in {checkpoints} were trained on other examples "
                               f"({before.get('examples')} rows, digest {before.get('sha256')}; now {len(dataset)}, "
                               f"{digest}): remove them or choose another out_dir")
    checkpoints.mkdir(parents=True, exist_ok=True)
    write_atomic(record, json.dumps({"sha256": digest, "examples": len(dataset), "answer_format": answer_format,
                                     "base_model": base_source}) + "\n")


def _answers(dataset) -> int:
    """Examples in the data set: a row each, or a chat's answers (`share_prompts`)."""
    if "messages" not in dataset.column_names:
        return len(dataset)
    return sum(m["role"] == "assistant" for chat in dataset["messages"] for m in chat)


#: Qwen2.5-Coder-1.5B-Instruct's GGUF escapes the braces of its tool-call example, a string literal only tool prompts
#: show; undone, the template is Qwen2.5's own, which TRL knows how to mask
_ESCAPED_TOOL_EXAMPLE = ('{{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}}',
                         '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}')


def _check_chat_template(tokenizer) -> None:
    """Chats of several examples need TRL to mask every answer, which it does for templates it knows."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template or ""):
        return
    try:
        get_training_chat_template(tokenizer)
    except ValueError as exc:
        template = tokenizer.chat_template or ""
        if _ESCAPED_TOOL_EXAMPLE[0] in template:
            tokenizer.chat_template = template.replace(*_ESCAPED_TOOL_EXAMPLE)
            try:
                get_training_chat_template(tokenizer)
                logger.info("unescaped the tool-call example of the base's chat template (Qwen2.5's own)")
                return
            except ValueError:
                tokenizer.chat_template = template
        raise DistillError("a mixture with examples_per_prompt > 1 trains on chats, and TRL cannot mask the answers "
                           f"of this base's chat template: {exc} Use examples_per_prompt 1.") from exc


@contextlib.contextmanager
def _no_base_config_warning():
    """PEFT looks for the base's config.json at each save: a base dequantized from a GGUF has none, and warns (when
    offline, that the hub lookup of the GGUF's name failed)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)
        warnings.filterwarnings("ignore", message="Unable to fetch remote file", category=UserWarning)
        yield


def distill(config: DistillConfig, dataset, *, base: tuple | None = None, progress: bool = True,
            sources: dict[str, dict[str, Any]] | None = None, mixture: Mixture | None = None) -> DistillResult:
    """Train the student's LoRA on a chat-format SFT data set (see `sft_dataset`), then export it.

    `base`: an already loaded `(model, tokenizer, source)` to train on with TRL, instead of `config.base_model`.
    `sources` (from `build_examples`) and `mixture` go into the manifest and the model card (`card.md`).
    """
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
    answer_format = mixture.answer_format if mixture else "json"
    earlier = None
    if config.init_from:
        model, peft_config, earlier = _start_from_earlier(config, model, peft_config, base_source, answer_format)
    on_cpu = not cuda_available()
    dtype = training_dtype(config.dtype)
    chats = "messages" in dataset.column_names
    if chats:
        _check_chat_template(tokenizer)
    args = sft_config(config, bf16=dtype == "bfloat16", use_cpu=on_cpu, chats=chats)
    args.disable_tqdm = not progress
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[training_clock()])
    if len(trainer.train_dataset) == 0:  # TRL drops examples whose answer was cut off entirely
        raise DistillError(f"no example fits max_seq_length={config.max_seq_length} with its answer: raise it")
    resume = _last_checkpoint(Path(args.output_dir))
    _same_data(Path(args.output_dir), dataset, bool(resume), answer_format, base_source)
    if resume:
        logger.info("resuming from %s", resume)
    started = time.perf_counter()
    with _no_base_config_warning():
        output = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started
    steps_now = trainer.state.global_step - (int(Path(resume).name.split("-")[-1]) if resume else 0)
    lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    tokens_per_step = sum(lengths) / len(lengths) * config.batch_size * config.gradient_accumulation_steps
    # on resume transformers swaps in a clock restored from the checkpoint: look it up, do not keep a reference
    clock = next(c for c in trainer.callback_handler.callbacks if type(c).__name__ == "TrainingClock").read()
    out = Path(config.out_dir)
    manifest = {
        "backend": backend,
        "base_model": base_source,
        # the base trained on, which differs from the one asked for when the hub is out of reach
        "recipe": {**asdict(config), "target_modules": list(config.target_modules), "base_model": base_source,
                   "requested_base_model": config.base_model},
        "examples": _answers(dataset),
        "rows": len(dataset),
        "dtype": dtype,
        "global_step": trainer.state.global_step,
        "train_loss": output.training_loss,
        "seconds_this_run": round(seconds, 1),
        "seconds_per_step": round(seconds / steps_now, 2) if steps_now else None,
        "tokens_per_second": round(tokens_per_step * steps_now / seconds, 1) if steps_now else None,
        # the whole run, over every session that resumed it
        "seconds_total": clock["seconds"],
        "sessions": clock["sessions"],
        "peak_rss_gb": clock["peak_rss_gb"],
        "loss_history": [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h],
    }
    if earlier is not None:
        manifest["init_from"] = earlier
    if sources is not None:
        manifest["mixture_sources"] = sources
        manifest["mixture"] = mixture.to_dict() if mixture else None
    with _no_base_config_warning():
        export_student(trainer.model, tokenizer, out, base_source, config, answer_format)
    write_manifest(out, manifest)
    if sources is not None:
        write_atomic(out / "card.md", lora_card(manifest))
    return DistillResult(out, manifest)


def soup_students(runs: Sequence[str | Path], config: DistillConfig, *, weights: Sequence[float] | None = None,
                  rank: int | None = None, base: tuple | None = None) -> DistillResult:
    """A model soup of LoRA students: the weighted sum of the runs' weight updates (`weights`, the mean by
    default) as one adapter on their common base, exported like a trained run to `config.out_dir`. PEFT's
    `add_weighted_adapter(combination_type="cat")` stacks the adapters, so the sum is exact and the soup's rank is
    the sum of theirs; with `rank`, its `"svd"` keeps the sum's best approximation of that rank instead (runs of one
    chain differ little, so their sum has little beyond the rank of one; the manifest records what was left out).
    The runs must share an earlier stage (`hotmem.pipeline.mixture.soup_runs`), a base and an answer format.
    `base`: an already loaded `(model, tokenizer, source)`, instead of the runs' base."""
    import time

    from peft import PeftModel

    folders = [Path(run) for run in runs]
    stages = soup_runs(folders)
    weights = [1 / len(folders)] * len(folders) if weights is None else [float(w) for w in weights]
    if len(weights) != len(folders):
        raise DistillError(f"soup: {len(weights)} weights for {len(folders)} runs")
    formats = {json.loads((f / "student.json").read_text()).get("answer_format", "json")
               if (f / "student.json").is_file() else "json" for f in folders}
    bases = {stage["base_model"] for stage in stages}
    if len(formats) != 1 or len(bases) != 1:
        raise DistillError(f"soup: the runs must share a base and an answer format; they have {sorted(bases)} and "
                           f"{sorted(formats)}")
    out = Path(config.out_dir)
    adapters = [_run_adapter(folder, out / f"soup-adapter-{i}") for i, folder in enumerate(folders)]
    started = time.perf_counter()
    if base is None:
        recipe = json.loads((folders[0] / "manifest.json").read_text()).get("recipe", {})
        config = replace(config, base_model=recipe.get("requested_base_model") or config.base_model)
        model, tokenizer, _, base_source = load_base(config, "trl")
    else:
        model, tokenizer, base_source = base
    if {base_source} != bases:
        raise DistillError(f"soup: the runs were trained on {bases.pop()!r}, {base_source!r} was loaded")
    names = [f"run{i}" for i in range(len(folders))]
    with _no_base_config_warning():
        model = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name=names[0])
        for name, adapter in zip(names[1:], adapters[1:]):
            model.load_adapter(str(adapter), adapter_name=name)
    combination = (dict(combination_type="cat") if rank is None else
                   dict(combination_type="svd", svd_rank=rank, svd_full_matrices=False))
    model.add_weighted_adapter(names, weights, "default", **combination)
    left_out = _share_left_out(model, names, weights, "default") if rank else 0.0
    model.set_adapter("default")
    for name in names:
        model.delete_adapter(name)
    rank = model.peft_config["default"].r  # alpha is the rank: PEFT folds each run's scaling into its A
    soup_config = replace(config, lora_r=rank, lora_alpha=rank, init_from=None)
    with _no_base_config_warning():
        export_student(model, tokenizer, out, base_source, soup_config, formats.pop())
    ancestors = stage_ancestors({"soup_of": stages})
    manifest = {
        "backend": "soup",
        "base_model": base_source,
        "recipe": {**asdict(soup_config), "target_modules": sorted(model.peft_config["default"].target_modules),
                   "base_model": base_source},
        "soup_of": stages,
        "soup_weights": weights,
        # the share of the sum's squared norm the rank cut off, summed over the modules (0 for the exact sum)
        "soup_left_out": left_out,
        "examples": None,
        # the training time of every run in it, their shared start once, and the most memory any took
        "seconds_total": training_seconds({"soup_of": stages}),
        "soup_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gb": max([stage.get("peak_rss_gb") or 0 for stage in ancestors] + [peak_rss_gb()]),
    }
    write_manifest(out, manifest)
    write_atomic(out / "card.md", lora_card(manifest))
    return DistillResult(out, manifest)


def _share_left_out(model, runs: Sequence[str], weights: Sequence[float], soup: str) -> float:
    """How much of the weighted sum of the `runs` adapters' updates the `soup` adapter misses,
    ||ΔW - ΔW'||² / ||ΔW||² over every LoRA module together."""
    import torch

    missed = total = 0.0
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "get_delta_weight") and soup in getattr(module, "lora_A", {}):
                exact = sum(w * module.get_delta_weight(run).float() for run, w in zip(runs, weights))
                missed += float((exact - module.get_delta_weight(soup).float()).pow(2).sum())
                total += float(exact.pow(2).sum())
    return round(missed / total, 6) if total else 0.0


def lora_card(manifest: dict[str, Any]) -> str:
    """A LoRA student's `card.md`, from its `manifest.json` alone (its sources, mixture, cost and earlier stages)."""
    model = (f"A LoRA on {manifest.get('base_model')} trained to write hotmem's compact graph for the schema in "
             "its prompt (`prompt: schema`).")
    if manifest.get("soup_of"):
        rank = manifest["recipe"]["lora_r"]
        summed = (f"cut to its best rank-{rank} approximation, which leaves out {manifest['soup_left_out']:.1e} of the "
                  "sum's squared norm" if manifest.get("soup_left_out") else f"rank {rank}")
        training = (f"The weighted sum of the weight updates of {soup_listing(manifest)} (a model soup, {summed}), "
                    f"runs that share an earlier stage; {manifest['seconds_total'] / 3600:.2f} h of training in all.")
        return model_card({}, Mixture(sources=[]), model=model, training=training,
                          earlier=earlier_stages_for_card(manifest))
    recorded = manifest.get("mixture")
    mixture = Mixture(**{**recorded, "name": mixture_name(recorded)}) if recorded else Mixture(sources=[])
    rows = manifest.get("rows", manifest["examples"])
    shared = f" ({manifest['examples']:,} examples in {rows:,} chats)" if rows != manifest["examples"] else ""
    return model_card(
        manifest.get("mixture_sources") or {}, mixture, model=model,
        training=f"{manifest['backend']}{shared}, {manifest['global_step']} steps, "
                 f"{manifest['seconds_total'] / 3600:.2f} h over {manifest['sessions']} session(s), "
                 f"{manifest['tokens_per_second']} tokens/s, "
                 f"peak RSS {manifest['peak_rss_gb']} GB.",
        earlier=earlier_stages_for_card(manifest))


# --------------------------------------------------------------------------- export

OLLAMA_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}<|im_start|>user
{{ .Prompt }}<|im_end|>
<|im_start|>assistant
"""


def ollama_modelfile(model_gguf: str, adapter_gguf: str | None = None, answer_format: str = "json") -> str:
    """`ollama create hotmem-student -f Modelfile`: the merged GGUF, or a base GGUF with the LoRA GGUF on top."""
    adapter = f"ADAPTER {adapter_gguf}\n" if adapter_gguf else ""
    return (
        f"FROM {model_gguf}\n{adapter}"
        f'TEMPLATE """{OLLAMA_TEMPLATE}"""\n'
        f'SYSTEM """{schema_prompt(CONVERSATION_SCHEMA, answer_format=answer_format)}"""\n'
        "PARAMETER temperature 0\nPARAMETER stop <|im_end|>\n"
    )


def _gguf_template(base_source: str, tokenizer, config: DistillConfig) -> str | None:
    """The embedded GGUF whose metadata (architecture, tokenizer, chat template) the merged student can be written
    under: the base itself when it is a GGUF, else the fallback GGUF when its vocabulary is the tokenizer's (the
    Qwen2.5 family shares one; `write_merged_gguf` then checks every tensor's shape)."""
    if base_source in EMBEDDED_MODELS or base_source.endswith(".gguf"):
        return base_source
    import gguf

    try:
        reader = gguf.GGUFReader(str(model_path(config.gguf_fallback)))
    except ModelNotAvailableError:
        return None
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokens))))
    if vocabulary != tokens:
        logger.warning("%s's vocabulary differs from %s's: no GGUF template", base_source, config.gguf_fallback)
        return None
    return config.gguf_fallback


def export_checkpoint(checkpoint: str | Path, out: str | Path, config: DistillConfig | None = None) -> Path:
    """A training checkpoint as a runnable student, to evaluate a long run before it ends: its LoRA as a llama.cpp
    GGUF on the base GGUF it was trained on, and `student.json`. Reads only the adapter (no torch model is built).
    A checkpoint of a hub base has no GGUF to run on until the end-of-run export writes the merged one."""
    from safetensors.torch import load_file

    checkpoint, out, config = Path(checkpoint), Path(out), config or DistillConfig()
    adapter = checkpoint / "adapter_model.safetensors"
    if not adapter.is_file() or not (checkpoint / "adapter_config.json").is_file():
        raise DistillError(f"{checkpoint} is not a LoRA checkpoint (adapter_model.safetensors and "
                           "adapter_config.json expected)")
    adapter_config = json.loads((checkpoint / "adapter_config.json").read_text())
    record_file = checkpoint.parent / DATA_RECORD
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    # runs recorded before the base was: the fallback GGUF, the only embedded base then
    gguf_name = record.get("base_model") if record.get("base_model") in EMBEDDED_MODELS else config.gguf_fallback
    base = adapter_config.get("base_model_name_or_path") or ""
    if not (Path(base).is_dir() and (Path(base) / model_path(gguf_name).name).is_file()):
        raise DistillError(f"{checkpoint} was trained on {base!r}, not on the embedded {gguf_name} "
                           "GGUF: only the end-of-run export writes a GGUF for it")
    out.mkdir(parents=True, exist_ok=True)
    write_lora_gguf(load_file(str(adapter)), out / "adapter.gguf", alpha=adapter_config["lora_alpha"])
    _write_student_spec(out, {"lora_gguf": "adapter.gguf", "base_gguf": gguf_name,
                              "checkpoint": str(checkpoint)}, record.get("answer_format", "json"))
    return out


def _write_student_spec(out: Path, files: dict[str, str], answer_format: str) -> None:
    """`student.json`: a student that reads the schema from its prompt, its files, what it was trained for."""
    spec = {"prompt": "schema", "answer_format": answer_format, **files, "schema": CONVERSATION_SCHEMA.name,
            "schema_fingerprint": CONVERSATION_SCHEMA.fingerprint()}
    write_atomic(out / "student.json", json.dumps(spec, indent=1) + "\n")


def export_student(model, tokenizer, out: Path, base_source: str, config: DistillConfig,
                   answer_format: str = "json") -> dict[str, str]:
    """Adapter, merged weights, GGUFs (LoRA on the base GGUF, and merged + quantized) and an Ollama Modelfile."""
    from peft import get_peft_model_state_dict

    files = {"adapter": "adapter", "merged": "merged", "lora_gguf": "adapter.gguf"}  # relative to `out`
    model.save_pretrained(out / files["adapter"])
    tokenizer.save_pretrained(out / files["adapter"])
    write_lora_gguf(get_peft_model_state_dict(model), out / files["lora_gguf"], alpha=config.lora_alpha)
    merged = model.merge_and_unload()
    merged.save_pretrained(out / files["merged"])
    tokenizer.save_pretrained(out / files["merged"])
    template = _gguf_template(base_source, tokenizer, config)
    if template is not None:
        files["base_gguf"] = template
        files["merged_gguf"] = "student.gguf"
        write_merged_gguf(merged.state_dict(), model_path(template), out / files["merged_gguf"],
                          name=f"hotmem student on {base_source}")
        (out / "Modelfile").write_text(ollama_modelfile("./" + files["merged_gguf"], answer_format=answer_format))
        files["modelfile"] = "Modelfile"
    else:  # the training is not lost: the adapter and merged weights are saved; `Student` says how to convert
        logger.warning("no embedded GGUF has %s's architecture and vocabulary: convert %s with llama.cpp's "
                       "convert_hf_to_gguf.py to run it on llama.cpp", base_source, out / files["merged"])
    _write_student_spec(out, files, answer_format)
    return files
