"""What augment makes: the targets (classes or label combinations) a model can draw, checked
against its classes, and how many images of each."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import CxrError
from ..inference.generator import OnnxGenerator
from .naming import MAX_CODES, MAX_PER_TARGET, MULTI_HOT_KEY, safe_folder

#: (Finding Labels text, naming code, RNG key, class indices) of a requested target.
RawTarget = tuple[str, int, int, tuple[int, ...]]


@dataclass(frozen=True)
class Target:
    """One thing to generate: a class or a label combination, and how many images of it."""

    name: str  # Finding Labels text
    code: int  # naming code (augment's module docstring)
    key: int  # RNG key
    classes: tuple[int, ...]  # class indices of the label (one for a class)
    folder: str  # folder name in the class-folders layout
    real: int | None  # real images counted (None without real data)
    count: int  # images the whole job generates (all shards)


def resolve_targets(gen: OnnxGenerator, classes: Sequence[str] | None,
                    labels: Sequence[str] | None) -> list[RawTarget]:
    """(name, code, rng key, class indices) for every requested target, validated."""
    names = gen.class_names
    hint_all = f"the model's classes: {', '.join(names)}"

    def check(name: str, flag: str) -> int:
        if name in names:
            return names.index(name)
        close = difflib.get_close_matches(name, names, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise CxrError(f"{flag} {name!r}: {gen.path} has no such class{guess}; {hint_all}")

    if gen.label_mode == "none":
        if labels:
            raise CxrError(f"--label: {gen.path} is unconditional (label_mode none); it makes "
                           "images of its one class only")
        if len(names) != 1:
            raise CxrError(f"{gen.path} is unconditional (label_mode none) but its metadata lists "
                           f"{len(names)} classes, so its images have no label; use a conditional "
                           "generator")
        if classes and list(classes) != names:
            check(next(c for c in classes if c != names[0]), "--classes")
        return [(names[0], 0, 0, (0,))]
    if labels and gen.label_mode != "multi-hot":
        raise CxrError(f"--label combinations need a multi-hot model; {gen.path} has label_mode "
                       f"{gen.label_mode!r} (one class per image): use --classes instead")
    picked = list(dict.fromkeys(c.strip() for c in classes if c.strip())) if classes else []
    if not picked and not labels:
        picked = list(names)
    out: list[RawTarget] = []
    for name in picked:
        c = check(name, "--classes")
        key = c if gen.label_mode == "index" else MULTI_HOT_KEY | (1 << c)
        out.append((name, c, key, (c,)))
    combos: list[tuple[int, ...]] = []
    for raw in labels or []:
        parts = [p.strip() for p in str(raw).split("|") if p.strip()]
        if not parts:
            raise CxrError(f"--label {raw!r}: empty; write e.g. 'Effusion|Infiltration'")
        if len(set(parts)) != len(parts):
            raise CxrError(f"--label {raw!r} names a class twice")
        idx = tuple(sorted((check(p, "--label") for p in parts), key=lambda j: names[j]))
        if len(idx) > 1 and "No Finding" in parts:
            raise CxrError(f"--label {raw!r}: 'No Finding' never combines with a pathology")
        if len(idx) == 1:
            if idx[0] not in [t[1] for t in out]:
                out.append((names[idx[0]], idx[0], MULTI_HOT_KEY | (1 << idx[0]), idx))
            continue
        if idx in combos:
            continue
        combos.append(idx)
        bitmask = sum(1 << j for j in idx)
        out.append(("|".join(names[j] for j in idx), len(names) + len(combos) - 1,
                    MULTI_HOT_KEY | bitmask, idx))
    if len(names) + len(combos) > MAX_CODES:
        raise CxrError(f"too many targets ({len(names) + len(combos)} codes, at most {MAX_CODES})")
    return out


def plan_counts(real: dict[str, int] | None, names: Sequence[str],
                target_per_class: int | None, per_class: int | None) -> dict[str, int]:
    """Images to generate per name: ``max(0, target - real)``, or ``per_class`` for each."""
    if (target_per_class is None) == (per_class is None):
        raise CxrError("give exactly one of --target-per-class N (top every class up to N) or "
                       "--per-class N (N new images per class)")
    if per_class is not None:
        if per_class <= 0:
            raise CxrError(f"--per-class {per_class}: give a positive number of images")
        return {n: int(per_class) for n in names}
    assert target_per_class is not None
    if target_per_class <= 0:
        raise CxrError(f"--target-per-class {target_per_class}: give a positive number of images")
    real = real or {}  # no real data: every class is topped up from zero
    return {n: max(0, int(target_per_class) - int(real.get(n, 0))) for n in names}


def planned_targets(raw_targets: list[RawTarget], real_counts: dict[str, int] | None,
                    target_per_class: int | None, per_class: int | None) -> list[Target]:
    """The targets with their counts (``real_counts``: real images per name, None without real
    data), each within the naming scheme's images per target."""
    plan = plan_counts(real_counts, [t[0] for t in raw_targets], target_per_class, per_class)
    targets = [Target(name=name, code=code, key=key, classes=idx, folder=safe_folder(name),
                      real=None if real_counts is None else real_counts[name], count=plan[name])
               for name, code, key, idx in raw_targets]
    for t in targets:
        if t.count > MAX_PER_TARGET:
            raise CxrError(f"{t.name}: {t.count:,} images exceed the naming scheme's "
                           f"{MAX_PER_TARGET:,} per class")
    return targets
