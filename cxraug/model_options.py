"""Each network family's own ``[model]`` options, one dataclass per family (NO framework here).

A family registered in :mod:`cxraug.architectures` names its options class (``options=``); the
recipe keeps the common keys (arch, sizes, label mode) in :class:`cxraug.recipe.ModelConfig` and
the family's in ``ModelConfig.options``, and its builders receive them. Files keep the flat
``[model]`` table they always had: every family's keys side by side (how recipes, run folders'
recipe.toml and exported models' metadata already hold them), mapped into the family's class on
load (:func:`cxraug.recipe.recipe_from_dict`). Another family's key is read, checked and then
ignored, as before, unless its field says otherwise (``elsewhere``: a switch whose non-default
value would be silently lost is an error).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

#: Images per group of the discriminator's minibatch standard deviation (ProGAN, StyleGAN: 4).
MINIBATCH_STD_GROUP = 4
UPSAMPLE = ("nearest", "bilinear")

#: A validation's failure: raises with the recipe's name in front of the message.
Fail = Callable[[str], NoReturn]


def doc(text: str, default: Any = dataclasses.MISSING, *, elsewhere: str | None = None,
        **kw: Any) -> Any:
    """A field with its documentation (``cxraug recipes`` lists it). ``elsewhere`` (options
    only): the error for a non-default value under a family without this option, formatted
    with ``value`` and ``owners`` (the archs that have it)."""
    metadata: dict[str, Any] = {"doc": text}
    if elsewhere is not None:
        metadata["elsewhere"] = elsewhere
    if default is dataclasses.MISSING:
        return field(metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


@dataclass
class ModelOptions:
    """A family without options of its own; the base of every family's options."""

    def check(self, fail: Fail, train: Any = None) -> None:
        """This family's ranges; ``train`` (the ``[train]`` table, when a whole recipe is
        checked) for rules that involve both tables."""

    def _at_least_one(self, fail: Fail, *keys: str) -> None:
        for key in keys:
            if getattr(self, key) < 1:
                fail(f"model.{key} must be at least 1, got {getattr(self, key)}")


@dataclass
class PaperOptions(ModelOptions):
    """The paper's networks (``paper``, ``paper-dcgan``)."""

    filters: int = doc("paper family: filters of every (transposed) convolution.", 128)
    fast_conv_grad: bool = doc(
        "paper family: compute the big final convolution's gradient by a fast identical path.", True
    )

    def check(self, fail: Fail, train: Any = None) -> None:
        self._at_least_one(fail, "filters")


@dataclass
class CxraugOptions(ModelOptions):
    """cxraug's own networks (``cxraug``)."""

    g_channels: int = doc("cxraug: generator channels at the lowest resolution.", 256)
    g_min_channels: int = doc(
        "cxraug: the fewest channels a generator block may have (the widths halve per doubling "
        "down to this): the last blocks draw the fine detail, ribs and edges.", 16)
    d_channels: int = doc("cxraug: discriminator channels at the highest resolution.", 32)
    spectral_norm: bool = doc("cxraug: spectral normalization in the discriminator.", True)
    upsample: str = doc(
        "cxraug: the generator's x2 upsampling, nearest (copies pixels) | bilinear (interpolates; "
        "no fixed 2-pixel pattern in every image).", "nearest",
        elsewhere='model.upsample = {value!r} needs model.arch = "{owners}" (the paper\'s '
                  "generator upsamples by transposed convolutions)")
    minibatch_std: bool = doc(
        "cxraug: a minibatch standard-deviation channel before D's last convolution (ProGAN), so "
        "D sees when a batch lacks the variety of real images.", False,
        elsewhere='model.minibatch_std needs model.arch = "{owners}"; set it to false')

    def check(self, fail: Fail, train: Any = None) -> None:
        self._at_least_one(fail, "g_channels", "g_min_channels", "d_channels")
        if self.upsample not in UPSAMPLE:
            fail(f"model.upsample must be one of {', '.join(UPSAMPLE)}, got {self.upsample!r}")
        if train is not None and self.minibatch_std and train.batch_size % (
                2 * MINIBATCH_STD_GROUP if train.d_half_batches else MINIBATCH_STD_GROUP):
            fail(f"model.minibatch_std compares groups of {MINIBATCH_STD_GROUP} images: "
                 f"train.batch_size must be a multiple of {MINIBATCH_STD_GROUP}, "
                 f"got {train.batch_size}")
