"""GGUF files for llama.cpp: a PEFT LoRA as an adapter GGUF, merged weights under a base GGUF's metadata, and a
LoRA GGUF folded into its base, each quantized by llama.cpp's own quantizer. gguf and numpy only (no torch needed
to fold a shipped adapter where it runs). llama.cpp's own log goes to hotmem's logger at DEBUG.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hotmem.errors import DistillError

__all__ = ["MERGED_QUANTIZATION", "merge_lora_gguf", "read_lora_gguf", "write_lora_gguf", "write_merged_gguf"]

logger = logging.getLogger(__name__)


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


def read_lora_gguf(path: Path, target_modules: Sequence[str]) -> tuple[dict[str, Any], float]:
    """A llama.cpp adapter GGUF back as a PEFT LoRA state dict (numpy arrays under PEFT's saved names) and its alpha:
    the inverse of `write_lora_gguf`, so a shipped student (adapter GGUF only) can be trained on.

    `target_modules` names the Hugging Face modules a llama.cpp tensor maps back to (several Hugging Face spellings
    map to one llama.cpp name).
    """
    import re

    import gguf

    reader = gguf.GGUFReader(str(path))
    if "adapter.lora.alpha" not in reader.fields:
        raise DistillError(f"{path} is not a LoRA adapter GGUF (no adapter.lora.alpha)")
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    architecture = str(reader.fields["general.architecture"].contents())
    pattern = re.compile(r"^blk\.(\d+)\.(.+)\.weight\.lora_([ab])$")
    found = [(m, t) for t in reader.tensors if (m := pattern.match(t.name))]
    if not found:
        raise DistillError(f"{path}: no LoRA tensors (blk.N.<name>.weight.lora_a/b)")
    names = _gguf_names(architecture, max(int(m.group(1)) for m, _ in found) + 1)
    back = {}  # llama.cpp name -> Hugging Face module, among the targets
    for hf_name in names.mapping:
        if hf_name.startswith("model.layers.") and hf_name.rsplit(".", 1)[-1] in target_modules:
            back.setdefault(names.get_name(hf_name), hf_name)
    state = {}
    for match, tensor in found:
        hf_name = back.get(f"blk.{match.group(1)}.{match.group(2)}")
        if hf_name is None:
            raise DistillError(f"{path}: {tensor.name} maps to none of the target modules {list(target_modules)}")
        # GGUFReader gives numpy order, the (r, in) / (out, r) layout write_lora_gguf was handed
        state[f"base_model.model.{hf_name}.lora_{match.group(3).upper()}.weight"] = tensor.data.copy()
    return state, alpha


#: llama.cpp quantization of the merged student. Q8_0: at 4 or 5 bits the rounding of W + alpha/r * B A swamps a
#: LoRA's small updates. A schema-reading student checkpoint answered 7 of 8 gold dev turns as its LoRA applied at run
#: time does when merged at Q8_0, 0 of 8 at Q5_0, Q4_K_M or Q4_0 (names with stray periods, four-item relations);
#: and Q8_0 ran faster than all three on 2 cores (median 1.89 s a turn, Q4_0 2.18 s).
MERGED_QUANTIZATION = "Q8_0"


def write_merged_gguf(state_dict: dict[str, Any], base_gguf: Path, path: Path,
                      quantization: str | None = MERGED_QUANTIZATION, name: str | None = None) -> Path:
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
    return _write_like_base(reader, weights, Path(base_gguf).name, Path(path), quantization, name=name)


def merge_lora_gguf(base_gguf: Path, lora_gguf: Path, path: Path,
                    quantization: str | None = MERGED_QUANTIZATION, progress: bool = False) -> Path:
    """The base GGUF with a LoRA GGUF folded into its weights (W + alpha/r * B A), from the two GGUFs alone: gguf and
    numpy, no torch. A student ships as its small adapter, and this builds the fast single GGUF where it runs."""
    import gguf
    import numpy as np
    from tqdm.auto import tqdm

    base, lora = gguf.GGUFReader(str(base_gguf)), gguf.GGUFReader(str(lora_gguf))
    if "adapter.lora.alpha" not in lora.fields:
        raise DistillError(f"{lora_gguf} is not a llama.cpp LoRA adapter (no adapter.lora.alpha)")
    alpha = float(lora.fields["adapter.lora.alpha"].contents())
    pairs = {t.name: t for t in lora.tensors}
    weights = {}
    for info in tqdm(base.tensors, desc="merging", unit="tensor", disable=not progress, leave=False):
        weight = gguf.quants.dequantize(info.data, info.tensor_type).astype(np.float32)
        a, b = pairs.pop(f"{info.name}.lora_a", None), pairs.pop(f"{info.name}.lora_b", None)
        if a is not None and b is not None:
            a, b = np.asarray(a.data, np.float32), np.asarray(b.data, np.float32)  # (r, in), (out, r)
            weight = weight + (alpha / a.shape[0]) * (b @ a)
        weights[info.name] = weight
    if pairs:
        raise DistillError(f"{lora_gguf.name} does not fit {base_gguf.name}: no base tensor for {sorted(pairs)[:3]}")
    return _write_like_base(base, weights, Path(base_gguf).name, Path(path), quantization)


def quiet_native_log() -> None:
    """llama.cpp logs through llama-cpp-python's logger, which prints everything until a `Llama(verbose=False)` is
    made (the quantizer alone prints ~300 lines): keep it at ERROR unless hotmem logs at DEBUG (`hotmem -v`)."""
    native = logging.getLogger("llama-cpp-python")
    native.setLevel(logging.DEBUG if logger.isEnabledFor(logging.DEBUG) else logging.ERROR)


@contextlib.contextmanager
def _native_stderr_to_log():
    """The quantizer also writes to the C stderr directly (per-tensor notes): send it to hotmem's log at DEBUG."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines():
                logger.debug("llama.cpp: %s", line)


def _write_like_base(reader, weights: dict[str, Any], base_name: str, path: Path, quantization: str | None,
                     name: str | None = None) -> Path:
    """`weights` (llama.cpp names, numpy arrays) under the metadata of the GGUF `reader` read (`general.name` set to
    `name` when given), quantized. Atomic."""
    import gguf
    import numpy as np

    architecture = str(reader.fields["general.architecture"].contents())
    unique = uuid.uuid4().hex[:8]  # two processes building the same file do not share temporaries
    f16 = path.with_name(f"{path.name}.{unique}.f16.tmp")
    writer = gguf.GGUFWriter(str(f16), architecture)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF.") or field.name == "general.file_type":
            continue
        if field.name == "general.name" and name:
            writer.add_name(name)
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

    quiet_native_log()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quantization}")
    params.nthread = os.cpu_count() or 1
    partial = path.with_name(f"{path.name}.{unique}.tmp")
    try:
        with _native_stderr_to_log():
            status = llama_cpp.llama_model_quantize(str(f16).encode(), str(partial).encode(), ctypes.byref(params))
        if status != 0:
            raise DistillError(f"llama.cpp could not quantize {f16} to {quantization}")
        os.replace(partial, path)
    finally:
        f16.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    return path


