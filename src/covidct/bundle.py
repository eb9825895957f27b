"""Model bundles: a folder with a ``model.json`` card and ``weights.safetensors``; pipelines of two bundles.

Component bundle (``kind`` "classifier" or "segmenter")::

    classifier/model.json            the card (below)
    classifier/weights.safetensors   tensors only, no pickled code

Pipeline MODEL_DIR (what ``covidct diagnose --model`` loads; :mod:`covidct.pipeline` loads it)::

    model.json      kind "pipeline": classes, patient-rule parameters, the components and their hashes
    segmenter/      a segmenter bundle (or the card says ``"segmenter": "classical"``)
    classifier/     a classifier bundle

A card holds: ``format``/``format_version``, ``kind``, ``name``, ``version`` (covidct version that wrote it),
``created`` (UTC), ``classes`` (registry order), ``architecture``, ``preprocessing`` (window, image size,
masking), ``training`` (data summary: counts per class, split seed, epochs...), ``validation`` (metrics),
``rule`` (patient-rule parameters), ``software`` (versions), ``weights`` (file name and SHA-256) and ``hash``:
SHA-256 of the canonical JSON of the card without ``hash`` and ``created`` (it includes the weights' SHA-256),
so editing the card or the weights is detected on loading, and the same model saved twice, at different
times, keeps one hash: the hash names what decides the answers, not when the files were written. Cards of
format 1.0 hashed ``created`` too; they still load and verify (see :func:`card_hash`). Every loading problem
raises :class:`covidct.errors.ModelError` naming the file and what does not match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from covidct import __version__
from covidct._files import atomic_write, atomic_write_bytes
from covidct.errors import ConfigError, ModelError
from covidct.registry import (
    ABNORMAL_FRACTION_THRESHOLD,
    BUNDLE_FORMAT_VERSION,
    CLASS_NAMES,
    LESION_LABEL_NAMES,
    LUNG_LABEL_NAMES,
    TRUNCATE_HEAD,
    TRUNCATE_TAIL,
    Window,
)

if TYPE_CHECKING:
    import torch

CARD_NAME: Final[str] = "model.json"
WEIGHTS_NAME: Final[str] = "weights.safetensors"
FORMAT: Final[str] = "covidct-model"
COMPONENT_KINDS: Final[tuple[str, ...]] = ("classifier", "segmenter", "lesions")


def default_rule() -> dict[str, float]:
    """The paper's patient-rule parameters (registry constants)."""
    return {
        "head": TRUNCATE_HEAD,
        "tail": TRUNCATE_TAIL,
        "threshold": ABNORMAL_FRACTION_THRESHOLD,
    }


def software_versions() -> dict[str, str]:
    """Versions of the packages that shape a model's numbers (read from the installed metadata: importing
    torch or MONAI just to name their versions would cost the torch-free path its start-up)."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy

    out = {"covidct": __version__, "python": platform.python_version()}
    for dist in ("torch", "numpy", "monai", "onnxruntime"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = numpy.__version__ if dist == "numpy" else version(dist)
    return out


#: Card fields the content hash leaves out: the hash itself and when the files were written.
HASH_EXCLUDED: Final[tuple[str, ...]] = ("hash", "created")
#: Format versions before this one hashed every field but ``hash`` (``created`` included).
_HASH_WITHOUT_CREATED_SINCE: Final[tuple[int, int]] = (1, 1)


def _format_version(card: dict[str, Any]) -> tuple[int, int]:
    parts = str(card.get("format_version", "")).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 0, 0


#: Format versions from this one also leave out ``training.sources`` (the folders the data was read from: the
#: same data and weights in another folder are the same model).
_HASH_WITHOUT_SOURCES_SINCE: Final[tuple[int, int]] = (1, 2)


def _canonical(card: dict[str, Any]) -> bytes:
    version = _format_version(card)
    excluded = HASH_EXCLUDED if version >= _HASH_WITHOUT_CREATED_SINCE else ("hash",)
    body = {k: v for k, v in card.items() if k not in excluded}
    training = body.get("training")
    if version >= _HASH_WITHOUT_SOURCES_SINCE and isinstance(training, dict) and "sources" in training:
        body["training"] = {k: v for k, v in training.items() if k != "sources"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def card_hash(card: dict[str, Any]) -> str:
    """``sha256:<hex>`` of the card without ``hash``, ``created`` and ``training.sources`` (the model's
    identity: weights, preprocessing, rule, training settings; not when or from which folder it was made).

    Cards of older formats are hashed as they were written (1.0 with ``created``, 1.1 with the sources), so
    their stored hashes keep verifying.
    """
    return "sha256:" + hashlib.sha256(_canonical(card)).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_safe(obj: Any) -> Any:
    """Plain JSON: NaN/inf floats become ``null`` (undefined metrics), tuples lists, keys strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def card_window(card: dict[str, Any], *, default: Window, where: Path) -> Window:
    """The HU window of a card's ``preprocessing.window`` (``{"level", "width"}`` in HU), else ``default``.

    A malformed entry raises :class:`ModelError` naming ``where`` (the card file).
    """
    try:
        w = dict(dict(card.get("preprocessing") or {}).get("window") or {})
        if not w:
            return default
        level, width = float(w["level"]), float(w["width"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f"{where}: preprocessing.window must be {{'level': HU, 'width': HU}} ({exc!r}); "
            "restore the original card or retrain"
        ) from None
    if not (math.isfinite(level) and math.isfinite(width) and width > 0):
        raise ModelError(
            f"{where}: preprocessing.window has level {level}, width {width} (width must be > 0)"
        )
    return Window(level, width)


def card_int(section: dict[str, Any], key: str, default: int, *, where: Path, prefix: str = "") -> int:
    """``int(section[key])`` (``default`` when absent); a non-integer value raises ModelError naming ``where``."""
    value = section.get(key, default)
    try:
        out = int(value)
        if isinstance(value, float) and value != out:
            raise ValueError(value)
    except (TypeError, ValueError):
        raise ModelError(f"{where}: {prefix}{key} must be an integer, got {value!r}") from None
    return out


def check_rule(rule: Any, *, where: str, error: type[Exception] = ModelError) -> dict[str, float]:
    """Patient-rule parameters ``{"head", "tail", "threshold"}`` as floats, checked like ``decide`` does.

    Missing keys take the registry defaults. Unknown keys, non-numbers or out-of-range values raise ``error``
    (``ModelError`` for a card, ``ConfigError`` for an argument) naming ``where``.
    """
    from covidct.decide import _check_params

    if not isinstance(rule, dict):
        raise error(f"{where}: rule must be an object with head, tail and threshold, got {rule!r}")
    unknown = sorted(set(map(str, rule)) - set(default_rule()))
    if unknown:
        raise error(f"{where}: unknown rule parameters {unknown}; the rule takes head, tail and threshold")
    out = dict(default_rule())
    for key, value in rule.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            raise error(f"{where}: rule {key} must be a number, got {value!r}") from None
    try:
        _check_params(out["head"], out["tail"], out["threshold"])
    except ValueError as exc:
        raise error(f"{where}: bad rule ({exc}); fix the rule or retrain") from None
    return out


def check_lesion_gate(value: Any, *, where: str, error: type[Exception] = ModelError) -> float:
    """A lesion gate as a float in [0, 1) (0: off), else ``error`` naming ``where``."""
    try:
        gate = float(value)
    except (TypeError, ValueError):
        raise error(f"{where}: lesion_gate must be a lung fraction such as 0.01, got {value!r}") from None
    if not (0.0 <= gate < 1.0):
        raise error(f"{where}: lesion_gate must be in [0, 1) (0 turns it off), got {gate!r}")
    return gate


def write_card(directory: Path, card: dict[str, Any]) -> dict[str, Any]:
    """Stamp ``hash`` and write ``model.json`` atomically (NaN as null); returns the stamped card."""
    card = json_safe(dict(card))
    card["hash"] = card_hash(card)
    text = json.dumps(card, indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write_bytes(directory / CARD_NAME, text.encode())
    return card


def read_card(directory: str | Path, *, kind: str | None = None, verify: bool = True) -> dict[str, Any]:
    """Read and check a ``model.json`` card (format, version, kind, classes, hash)."""
    directory = Path(directory)
    path = directory / CARD_NAME
    if not directory.is_dir():
        raise ModelError(f"model folder {directory} does not exist: train one with `covidct train` first")
    if not path.is_file():
        raise ModelError(f"{path} is missing: {directory} is not a covidct model folder")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}); restore it or retrain") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise ModelError(f"{path} is not a covidct model card (format must be {FORMAT!r})")
    version = str(card.get("format_version", ""))
    if version.split(".")[0] != BUNDLE_FORMAT_VERSION.split(".")[0]:
        raise ModelError(
            f"{path} has bundle format {version or '?'}, this covidct reads {BUNDLE_FORMAT_VERSION}: "
            "retrain the model or use the covidct version that wrote it"
        )
    if kind is not None and card.get("kind") != kind:
        hint = ""
        if card.get("kind") in COMPONENT_KINDS and kind == "pipeline":
            hint = f"; pass the pipeline folder above it ({directory.parent})"
        raise ModelError(f"{path} describes a {card.get('kind')!r} model, expected {kind!r}{hint}")
    classes = card.get("classes")
    if card.get("kind") in ("classifier", "pipeline") and list(classes or []) != list(CLASS_NAMES):
        raise ModelError(
            f"{path} has classes {classes}, this covidct uses {list(CLASS_NAMES)} (order matters): "
            "the model was trained for a different label set"
        )
    expected_labels = {"segmenter": LUNG_LABEL_NAMES, "lesions": LESION_LABEL_NAMES}.get(
        str(card.get("kind"))
    )
    if expected_labels is not None:
        try:
            labels = {int(k): v for k, v in dict(card.get("labels") or {}).items()}
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{path}: labels must map label numbers to names ({exc})") from None
        if labels != expected_labels:
            raise ModelError(f"{path} has labels {labels}, expected {expected_labels}")
    if verify:
        stored = card.get("hash")
        if stored != card_hash(card):
            raise ModelError(
                f"{path}: content hash mismatch (card says {stored}, content gives {card_hash(card)}); "
                "the card was edited or is damaged: restore the original folder or retrain"
            )
    return dict(card)


def save_component(
    directory: str | Path, state_dict: dict[str, torch.Tensor], card: dict[str, Any]
) -> dict[str, Any]:
    """Write a component bundle: weights as safetensors, then the card (with the weights' SHA-256 and hash).

    ``card`` needs at least ``kind`` and ``architecture``; format fields, software versions and the creation
    time are filled in. Existing files are replaced atomically, never left half-written.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kind = card.get("kind")
    if kind not in COMPONENT_KINDS:
        raise ValueError(f"card kind must be one of {COMPONENT_KINDS}, got {kind!r}")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    atomic_write(
        directory / WEIGHTS_NAME,
        # one metadata key: safetensors writes its metadata map in a random order, so two keys would make
        # the same weights give different files (and content hashes) from run to run
        lambda tmp: save_file(tensors, str(tmp), metadata={"format": f"{FORMAT}/{kind}"}),
    )
    full: dict[str, Any] = {
        "format": FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "kind": kind,
        "name": card.get("name", directory.name),
        "version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    full.update(card)
    full["software"] = software_versions()
    full["weights"] = {"file": WEIGHTS_NAME, "sha256": file_sha256(directory / WEIGHTS_NAME)}
    return write_card(directory, full)


def load_component(
    directory: str | Path, *, kind: str, verify: bool = True
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a component bundle: the checked card and its weights (CPU tensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    card = read_card(directory, kind=kind, verify=verify)
    wfile = directory / str(dict(card.get("weights", {})).get("file", WEIGHTS_NAME))
    if not wfile.is_file():
        raise ModelError(f"{wfile} is missing: the {kind} bundle {directory} is incomplete; retrain it")
    if verify:
        expected = dict(card.get("weights", {})).get("sha256")
        actual = file_sha256(wfile)
        if expected != actual:
            raise ModelError(
                f"{wfile}: weights do not match the card (sha256 {actual[:12]}..., card says "
                f"{str(expected)[:12]}...): the file was replaced or damaged; restore it or retrain"
            )
    try:
        state = load_file(str(wfile), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{wfile} cannot be read as safetensors ({exc}); retrain the model") from None
    return card, state


def load_state_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], *, where: Path) -> None:
    """Load weights into ``module``; a missing/unexpected key or shape mismatch becomes a ModelError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected tensors (e.g. {extra[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"shape mismatch at {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}")
        raise ModelError(
            f"{where}: the weights do not fit the architecture in the card ({'; '.join(parts)}); "
            "the card and weights come from different models"
        )
    module.load_state_dict(state, strict=True)


# --- pipelines -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelIdentity:
    """What a result records about the model that produced it."""

    name: str
    hash: str
    version: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "hash": self.hash, "version": self.version}


def write_pipeline(
    model_dir: str | Path,
    *,
    segmenter: str = "segmenter",
    classifier: str = "classifier",
    rule: dict[str, float] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Write (or refresh) the top-level pipeline ``model.json`` of ``model_dir`` from its component bundles.

    ``segmenter`` is a sub-folder name holding a segmenter bundle, or ``"classical"`` (no trained segmenter).
    ``classifier`` is the sub-folder of the classifier bundle. The components' cards are checked first.
    ``rule`` (else the classifier card's, else the registry defaults) is checked: a bad explicit ``rule``
    raises ConfigError, a bad one in the classifier card ModelError.
    """
    model_dir = Path(model_dir)
    ccard = read_card(model_dir / classifier, kind="classifier")
    if rule is not None:
        checked_rule = check_rule(rule, where=f"rule for {model_dir / CARD_NAME}", error=ConfigError)
    else:
        checked_rule = check_rule(
            ccard.get("rule") or default_rule(), where=str(model_dir / classifier / CARD_NAME)
        )
    components: dict[str, Any] = {
        "classifier": {"path": classifier, "hash": ccard["hash"], "name": ccard.get("name")},
    }
    if segmenter == "classical":
        seg_entry: str = "classical"
    else:
        scard = read_card(model_dir / segmenter, kind="segmenter")
        components["segmenter"] = {"path": segmenter, "hash": scard["hash"], "name": scard.get("name")}
        seg_entry = segmenter
    card: dict[str, Any] = {
        "format": FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "kind": "pipeline",
        "name": name or model_dir.name,
        "version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "classes": list(CLASS_NAMES),
        "rule": checked_rule,
        "segmenter": seg_entry,
        "classifier": classifier,
        "components": components,
        "preprocessing": ccard.get("preprocessing", {}),
        "training": ccard.get("training", {}),
        "validation": ccard.get("validation", {}),
        "software": software_versions(),
    }
    return write_card(model_dir, card)
