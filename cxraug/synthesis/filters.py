"""augment's filters: drop generated images that copy a training image (privacy, on by default
where a training reference exists) or that a judge trained on real images does not recognize as
their label (opt-in, ``--judge``). NO TensorFlow.

A dropped image is replaced by a new latent for the same slot: try ``a`` of image ``k`` of a
target uses the Philox counter ``(k << 128) | (a << 96)`` (try 0 is the unfiltered latent), so the
kept image of a slot depends only on (seed, target, k) and the filters' settings, never on batch
sizes, shards or resumes. A slot gets ``max_tries`` tries; one that exhausts them stays empty (the
class gets fewer images, and augment says so). Every kept PNG records in a ``tEXt`` chunk
(``cxraug-filter``) how many tries it took and what dropped the others, so the manifest's counts
survive resumes and shard merges.

Label rule: the judge's probability for every class of the row's label must reach that class's
threshold, which passes ``real_share`` (default 90%) of the real validation images of the class:
a kept image looks at least as much like its class to the judge as nine real patients in ten do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..copy_reference import TrainReference
from ..errors import CxrError

#: Why a try was dropped.
KEEP, PRIVACY, LABEL = 0, 1, 2
DEFAULT_MAX_TRIES = 10
DEFAULT_REAL_SHARE = 0.9
#: A class whose filters drop more than this share of tries gets a warning.
HIGH_DROP = 0.5
#: The judge means little for a class below this validation AUROC: augment warns.
WEAK_AUROC = 0.6
#: Calibrated on fewer real images than this, a threshold is rough: augment warns.
FEW_CALIBRATION = 10
TEXT_KEY = "cxraug-filter"


@dataclass
class SlotRecord:
    """How slot k was filled: tries used and the drops before the kept one."""

    tries: int
    privacy: int
    label: int

    def text(self) -> str:
        return f"tries={self.tries} privacy={self.privacy} label={self.label}"

    @classmethod
    def parse(cls, text: str) -> SlotRecord | None:
        try:
            parts = dict(p.split("=", 1) for p in text.split())
            return cls(int(parts["tries"]), int(parts["privacy"]), int(parts["label"]))
        except (KeyError, ValueError):
            return None


@dataclass
class ClassStats:
    """Per-target counts of one job (kept images' records + this run's empty slots)."""

    tries: int = 0
    privacy: int = 0
    label: int = 0
    kept: int = 0
    unfilled: int = 0

    def add(self, record: SlotRecord) -> None:
        self.tries += record.tries
        self.privacy += record.privacy
        self.label += record.label
        self.kept += 1

    def drop_rate(self) -> float:
        return (self.privacy + self.label) / self.tries if self.tries else 0.0


# ------------------------------------------------------------------------------- label judge
class LabelJudge:
    """A classifier (``cxraug train-classifier`` folder, or an ONNX with class probabilities)
    with per-class thresholds calibrated on real validation images."""

    def __init__(self, path: str | os.PathLike, class_names: list[str], wanted: list[int],
                 real_share: float = DEFAULT_REAL_SHARE, data: str | os.PathLike | None = None
                 ) -> None:
        from ..inference.classifier import ClassifierFeatures

        if not 0 < real_share < 1:
            raise CxrError(f"--judge-real-share {real_share}: give a share between 0 and 1, "
                           "e.g. 0.9")
        self.path = Path(path)
        self.real_share = float(real_share)
        self.feats = ClassifierFeatures(self.path, spinning=False)
        if not self.feats.has_judge:
            raise CxrError(f"--judge {self.path}: gives no class probabilities with class names; "
                           "train one with `cxraug train-classifier`")
        judge_names = list(self.feats.class_names or [])
        missing = [class_names[c] for c in wanted if class_names[c] not in judge_names]
        if missing:
            raise CxrError(f"--judge {self.path}: knows no class {', '.join(missing)} (its "
                           f"classes: {', '.join(judge_names)}); use a judge trained on the "
                           "generator's classes")
        self.column = {c: judge_names.index(class_names[c]) for c in wanted}
        positives, source = self._calibration(data, [class_names[c] for c in wanted])
        self.source = source
        self.thresholds: dict[int, float | None] = {}
        self.n_real: dict[int, int] = {}
        auroc = self.feats.info.get("val_auroc") or {}
        self.auroc: dict[int, float | None] = {}
        for c in wanted:
            probs = np.asarray(positives.get(class_names[c], []), dtype=np.float64)
            self.n_real[c] = len(probs)
            self.thresholds[c] = (float(np.quantile(probs, 1 - real_share, method="lower"))
                                  if len(probs) else None)
            value = auroc.get(class_names[c])
            self.auroc[c] = None if value is None else float(value)
        self.class_names = class_names

    def _calibration(self, data: str | os.PathLike | None,
                     names: list[str]) -> tuple[dict[str, list[float]], str]:
        """Judge probabilities of the real validation images that carry each class: from a
        cache's val split when ``data`` is given, else from the classifier's own record."""
        if data is not None:
            from ..data.cache import CacheReader

            with CacheReader(Path(data)) as reader:
                val = np.asarray(reader.indices("val"))
                if len(val) == 0:
                    raise CxrError(f"--data {data}: no val split to calibrate the judge on; "
                                   "re-prepare with --val-fraction above 0")
                hot = np.asarray(reader.multi_hot)[val]
                cache_names = list(reader.class_names)
                images = reader.read(val)
            probs = self.feats.embed(images)[1]
            assert probs is not None
            out: dict[str, list[float]] = {}
            for name in names:
                if name in cache_names:
                    pos = hot[:, cache_names.index(name)] > 0
                    col = list(self.feats.class_names or []).index(name)
                    out[name] = probs[pos, col].tolist()
            return out, f"{data} (val split)"
        record = self.feats.info.get("calibration", {}).get("val_positive_probs")
        if not record:
            raise CxrError(f"--judge {self.path}: holds no calibration (classifiers from "
                           "`cxraug train-classifier` of this version do); give --data CACHE "
                           "with real validation images to calibrate it on")
        return {k: list(v) for k, v in record.items()}, f"{self.path} (its val split)"

    def reject(self, images_u8: np.ndarray, class_sets: list[tuple[int, ...]]) -> np.ndarray:
        """True where some class of the row's label is below its threshold."""
        probs = self.feats.embed(images_u8)[1]
        assert probs is not None
        out = np.zeros(len(images_u8), dtype=bool)
        for i, classes in enumerate(class_sets):
            for c in classes:
                t = self.thresholds.get(c)
                if t is not None and probs[i, self.column[c]] < t:
                    out[i] = True
        return out

    def describe(self) -> dict[str, Any]:
        return {"judge": str(self.path), "real_share": self.real_share,
                "calibrated_on": self.source,
                "classes": {self.class_names[c]: {
                    "threshold": None if t is None else round(t, 6), "n_real": self.n_real[c],
                    "val_auroc": self.auroc[c]} for c, t in self.thresholds.items()}}

    def warnings(self) -> list[str]:
        out = []
        for c, t in self.thresholds.items():
            name = self.class_names[c]
            if t is None:
                out.append(f"warning: {name}: no real validation image to calibrate the judge "
                           "on, so its images are not label-filtered")
            elif self.n_real[c] < FEW_CALIBRATION:
                out.append(f"warning: {name}: the judge's threshold rests on {self.n_real[c]} "
                           "real validation image(s); it is rough")
            auroc = self.auroc[c]
            if auroc is not None and auroc < WEAK_AUROC:
                out.append(f"warning: {name}: the judge tells it from other classes poorly on "
                           f"real images (val AUROC {auroc:.2f}); its label filter means little")
        return out


# ------------------------------------------------------------------------------- both filters
@dataclass
class Filters:
    """The filters of one augment job; ``verdicts`` gives KEEP / PRIVACY / LABEL per image."""

    privacy: TrainReference | None = None
    judge: LabelJudge | None = None
    max_tries: int = DEFAULT_MAX_TRIES
    notes: list[str] = field(default_factory=list)
    reference_origin: str = ""  # the reference file, or the cache it was built from for this run

    @property
    def active(self) -> bool:
        return self.privacy is not None or self.judge is not None

    def verdicts(self, images_u8: np.ndarray, class_sets: list[tuple[int, ...]]) -> np.ndarray:
        """Privacy first (what must never leave), then the label judge on the survivors."""
        out = np.full(len(images_u8), KEEP, dtype=np.int8)
        if self.privacy is not None and len(images_u8):
            out[self.privacy.check(images_u8).copy] = PRIVACY
        if self.judge is not None:
            alive = np.flatnonzero(out == KEEP)
            if len(alive):
                bad = self.judge.reject(images_u8[alive], [class_sets[i] for i in alive])
                out[alive[bad]] = LABEL
        return out

    def spec(self) -> dict[str, Any]:
        """What job.json records: a job with other filter settings is another job."""
        out: dict[str, Any] = {"max_tries": self.max_tries}
        if self.privacy is not None:
            ref = self.privacy.describe()
            out["privacy"] = {"threshold": ref["threshold"], "percentile": ref["percentile"],
                              "n_train": ref["n_train"],
                              "data_fingerprint": ref["data_fingerprint"]}
        if self.judge is not None:
            judge = self.judge.describe()
            out["label"] = {"real_share": judge["real_share"], "thresholds": {
                k: v["threshold"] for k, v in judge["classes"].items()}}
        return out

    def describe(self) -> dict[str, Any]:
        return {"max_tries": self.max_tries,
                "privacy": None if self.privacy is None else {
                    **self.privacy.describe(),
                    "reference": self.reference_origin or str(self.privacy.path)},
                "label": None if self.judge is None else self.judge.describe()}

    def close(self) -> None:
        if self.privacy is not None:
            self.privacy.close()

