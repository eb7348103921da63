"""augment's filters at run time: opened from its options, a batch of slots with replacements
for dropped tries, the stop when a class is all copies, and the warnings of a run that dropped
much. The filters themselves are in :mod:`.filters`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CxrError
from ..grid import to_uint8
from ..inference.generator import OnnxGenerator
from .filters import HIGH_DROP, KEEP, PRIVACY, Filters, SlotRecord
from .naming import latents
from .targets import Target


def open_filters(gen: OnnxGenerator, model: Path, data: Path | None, wanted: list[int],
                 privacy_filter: bool, privacy_reference: Path | None,
                 privacy_percentile: float | None, judge: Path | None,
                 judge_real_share: float, max_tries: int, scratch: Path) -> Filters:
    """Find the privacy reference (``--privacy-reference``, else ``MODEL.trainref.h5`` beside the
    model, else built from ``--data`` when it is the cache the model was trained on) and open
    the judge. Every choice is said in ``Filters.notes``."""
    from ..copy_reference import DEFAULT_PERCENTILE, TrainReference, reference_path
    from ..data.reference import build_reference
    from .filters import LabelJudge

    if max_tries < 1:
        raise CxrError(f"--max-tries {max_tries}: give a positive number of tries per image")
    filters = Filters(max_tries=int(max_tries))
    fingerprint = str(gen.meta.get("data_fingerprint", "") or "")
    if not privacy_filter:
        if privacy_reference is not None:
            raise CxrError("--privacy-reference with --no-privacy-filter: give one, not both")
        filters.notes.append("privacy filter off (--no-privacy-filter): images are not checked "
                             "for copies of training images")
    else:
        path: Path | None = None
        if privacy_reference is not None:
            path = Path(privacy_reference)
        elif reference_path(model).is_file():
            path = reference_path(model)
        elif data is not None:
            from ..data.cache import CacheReader

            if not Path(data).is_file():
                raise CxrError(f"cache {data} not found; make it with `cxraug prepare`")
            with CacheReader(Path(data)) as cache:
                same = bool(fingerprint) and str(cache.fingerprint) == fingerprint
            if same:
                path = build_reference(data, scratch / "trainref.h5",
                                       percentile=privacy_percentile or DEFAULT_PERCENTILE)
                filters.reference_origin = f"built for this run from {data} (train split)"
        if path is None:
            filters.notes.append(
                f"privacy filter off: no training reference for {model} (looked for "
                f"{reference_path(model)}; give --privacy-reference FILE, or --data CACHE the "
                "model was trained on)")
        else:
            ref = TrainReference(path, percentile=privacy_percentile)
            if fingerprint and ref.data_fingerprint and ref.data_fingerprint != fingerprint:
                ref.close()
                raise CxrError(f"{path}: built from other data (fingerprint "
                               f"{ref.data_fingerprint}) than {model} was trained on "
                               f"({fingerprint}); give the reference of its training cache")
            filters.privacy = ref
            filters.notes.append(
                f"privacy filter on: an image closer to one of the {ref.n:,} training images "
                f"than {100 - ref.percentile:g}% of {ref.n_heldout} held-out patients are is "
                f"replaced (up to {max_tries} tries; --no-privacy-filter to turn off)")
    if judge is not None:
        filters.judge = LabelJudge(judge, gen.class_names, wanted, real_share=judge_real_share,
                                   data=data)
        filters.notes.append(
            f"label filter on: the judge {judge} must rate each image's class at least as high "
            f"as {judge_real_share:.0%} of real validation images of that class "
            f"(calibrated on {filters.judge.source})")
        filters.notes += filters.judge.warnings()
    return filters


def filtered_batch(gen: OnnxGenerator, filters: Filters, seed: int, targets: list[Target],
                   batch: list[tuple[int, int]], label_rows: Any
                   ) -> tuple[np.ndarray, list[SlotRecord | None], list[tuple[int, int]]]:
    """Images for a batch of slots with replacements for dropped tries. Returns the images,
    each slot's record (None: every try dropped) and each slot's (privacy, label) drops."""
    n = len(batch)
    kept: list[np.ndarray | None] = [None] * n
    drops = [[0, 0] for _ in range(n)]
    records: list[SlotRecord | None] = [None] * n
    todo = list(range(n))
    for attempt in range(filters.max_tries):
        if not todo:
            break
        z = np.concatenate([latents(seed, targets[batch[j][0]].key, [batch[j][1]],
                                    gen.latent_dim, [attempt]) for j in todo])
        rows = np.array([batch[j][0] for j in todo], dtype=np.int64)
        images = gen.generate(z, label_rows(rows))
        verdict = filters.verdicts(to_uint8(images), [targets[i].classes for i in rows])
        left = []
        for pos, j in enumerate(todo):
            if verdict[pos] == KEEP:
                kept[j] = images[pos]
                records[j] = SlotRecord(attempt + 1, drops[j][0], drops[j][1])
            else:
                drops[j][0 if verdict[pos] == PRIVACY else 1] += 1
                left.append(j)
        todo = left
    shape = (gen.image_size, gen.image_size)
    out = np.stack([k if k is not None else np.zeros(shape, np.float32) for k in kept])
    return out, records, [(a, b) for a, b in drops]


#: Slots every try of which the privacy filter dropped, with no image kept, before augment stops.
PRIVACY_FAIL_SLOTS = 8


def check_privacy_failure(targets: list[Target],
                          unfilled: dict[int, dict[int, tuple[int, int]]],
                          present: dict[int, set[int]],
                          records: dict[int, dict[int, SlotRecord]] | None,
                          filters: Filters) -> None:
    """Stop with a clear error when a class's images are all copies (instead of trying forever)."""
    if filters.privacy is None or records is None:
        return
    for t in targets:
        copies = [k for k, (priv, lab) in unfilled[t.code].items() if lab == 0 and priv > 0]
        if (copies and len(copies) >= min(PRIVACY_FAIL_SLOTS, t.count) and not records[t.code]
                and not present[t.code]):
            ref = filters.privacy
            raise CxrError(
                f"{t.name}: the privacy filter dropped every one of {len(copies)} images x "
                f"{filters.max_tries} tries: each was closer to a training image than "
                f"{100 - ref.percentile:g}% of new patients are (threshold {ref.threshold:.3g}), "
                "so the generator reproduces its training images; use an earlier checkpoint or "
                "retrain on more data, or --no-privacy-filter to keep them (not for sharing)")


def filter_warnings(rows: list[dict[str, Any]], filters: Filters) -> list[str]:
    """One line per class whose filters dropped much or that ends short."""
    out = []
    for row in rows:
        f = row.get("filter")
        if not f or not f["tried"]:
            continue
        rate = f["drop_rate"]
        if rate > HIGH_DROP or f["unfilled"]:
            why = []
            if f["dropped_privacy"] > f["tried"] * HIGH_DROP / 2:
                why.append("it draws near-copies of training images (memorizes)")
            if f["dropped_label"] > f["tried"] * HIGH_DROP / 2:
                why.append("the judge does not recognize the class in its images (the "
                           "generator does not draw it, or the judge cannot tell)")
            short = (f"; {f['unfilled']:,} of its images could not be made in "
                     f"{filters.max_tries} tries, so it has {f['kept']:,}" if f["unfilled"] else "")
            out.append(f"warning: {row['name']}: the filters dropped {rate:.0%} of "
                       f"{f['tried']:,} tries ({f['dropped_privacy']:,} privacy, "
                       f"{f['dropped_label']:,} label){short}"
                       + (f": {'; '.join(why)}" if why else ""))
    return out
