"""The exported ONNX generator in onnxruntime: validation, providers, batched generation.

Below the stages: augment, the library's Generator and evaluate all read generators here. It never
imports TensorFlow: a machine that only makes synthetic data needs ``onnxruntime`` and ``numpy``,
nothing else. The file contract is in docs/ARCHITECTURE.md ("ONNX generator");
:class:`OnnxGenerator` refuses any file that breaks it with one :class:`~cxraug.errors.CxrError`
line naming the file and the fix, so a wrong file fails at start-up instead of after an hour of
writing images.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import IMAGE, INPUTS, LABEL, LABELS, Z
from ..errors import CxrError
from .session import session_options

#: Metadata keys every cxraug generator carries; the rest of the card is informative.
REQUIRED_META: tuple[str, ...] = ("class_names", "latent_dim", "image_size", "label_mode")
#: Input names per label mode (:mod:`cxraug.contract`), and the output's name.
INPUTS_BY_MODE = INPUTS
OUTPUT_NAME = IMAGE
#: The generator that ships with cxraug (installed with the package; exported_models/README.md
#: says what it was trained on and how), used by ``augment`` when no ``--model`` is given.
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "exported_models" / "nih-sample-64.onnx"
#: Largest difference a class-specialized session may show against the full graph (float
#: rounding of the folded constants is ~1e-6).
SPECIALIZE_TOL = 1e-4
#: Specialized sessions kept at once (one per label or label combination in use).
MAX_LABEL_SESSIONS = 32
DEVICES = ("auto", "cuda", "cpu")

_EXPORT_FIX = "export the run with `cxraug export-onnx --run runs/NAME --out MODEL.onnx`"


_SHARED_CPU_ARENA: list[bool] = []


def _shared_cpu_arena() -> bool:
    """Register (once per process) one CPU arena that every per-label session allocates from.

    Without it each class-specialized session keeps its own activation arena: 7 sessions of the
    default generator at batch 64 held 3.7 GB (against 0.57 GB for one session) and ran their
    first passes 2-3x slower while touching that memory; sharing keeps it at ~0.45 GB.
    """
    if not _SHARED_CPU_ARENA:
        import onnxruntime as ort

        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                     ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _SHARED_CPU_ARENA.append(True)
        except Exception:  # an older onnxruntime, or one registered by the host program
            _SHARED_CPU_ARENA.append(False)
    return _SHARED_CPU_ARENA[0]


@contextlib.contextmanager
def _quiet_ort() -> Any:
    """Silence onnxruntime's CUDA-load complaints (two error lines on CPU-only machines).

    onnxruntime has no getter for the default logger severity, so it is put back to its documented
    default (2, warnings) afterwards.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        ort.set_default_logger_severity(2)


def _providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        if device == "cuda":
            raise CxrError(
                f"--device cuda: this onnxruntime ({ort.__version__}) has no CUDA provider; "
                "install onnxruntime-gpu (pip install 'cxraug[gpu]') or use --device cpu"
            )
        return ["CPUExecutionProvider"]
    preload = getattr(ort, "preload_dlls", None)  # 1.21+: CUDA/cuDNN from pip's nvidia packages
    if preload is not None:
        with contextlib.suppress(Exception), _quiet_ort():
            preload()
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _read_meta(path: Path, raw: dict[str, str]) -> dict[str, Any]:
    """Parse and check the cxraug metadata_props; JSON/int fields are decoded."""
    missing = [k for k in REQUIRED_META if k not in raw]
    if missing:
        what = "no cxraug metadata" if len(missing) == len(REQUIRED_META) else (
            f"cxraug metadata without {', '.join(missing)}")
        raise CxrError(f"{path}: {what}; it is not a generator written by cxraug: {_EXPORT_FIX}")
    meta: dict[str, Any] = dict(raw)
    try:
        names = json.loads(raw["class_names"])
        meta["latent_dim"] = int(raw["latent_dim"])
        meta["image_size"] = int(raw["image_size"])
    except (ValueError, TypeError) as exc:
        raise CxrError(f"{path}: unreadable cxraug metadata ({exc}); {_EXPORT_FIX}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise CxrError(f"{path}: metadata class_names must be a JSON list of names; {_EXPORT_FIX}")
    if len(set(names)) != len(names):
        raise CxrError(f"{path}: metadata class_names repeats a name; {_EXPORT_FIX}")
    meta["class_names"] = names
    if meta["label_mode"] not in INPUTS_BY_MODE:
        raise CxrError(f"{path}: unknown label_mode {meta['label_mode']!r} in its metadata "
                       f"(expected {', '.join(INPUTS_BY_MODE)}); {_EXPORT_FIX}")
    if meta["latent_dim"] < 1 or meta["image_size"] < 1:
        raise CxrError(f"{path}: metadata latent_dim/image_size must be positive; {_EXPORT_FIX}")
    for key in ("epoch", "step"):
        if key in meta:
            with contextlib.suppress(ValueError):
                meta[key] = int(meta[key])
    return meta


def _dims(shape: Any) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in shape]


class OnnxGenerator:
    """An exported cxraug generator ready to run; see docs/ARCHITECTURE.md for the contract.

    ``device``: ``auto`` (CUDA where it loads, CPU otherwise), ``cuda`` (CxrError when CUDA
    cannot be used), ``cpu``. :attr:`provider` is the provider the session really uses.
    """

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None,
                 spinning: bool = True, specialize: bool = True) -> None:
        """``specialize``: run each label through its own class-specialized copy of the graph
        (see :mod:`cxraug.inference.specialize`; about 1.2-1.3x faster on CPU for the default
        generator, checked against the full graph). Every image then comes from its label's
        session whatever else shares its batch, so outputs never depend on batching."""
        import onnxruntime as ort

        self.path = Path(path)
        if device not in DEVICES:
            raise CxrError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
        if not self.path.is_file():
            raise CxrError(f"model {self.path} not found; {_EXPORT_FIX}")
        providers = _providers_for(device)
        try:
            with _quiet_ort():
                self.session = ort.InferenceSession(
                    str(self.path), sess_options=session_options(threads, spinning),
                    providers=providers,
                )
            self._session_args = (threads, spinning, self.session.get_providers())
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            text = str(exc).strip()
            first = text.splitlines()[0][:200] if text else type(exc).__name__
            raise CxrError(f"{self.path} is not a loadable ONNX model ({first}); {_EXPORT_FIX}"
                           ) from None
        self.provider: str = self.session.get_providers()[0]
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise CxrError(
                f"--device cuda: onnxruntime {ort.__version__} could not load CUDA for {self.path} "
                "(missing CUDA/cuDNN libraries or no GPU); install the matching CUDA libraries "
                "(pip install 'cxraug[gpu]') or use --device cpu"
            )
        raw = self.session.get_modelmeta().custom_metadata_map or {}
        self.meta: dict[str, Any] = _read_meta(self.path, dict(raw))
        self._check_io()
        self.specialize = bool(specialize) and self.label_mode != "none"
        self._proto: Any = None
        #: label bytes -> its specialized session, or None where the graph cannot be specialized
        self._label_sessions: dict[bytes, Any] = {}
        #: why a label runs on the full (slower) graph instead of a specialized one; augment
        #: prints and records these rather than falling back silently
        self.specialize_fallbacks: list[str] = []

    # ------------------------------------------------------------------ contract checks
    def _check_io(self) -> None:
        mode = self.label_mode
        expected = INPUTS_BY_MODE[mode]
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != set(expected):
            raise CxrError(
                f"{self.path}: inputs {sorted(inputs)} do not match label_mode {mode!r}, which "
                f"needs exactly {list(expected)}; {_EXPORT_FIX}")
        want_type = {Z: "tensor(float)", LABEL: "tensor(int64)", LABELS: "tensor(float)"}
        want_last = {Z: self.latent_dim, LABELS: len(self.class_names)}
        for name, info in inputs.items():
            if info.type != want_type[name]:
                raise CxrError(f"{self.path}: input {name!r} is {info.type}, expected "
                               f"{want_type[name]}; {_EXPORT_FIX}")
            dims = _dims(info.shape)
            rank = 1 if name == LABEL else 2
            if len(dims) != rank or (name in want_last and dims[-1] not in (None, want_last[name])):
                raise CxrError(f"{self.path}: input {name!r} has shape {info.shape}, expected "
                               f"{'[N]' if rank == 1 else f'[N, {want_last[name]}]'}; "
                               f"{_EXPORT_FIX}")
        outputs = self.session.get_outputs()
        if [o.name for o in outputs] != [OUTPUT_NAME]:
            raise CxrError(f"{self.path}: outputs {[o.name for o in outputs]}, expected exactly "
                           f"['{OUTPUT_NAME}']; {_EXPORT_FIX}")
        dims = _dims(outputs[0].shape)
        size = self.image_size
        if len(dims) != 4 or any(d not in (None, want) for d, want in zip(dims[1:], (size, size, 1),
                                                                           strict=True)):
            raise CxrError(f"{self.path}: output 'image' has shape {outputs[0].shape}, expected "
                           f"[N, {size}, {size}, 1]; {_EXPORT_FIX}")

    # ------------------------------------------------------------------ properties
    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def latent_dim(self) -> int:
        return int(self.meta["latent_dim"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def label_mode(self) -> str:
        return str(self.meta["label_mode"])

    @property
    def view(self) -> str:
        """View Position of the training images (metadata ``view``; "" when not recorded)."""
        return str(self.meta.get("view", "") or "")

    # ------------------------------------------------------------------ inference
    def generate(self, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Images float32 ``[N, H, W]`` in ``[-1, 1]`` for latents ``z`` ``[N, latent]``.

        ``labels``: class indices ``[N]`` (``index`` models), multi-hot ``[N, C]``
        (``multi-hot``), ignored by unconditional (``none``) models.
        """
        z = np.ascontiguousarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be [N, {self.latent_dim}], got {z.shape}")
        feeds: dict[str, np.ndarray] = {Z: z}
        if self.label_mode == "index":
            lab = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
            if lab.shape[0] != z.shape[0]:
                raise ValueError(f"{lab.shape[0]} labels for {z.shape[0]} latents")
            if lab.size and (lab.min() < 0 or lab.max() >= len(self.class_names)):
                raise ValueError(f"labels must be in 0..{len(self.class_names) - 1}")
            feeds[LABEL] = lab
        elif self.label_mode == "multi-hot":
            hot = np.ascontiguousarray(labels, dtype=np.float32)
            if hot.shape != (z.shape[0], len(self.class_names)):
                raise ValueError(f"multi-hot labels must be [{z.shape[0]}, "
                                 f"{len(self.class_names)}], got {hot.shape}")
            feeds[LABELS] = hot
        if self.specialize and z.shape[0]:
            image = self._generate_by_label(z, feeds)
        else:
            (image,) = self.session.run([OUTPUT_NAME], feeds)
        # onnxruntime's tanh can overshoot by an ulp (1.0000001); the contract says [-1, 1]
        return np.clip(image[..., 0], -1.0, 1.0)

    # ------------------------------------------------------------------ per-label sessions
    @property
    def specialized_labels(self) -> int:
        """How many labels run on a specialized session so far (0: none, or not possible)."""
        return sum(1 for s in self._label_sessions.values() if s is not None)

    def _generate_by_label(self, z: np.ndarray, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Each distinct label's rows through that label's session (full graph as fallback)."""
        name = INPUTS_BY_MODE[self.label_mode][1]
        rows = feeds[name]
        uniques, inverse = np.unique(rows, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        size = self.image_size
        image = np.empty((z.shape[0], size, size, 1), np.float32)
        for u, value in enumerate(uniques):
            idx = np.flatnonzero(inverse == u)
            part = slice(idx[0], idx[-1] + 1) if idx[-1] - idx[0] + 1 == idx.size else idx
            session = self._session_for(value)
            if session is None:
                (image[part],) = self.session.run([OUTPUT_NAME], {Z: z[part], name: rows[part]})
            else:
                (image[part],) = session.run([OUTPUT_NAME], {Z: z[part]})
        return image

    def _session_for(self, value: np.ndarray) -> Any:
        key = np.ascontiguousarray(value).tobytes()
        if key not in self._label_sessions:
            if len(self._label_sessions) >= MAX_LABEL_SESSIONS:  # oldest out (rebuilt alike)
                del self._label_sessions[next(iter(self._label_sessions))]
            self._label_sessions[key] = self._build_label_session(np.asarray(value))
        return self._label_sessions[key]

    def _build_label_session(self, value: np.ndarray) -> Any:
        """A session of the graph specialized to ``value``, checked against the full graph on
        fixed latents; ``None`` when the graph cannot be specialized or the check fails."""
        import onnx
        import onnxruntime as ort

        from .specialize import specialize_for_label

        name = INPUTS_BY_MODE[self.label_mode][1]
        label = value.reshape(1, *value.shape).astype(np.int64 if name == LABEL else np.float32)
        if self._proto is None:
            self._proto = onnx.load(str(self.path))
        special = specialize_for_label(self._proto, name, label)
        if special is None:
            return self._fallback(value, "the label part of the graph cannot be folded")
        threads, spinning, providers = self._session_args
        options = session_options(threads, spinning)
        if providers[0] == "CPUExecutionProvider" and _shared_cpu_arena():
            # one arena for all label sessions (memory of one session, whatever the count)
            options.add_session_config_entry("session.use_env_allocators", "1")
            options.enable_mem_pattern = False
        try:
            with _quiet_ort():
                session = ort.InferenceSession(special.SerializeToString(),
                                               sess_options=options, providers=providers)
            check = np.random.default_rng(0).standard_normal(
                (4, self.latent_dim)).astype(np.float32)
            (full,) = self.session.run([OUTPUT_NAME], {Z: check, name: np.repeat(label, 4, 0)})
            (fast,) = session.run([OUTPUT_NAME], {Z: check})
        except Exception as exc:  # onnxruntime rejects the rewritten graph: keep the full one
            return self._fallback(value, f"onnxruntime rejected the specialized graph "
                                         f"({type(exc).__name__})")
        diff = float(np.max(np.abs(full - fast)))
        if diff > SPECIALIZE_TOL:
            return self._fallback(value, f"the specialized graph differs by {diff:.2g} "
                                         f"(> {SPECIALIZE_TOL:g})")
        return session

    def _fallback(self, value: np.ndarray, reason: str) -> None:
        what = np.asarray(value).reshape(-1)
        label = (self.class_names[int(what[0])] if self.label_mode == "index"
                 else "|".join(n for n, v in zip(self.class_names, what, strict=False) if v))
        self.specialize_fallbacks.append(f"{label}: {reason}")
        return None

    __call__ = generate

    def __repr__(self) -> str:
        return (f"OnnxGenerator({str(self.path)!r}, provider={self.provider}, "
                f"classes={len(self.class_names)}, size={self.image_size})")


# ----------------------------------------------------------------------------- model card
def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _shape_text(value_info: Any) -> str:
    import onnx

    ttype = value_info.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type).name if ttype.elem_type else "?"
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "N")
            for d in ttype.shape.dim]
    return f"{value_info.name} {dtype} [{', '.join(dims)}]"


def model_card(path: str | os.PathLike) -> str:
    """A readable card of an ONNX generator for ``cxraug inspect``: metadata, I/O, size, hash.

    Works on any ONNX file (a file without cxraug metadata gets a warning line, not an error) so
    the command also helps to find out why ``augment`` refuses a file.
    """
    import onnx

    from ..io_utils import sha256_file

    path = Path(path)
    if not path.is_file():
        raise CxrError(f"model {path} not found; give the path of an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise CxrError(f"{path} is not an ONNX file ({type(exc).__name__}); {_EXPORT_FIX}"
                       ) from None
    if not model.graph.node and not model.graph.output:
        raise CxrError(f"{path} is not an ONNX model (empty graph); {_EXPORT_FIX}")
    raw = {p.key: p.value for p in model.metadata_props}
    lines = [f"model        {path}",
             f"file         {_human_bytes(path.stat().st_size)}, sha256 {sha256_file(path)}"]
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    producer = f", producer {model.producer_name} {model.producer_version}".rstrip()
    lines.append(f"format       ONNX IR {model.ir_version}, opset {opsets}"
                 f"{producer if model.producer_name else ''}")
    try:
        meta = _read_meta(path, raw)
    except CxrError as exc:
        meta = None
        lines.append(f"WARNING      {exc}")
    if meta is not None:
        names = meta["class_names"]

        def get(key: str) -> str:
            value = meta.get(key, "")
            return "?" if value in ("", None) else str(value)

        lines += [
            f"arch         {get('arch')} (recipe {get('recipe_name')})",
            f"classes      {len(names)}: {', '.join(names) or '(none: unconditional)'}",
            f"label mode   {meta['label_mode']}",
            f"latent       {meta['latent_dim']}",
            f"image        {meta['image_size']}x{meta['image_size']}, 1 channel, "
            "float32 in [-1, 1]",
            f"trained      epoch {get('epoch')}, step {get('step')}, "
            f"data fingerprint {get('data_fingerprint')}, {get('train_images')} images, "
            f"view {get('view')}",
            f"exported     {get('exported_at')} by cxraug {get('cxraug_version')}",
        ]
    init_names = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    lines.append(f"inputs       {'; '.join(_shape_text(i) for i in inputs)}")
    lines.append(f"outputs      {'; '.join(_shape_text(o) for o in model.graph.output)}")
    n_params = sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in model.graph.initializer)
    ops = Counter(n.op_type for n in model.graph.node)
    top = ", ".join(f"{op} {n}" for op, n in ops.most_common(8))
    lines.append(f"graph        {len(model.graph.node)} nodes ({top}), "
                 f"{n_params:,} parameters")
    shown = {"class_names", "latent_dim", "image_size", "label_mode", "arch", "recipe_name",
             "epoch", "step", "data_fingerprint", "exported_at", "cxraug_version", "recipe",
             "view", "train_images"}
    for key in sorted(set(raw) - shown):
        lines.append(f"meta         {key} = {raw[key][:200]}")
    if raw.get("recipe"):
        lines.append("recipe")
        lines += [f"  {line}" for line in raw["recipe"].strip().splitlines()]
    return "\n".join(lines)
