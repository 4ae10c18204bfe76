"""Reference architectures for graphprune, written in plain PyTorch.

A model whose width differs from the well-known one says so in its name (``resnet50_w025``:
ResNet-50 at a quarter of the width).

Each family lives in its own module and exposes a factory ``build_<name>(**overrides)`` returning
``(model, example_inputs)``: the model in eval mode with a fixed-seed init (BatchNorm running stats
calibrated on random data, norm affines perturbed so channels differ) and a tuple of small example
input tensors sized for fast CPU tests. :data:`MODELS` maps the public names to those factories and
:func:`build` looks one up by name.
"""

from __future__ import annotations

from torch import nn

from ._common import ExampleInputs, ModelFactory
from .bert import build_bert_tiny
from .densenet import build_densenet
from .inception import build_inception
from .llama import build_llama_tiny
from .mobilenet import build_mobilenet_v2
from .resnet import build_resnet18, build_resnet50
from .shufflenet import build_shufflenet
from .unet import build_unet
from .vit import build_vit_tiny

__all__ = ["MODELS", "RENAMED", "ExampleInputs", "ModelFactory", "build", "unknown_model_message"]

MODELS: dict[str, ModelFactory] = {
    "resnet18_w050": build_resnet18,
    "resnet50_w025": build_resnet50,
    "mobilenet_v2": build_mobilenet_v2,
    "densenet": build_densenet,
    "inception": build_inception,
    "shufflenet": build_shufflenet,
    "unet": build_unet,
    "vit_tiny": build_vit_tiny,
    "llama_tiny": build_llama_tiny,
    "bert_tiny": build_bert_tiny,
}

# Names that a reader would take for the well-known full-size model, and the names that say the width.
RENAMED: dict[str, str] = {"resnet18": "resnet18_w050", "resnet50": "resnet50_w025"}


def unknown_model_message(name: str) -> str:
    """``unknown model`` with the renamed name or the list of built-in names."""
    if name in RENAMED:
        return (f"built-in model {name!r} is now {RENAMED[name]!r} (it is not the full-size {name}: "
                f"the width multiplier is in the name)")
    return f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}"


def build(name: str, **overrides: object) -> tuple[nn.Module, ExampleInputs]:
    """Build the registered model ``name``; ``overrides`` go to its factory (e.g. ``width=1.0``).

    Raises ``KeyError`` naming the available models when ``name`` is not registered.
    """
    try:
        factory = MODELS[name]
    except KeyError:
        raise KeyError(unknown_model_message(name)) from None
    return factory(**overrides)
