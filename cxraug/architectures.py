"""The network families a recipe can name, registered in one place (NO TensorFlow here).

Each entry says what the family can do (conditional or not, a class head in D), which dataclass
holds its own options (:mod:`cxraug.model_options`: their fields, defaults, docs and checks) and
where its builder pair lives, as ``module:function`` strings imported only when a network is
built, so recipes are validated without TensorFlow. Adding a network: write a module under
``cxraug/models/`` with ``build_generator(cfg, options, num_classes)`` and
``build_discriminator(cfg, options, num_classes, class_head)`` following docs/ARCHITECTURE.md
("Models"), its options dataclass if it has options, then one :func:`register` line below.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import CxrError
from .model_options import CxraugOptions, ModelOptions, PaperOptions


@dataclass(frozen=True)
class Architecture:
    """A network family: its builders and capabilities."""

    name: str
    generator: str  # "module:function", called as f(cfg, options, num_classes)
    discriminator: str  # "module:function", called as f(cfg, options, num_classes, class_head)
    conditional: bool = True  # takes a label; False: z only (label mode "none")
    class_head: bool = False  # D can add class logits (train.aux_class_weight)
    options: type[ModelOptions] = ModelOptions  # its own [model] keys (cxraug/model_options.py)

    def builder(self, which: str) -> Callable[..., Any]:
        module, _, function = getattr(self, which).partition(":")
        built: Callable[..., Any] = getattr(importlib.import_module(module), function)
        return built


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add a family (a name may be registered once)."""
    if arch.name in ARCHITECTURES:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    # files hold every family's keys in one flat [model] table: a name means one option
    mine = {f.name for f in dataclasses.fields(arch.options)}
    for other in option_classes():
        shared = mine & {f.name for f in dataclasses.fields(other)}
        if other is not arch.options and shared:
            raise ValueError(f"architecture {arch.name!r}: option(s) {sorted(shared)} already "
                             f"belong to {other.__name__}; give them names of their own")
    ARCHITECTURES[arch.name] = arch
    return arch


def option_classes() -> list[type[ModelOptions]]:
    """Every registered family's options class, once each, in registration order (the order
    of their keys in a ``[model]`` table)."""
    return list(dict.fromkeys(arch.options for arch in ARCHITECTURES.values()))


def owners(options: type[ModelOptions]) -> list[str]:
    """The families whose options ``options`` are."""
    return [arch.name for arch in ARCHITECTURES.values() if arch.options is options]


def architecture(name: str) -> Architecture:
    """The registered family ``name``; a one-line error listing the others otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise CxrError(f"model.arch must be one of {', '.join(ARCHITECTURES)}, got {name!r}"
                       ) from None


register(Architecture("paper", "cxraug.models.paper:build_paper_generator",
                      "cxraug.models.paper:build_paper_discriminator", options=PaperOptions))
register(Architecture("paper-dcgan", "cxraug.models.paper:build_dcgan_generator",
                      "cxraug.models.paper:build_dcgan_discriminator", conditional=False,
                      options=PaperOptions))
register(Architecture("cxraug", "cxraug.models.cxraug_net:build_cxraug_generator",
                      "cxraug.models.cxraug_net:build_cxraug_discriminator", class_head=True,
                      options=CxraugOptions))
