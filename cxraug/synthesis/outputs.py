"""The CSVs and the manifest of a job, written atomically from the images known to be stored:
after every class, on Ctrl-C and at the end."""

from __future__ import annotations

import sys
import time
import zlib
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .. import __version__
from ..io_utils import write_json_atomic, write_text_atomic
from .csv_rows import mixed_real_text, mixed_synthetic_text, synthetic_rows
from .job import Job
from .naming import CODE_STRIDE, SYNTH_PATIENT_BASE
from .out_folder import DATA_CSV, MANIFEST, MIXED_CSV, PARTS


def write_outputs(job: Job, final: bool) -> None:
    """CSVs (and at the end the manifest) from the images known to be stored."""
    from ..data.nih import write_nih_csv

    spec = job.spec
    out, (shard_i, shard_n) = spec.out, spec.shard
    rows = synthetic_rows(spec.targets, job.state.present, spec.mine, spec.size, spec.sink,
                          spec.view)
    part_name = f"shard-{shard_i}-of-{shard_n}"
    if shard_n > 1:
        write_nih_csv(rows, out / PARTS / f"{part_name}.csv")
        job.paths["part_csv"] = out / PARTS / f"{part_name}.csv"
    else:
        write_nih_csv(rows, out / DATA_CSV)
        if job.mixed_real_text is None:
            job.mixed_real_text = mixed_real_text(job.real.data, job.real.paths)
        write_text_atomic(out / MIXED_CSV, job.mixed_real_text + mixed_synthetic_text(rows))
        job.paths["csv"], job.paths["mixed"] = out / DATA_CSV, out / MIXED_CSV
    if final:
        manifest_path = (out / PARTS / f"{part_name}.json") if shard_n > 1 else out / MANIFEST
        write_json_atomic(manifest_path, manifest(job))
        job.paths["manifest"] = manifest_path


def manifest(job: Job) -> dict[str, Any]:
    """manifest.json: the model, the options, what is on disk per class, versions, timings."""
    import onnxruntime as ort
    import PIL

    spec, real = job.spec, job.real
    gen = spec.gen
    raw_meta = dict(gen.session.get_modelmeta().custom_metadata_map or {})
    return {
        "format": "cxraug-augment-manifest-1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"path": str(spec.model), "sha256": spec.model_sha, "metadata": raw_meta},
        "seed": spec.seed, "shard": f"{spec.shard[0]}/{spec.shard[1]}",
        "provider": gen.provider, "label_specialized_sessions": gen.specialized_labels,
        "full_graph_labels": list(gen.specialize_fallbacks),
        "device": spec.device, "image_size": spec.size, "layout": spec.sink.name,
        "label_mode": gen.label_mode, "view": spec.view,
        "filters": spec.filters.describe() if spec.filters.active else None,
        # [width, height] of each part of mixed.csv (real: up to 20 files' headers)
        "image_sizes": {"synthetic": [[spec.size, spec.size]], "real": real.sizes},
        "real_source": None if real.data is None else real.data.source,
        "real_rows_in_mixed": real.rows_in_mixed,
        "notes": job.notes,
        "real_missing_under_root": real.missing,
        "classes": job.target_rows(),
        "naming": {"patient_id": f"{SYNTH_PATIENT_BASE} + code * {CODE_STRIDE} + k "
                   "(one synthetic patient per image)", "follow_up": "0",
                   "latent": "Philox(key=(seed << 64) | target key, counter=k << 128) "
                             "standard normal float32"},
        "versions": {"cxraug": __version__, "onnxruntime": ort.__version__,
                     "numpy": np.__version__, "pillow": PIL.__version__,
                     "zlib": zlib.ZLIB_RUNTIME_VERSION, "python": sys.version.split()[0]},
        "options": spec.options,
        "timings": {**{k: round(v, 3) for k, v in job.state.timings.items()},
                    "wall_s": round(time.perf_counter() - job.started, 3),
                    "generated": job.state.generated},
    }
