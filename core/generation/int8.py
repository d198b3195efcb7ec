"""int8-dynamic: Linear weights stored as int8, run with PyTorch's dynamic int8 kernels.

A folder of this format (registry format ``hf-int8``) is a Hugging Face folder (config,
tokenizer, generation config) whose weights file, ``model-int8.safetensors``, holds each
quantized Linear layer as ``<layer>.weight.int8`` (int8, out x in), ``<layer>.weight.scale``
(float32, one per output channel: symmetric, ``max|w| / 127``) and ``<layer>.input.smooth``
(float32, one per input channel), and every other tensor (embeddings, norms, biases, the
output head) as the source stored it. ``quantization.json`` says what was quantized. The file
is named so that ``from_pretrained`` refuses the folder instead of loading it with random
weights.

PyTorch's dynamic kernel quantizes its whole input with one scale (7 bits on x86). Language
models' activations have outliers: a few channels, and a few tokens (the first one above
all), far larger than the rest, so one scale crushes every other value (SmolLM2-135M, 8
held-out documents: +1.4 nats of loss, 44% of next tokens as in float32; with what follows,
+0.02 and 91%). Two exact rewrites of ``W @ x`` keep the range:

- smoothing (SmoothQuant, Xiao et al. 2023): input channel ``j`` is divided by
  ``s_j = max|x_j| ** 0.5 / max|W_:,j| ** 0.5`` and the weight's column multiplied by it,
  moving half of an outlier channel's range into the weights; ``max|x_j|`` comes from one
  forward pass over a short built-in text (:data:`CALIBRATION`);
- per-token scaling: each token is divided by its own largest value before the kernel and
  multiplied back after, so the kernel's one scale fits every token.

:func:`load_int8` builds the model in float32 and swaps each of those layers for an
:class:`Int8Linear` holding exactly the stored int8 values (fbgemm's int8 matmuls). Those
kernels exist on CPU only: on a GPU, serve a bf16 version instead.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model-int8.safetensors"
RECORD = "quantization.json"
# The output head stays float: many models tie it to the input embeddings (SmolLM2 does), and
# it is where int8 error shows most (GPTQ and AWQ keep it too).
KEEP_FLOAT = ("lm_head",)
ALPHA = 0.5  # SmoothQuant's migration strength: half of the outliers' range into the weights
# Which input channels carry outliers is a property of the model more than of the text, so a
# short mixed text finds them; the scales themselves are computed per token at run time.
CALIBRATION = (
    "The quick brown fox jumps over the lazy dog. Customer support answers questions about "
    "orders, shipping and returns within two business days.\n"
    "Q: How warm should a greenhouse stay in winter?\nA: Between 4 and 10 degrees at night.\n"
    "def total(prices):\n    return sum(p * 1.2 for p in prices)\n"
    "In 1969 Apollo 11 landed on the Moon, and 600 million people watched it live."
)
_SUFFIXES = (".weight.int8", ".weight.scale", ".input.smooth")
_DEPRECATED = r"torch\.quantize_per_tensor, torch\.quantize_per_channel"


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel (row): ``(q, scale)`` with ``q * scale ~ weight``,
    ``|q| <= 127`` and an error of at most ``scale / 2`` per element."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # an all-zero row keeps a usable scale
    q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale[:, None]


def quantizable(model: torch.nn.Module) -> list[str]:
    """The Linear layers stored int8: every one but the output head."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] not in KEEP_FLOAT
    ]


@torch.inference_mode()
def input_maxima(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The largest magnitude each input channel of each quantizable layer sees on ``ids``."""
    found: dict[str, torch.Tensor] = {}

    def record(name: str) -> Any:
        def hook(_module: torch.nn.Module, inputs: tuple, _output: Any) -> None:
            x = inputs[0].detach().float()
            found[name] = x.abs().reshape(-1, x.shape[-1]).amax(dim=0)

        return hook

    hooks = [model.get_submodule(n).register_forward_hook(record(n)) for n in quantizable(model)]
    try:
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    return found


def smoothing(input_max: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors ``max|x_j|^a / max|W_:,j|^(1-a)``."""
    w_max = weight.detach().float().abs().amax(dim=0).clamp(min=1e-5)
    return (input_max.clamp(min=1e-5) ** ALPHA / w_max ** (1 - ALPHA)).clamp(min=1e-5)


def save_int8(
    model: torch.nn.Module, folder: Path, rest_dtype: torch.dtype, source: str, ids: torch.Tensor
) -> dict[str, Any]:
    """Write ``model``'s weights in this format, smoothing calibrated on token ids ``ids``,
    and the record naming ``source`` into ``folder`` (config and tokenizer are the caller's);
    the other tensors in ``rest_dtype``. Returns the record."""
    modules = quantizable(model)
    maxima = input_maxima(model, ids)
    tensors: dict[str, torch.Tensor] = {}
    for name in modules:
        weight = model.get_submodule(name).weight
        smooth = smoothing(maxima[name], weight)
        q, scale = quantize_weight(weight.detach().float() * smooth[None, :])
        tensors |= {f"{name}{s}": t for s, t in zip(_SUFFIXES, (q, scale, smooth), strict=True)}
    quantized = {f"{name}.weight" for name in modules}
    kept: dict[int, str] = {}
    tied: dict[str, str] = {}
    for key, t in model.state_dict().items():
        if key in quantized:
            continue
        if t.data_ptr() in kept:  # a tied weight (the head on the embeddings): stored once
            tied[key] = kept[t.data_ptr()]
            continue
        kept[t.data_ptr()] = key
        tensors[key] = t.detach().to(rest_dtype).contiguous()
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    record = {
        "method": "int8-dynamic",
        "source": source,
        "scheme": "symmetric int8 per output channel (scale max|w| / 127) after smoothing "
        f"(alpha {ALPHA}); activations int8 per token at run time",
        "calibration_tokens": int(ids.numel()),
        "modules": modules,
        "tied": tied,
        "rest_dtype": str(rest_dtype).removeprefix("torch."),
    }
    (folder / RECORD).write_text(json.dumps(record, indent=1))
    return record


def load_int8(folder: Path) -> torch.nn.Module:
    """The model of an int8-dynamic folder, ready for CPU inference (eval mode, float32)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    record = json.loads((folder / RECORD).read_text())
    tensors = load_file(str(folder / WEIGHTS))
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).float()
    if (folder / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    rest = {k: v for k, v in tensors.items() if not k.endswith(_SUFFIXES)}
    for key, kept in record["tied"].items():
        rest[key] = rest[kept]  # tied in the built model too: both names fill one tensor
    missing, unexpected = model.load_state_dict(rest, strict=False)
    expected = {f"{name}.weight" for name in record["modules"]}
    if set(missing) != expected or unexpected:
        raise ValueError(
            f"{folder}: weights do not match its config (missing {sorted(set(missing) - expected)}"
            f", unexpected {sorted(unexpected)}): the folder is damaged; quantize again"
        )
    for name in record["modules"]:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        q, scale, smooth = (tensors[f"{name}{s}"] for s in _SUFFIXES)
        setattr(owner, child, Int8Linear(q, scale, smooth, getattr(owner, child).bias))
    return model.eval()


class Int8Linear(torch.nn.Module):
    """A Linear layer run as int8 matmuls: ``W @ x`` as ``r * (W s) @ (x / s / r)`` with the
    smoothing factors ``s`` and each token's largest value ``r``; ``inner`` holds ``W s``."""

    def __init__(
        self,
        q: torch.Tensor,
        scale: torch.Tensor,
        smooth: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> None:
        from torch.ao.nn.quantized import dynamic as nnqd

        super().__init__()
        out_features, in_features = q.shape
        zeros = torch.zeros(out_features, dtype=torch.long)
        with warnings.catch_warnings():  # deprecated for torchao, which we do not install
            warnings.filterwarnings("ignore", message=_DEPRECATED)
            # The dequantized weight requantized with its own scales is ``q`` again (a test
            # checks): the kernel multiplies exactly the stored values.
            weight = torch.quantize_per_channel(
                dequantize(q, scale), scale.double(), zeros, 0, torch.qint8
            )
        self.inner = nnqd.Linear(in_features, out_features, bias_=False, dtype=torch.qint8)
        self.inner.set_weight_bias(weight, None)
        self.register_buffer("inv_smooth", 1 / smooth.float())
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.inv_smooth
        r = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)  # 3-5x faster than a norm
        y = self.inner(x / r)
        return y * r if self.bias is None else torch.addcmul(self.bias, y, r)
