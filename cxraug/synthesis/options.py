"""augment's options in one object: what ``cxraug augment`` and :func:`.augment.augment` take,
checked by :meth:`AugmentOptions.validate` before anything slow (the model load) starts."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.labels import VIEWS
from ..errors import CxrError
from .png import PNG_DEFLATE, PNG_DEFLATES, require_isal
from .sinks import SINKS
from .targets import plan_counts

PathArg = str | os.PathLike[str]


def parse_shard(shard: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 1 <= i <= n."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not match:
        raise CxrError(f"--shard {shard!r}: expected i/n, e.g. 1/4 for the first of four machines")
    i, n = int(match.group(1)), int(match.group(2))
    if not 1 <= i <= n:
        raise CxrError(f"--shard {shard!r}: i must be between 1 and n (e.g. 1/4 .. 4/4)")
    return i, n


@dataclass(frozen=True)
class AugmentOptions:
    """Every option of an augment run, as :func:`.augment.augment` takes them (its docstring and
    the CLI's help say what each does)."""

    model: PathArg | None  # None: the shipped default generator
    out: PathArg
    real_csv: PathArg | None = None
    data: PathArg | None = None
    split_list: PathArg | None = None
    real_root: PathArg | None = None
    target_per_class: int | None = None
    per_class: int | None = None
    classes: Sequence[str] | None = None
    labels: Sequence[str] | None = None
    multi_label: str = "drop"
    output_size: int | None = None
    view: str | None = None  # None: the generator's training view
    layout: str = "flat"
    device: str = "auto"
    seed: int = 0
    batch_size: int = 64
    workers: int | None = None  # None: min(4, cores)
    shard: str = "1/1"
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    threads: int | None = None
    spinning: bool = False
    privacy_filter: bool = True
    privacy_reference: PathArg | None = None
    privacy_percentile: float | None = None
    judge: PathArg | None = None
    judge_real_share: float = 0.9
    max_tries: int = 10
    png_deflate: str = PNG_DEFLATE

    def validate(self) -> None:
        """Raise :class:`CxrError` for an option that is wrong on its own or with another, before
        the model is loaded. (The filters' options are checked when the filters open.)"""
        if self.model is None:
            from ..inference.generator import DEFAULT_MODEL

            if not DEFAULT_MODEL.is_file():
                raise CxrError(f"the default generator {DEFAULT_MODEL} is missing from this "
                               "install; reinstall cxraug or give --model MODEL.onnx")
        if self.layout not in SINKS:
            raise CxrError(f"--layout {self.layout!r}: expected {' or '.join(SINKS)}")
        if self.batch_size < 1:
            raise CxrError(f"--batch-size {self.batch_size}: give a positive number")
        if self.workers is not None and self.workers < 1:
            raise CxrError(f"--workers {self.workers}: give a positive number")
        if not 0 <= int(self.seed) < 2**63:
            raise CxrError(f"--seed {self.seed}: give a whole number in 0..2**63-1")
        if self.output_size is not None and not 8 <= self.output_size <= 8192:
            raise CxrError(f"--output-size {self.output_size}: give a side in pixels between 8 "
                           "and 8192")
        if self.png_deflate not in PNG_DEFLATES:
            raise CxrError(f"--png-deflate {self.png_deflate!r}: choose "
                           f"{' or '.join(PNG_DEFLATES)}")
        if self.png_deflate == "isal":
            require_isal()
        if self.real_csv is not None and self.data is not None:
            raise CxrError("give --real-csv or --data (a cache), not both")
        if self.split_list is not None and self.real_csv is None:
            raise CxrError("--split-list filters the rows of --real-csv; give --real-csv too (a "
                           "cache already has its training split)")
        if self.real_root is not None and not self.has_real_data:
            raise CxrError("--real-root locates the real images of --real-csv or --data; give "
                           "one")
        if self.view is not None and self.view.strip().upper() not in ("", *VIEWS):
            raise CxrError(f"--view {self.view!r}: expected one of {', '.join(VIEWS)} (or '' for "
                           "none)")
        parse_shard(self.shard)
        # the count options' errors, before the (slow) model load: plan_counts raises them
        plan_counts({} if self.has_real_data else None, [], self.target_per_class,
                    self.per_class)

    @property
    def has_real_data(self) -> bool:
        """Whether real counts come from --real-csv or --data."""
        return self.real_csv is not None or self.data is not None

    @property
    def model_path(self) -> Path:
        """The ONNX generator: --model, or the shipped default."""
        from ..inference.generator import DEFAULT_MODEL

        return Path(self.model or DEFAULT_MODEL)

    @property
    def shard_parts(self) -> tuple[int, int]:
        """``shard`` as (i, n)."""
        return parse_shard(self.shard)

    @property
    def writer_threads(self) -> int:
        """PNG writer threads: --workers, or up to 4 cores."""
        return self.workers or min(4, os.cpu_count() or 1)
