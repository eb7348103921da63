"""The network families a recipe can name, registered in one place (NO TensorFlow here).

Each entry says what the family can do (conditional or not, a class head in D, its own options)
and where its builder pair lives, as ``module:function`` strings imported only when a network is
built, so recipes are validated without TensorFlow. Adding a network: write a module under
``cxraug/models/`` with ``build_generator(cfg, num_classes)`` and
``build_discriminator(cfg, num_classes, class_head)`` following docs/ARCHITECTURE.md ("Models"),
then one :func:`register` line below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import CxrError


@dataclass(frozen=True)
class Architecture:
    """A network family: its builders and capabilities."""

    name: str
    generator: str  # "module:function", called as f(cfg, num_classes)
    discriminator: str  # "module:function", called as f(cfg, num_classes, class_head)
    conditional: bool = True  # takes a label; False: z only (label mode "none")
    class_head: bool = False  # D can add class logits (train.aux_class_weight)
    cxraug_options: bool = False  # upsample / minibatch_std / spectral_norm apply

    def builder(self, which: str) -> Callable[..., Any]:
        module, _, function = getattr(self, which).partition(":")
        return getattr(importlib.import_module(module), function)


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add a family (a name may be registered once)."""
    if arch.name in ARCHITECTURES:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    ARCHITECTURES[arch.name] = arch
    return arch


def architecture(name: str) -> Architecture:
    """The registered family ``name``; a one-line error listing the others otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise CxrError(f"model.arch must be one of {', '.join(ARCHITECTURES)}, got {name!r}"
                       ) from None


register(Architecture("paper", "cxraug.models.paper:build_paper_generator",
                      "cxraug.models.paper:build_paper_discriminator"))
register(Architecture("paper-dcgan", "cxraug.models.paper:build_dcgan_generator",
                      "cxraug.models.paper:build_dcgan_discriminator", conditional=False))
register(Architecture("cxraug", "cxraug.models.cxraug_net:build_cxraug_generator",
                      "cxraug.models.cxraug_net:build_cxraug_discriminator", class_head=True,
                      cxraug_options=True))
