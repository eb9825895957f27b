"""The one source of class names, label values, windows and default model settings.

Everything that needs a class order, a lung label value or a default window imports it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final


class Diagnosis(IntEnum):
    """Patient and slice classes, in the order used everywhere (probability columns, confusion matrices)."""

    NORMAL = 0
    CAP = 1
    COVID19 = 2


#: Machine names of the classes, index = ``Diagnosis`` value.
CLASS_NAMES: Final[tuple[str, ...]] = ("normal", "cap", "covid19")
#: Human names of the classes, index = ``Diagnosis`` value.
DISPLAY_NAMES: Final[tuple[str, ...]] = ("Normal", "CAP", "COVID-19")
NUM_CLASSES: Final[int] = len(CLASS_NAMES)
#: SNOMED CT concept of each patient-level class, index = ``Diagnosis`` value: (code value, code meaning).
#: A DICOM Code Meaning is at most 64 characters (LO): 840539006's preferred term ("Disease caused by severe
#: acute respiratory syndrome coronavirus 2", 65) does not fit, so its SNOMED CT synonym COVID-19 is used.
CLASS_SNOMED: Final[tuple[tuple[str, str], ...]] = (
    ("17621005", "Normal"),
    ("385093006", "Community acquired pneumonia"),
    ("840539006", "COVID-19"),
)


def class_index(name: str) -> int:
    """Index of a class from its machine or display name (case-insensitive, ``covid-19`` accepted)."""
    key = name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    aliases = {"normal": 0, "cap": 1, "pneumonia": 1, "covid19": 2, "covid": 2}
    if key not in aliases:
        raise ValueError(f"unknown class {name!r}: use one of {', '.join(CLASS_NAMES)}")
    return aliases[key]


class LungLabel(IntEnum):
    """Values of a lung mask (uint8), the lungmask convention. Right = the patient's right."""

    BACKGROUND = 0
    RIGHT = 1
    LEFT = 2


LUNG_LABEL_NAMES: Final[dict[int, str]] = {0: "background", 1: "right_lung", 2: "left_lung"}

#: COVID-CT-MD lobe order of the lobe-level label arrays (last axis).
LOBES: Final[tuple[str, ...]] = ("LLL", "LUL", "RLL", "RML", "RUL")


@dataclass(frozen=True)
class Window:
    """A display window in Hounsfield units."""

    level: float
    width: float

    @property
    def low(self) -> float:
        return self.level - self.width / 2

    @property
    def high(self) -> float:
        return self.level + self.width / 2


LUNG_WINDOW: Final[Window] = Window(level=-600.0, width=1200.0)
MEDIASTINAL_WINDOW: Final[Window] = Window(level=50.0, width=350.0)

#: HU given to padding and out-of-field pixels.
AIR_HU: Final[int] = -1024

# --- the paper's patient rule -------------------------------------------------------------------
#: Fraction of the slice sequence dropped at the superior end (head) and at the inferior end (tail).
TRUNCATE_HEAD: Final[float] = 0.10
TRUNCATE_TAIL: Final[float] = 0.14
#: If normal has the most slices but COVID-19 + CAP exceed this fraction of the kept sequence, answer the larger.
ABNORMAL_FRACTION_THRESHOLD: Final[float] = 0.20

# --- default model settings ---------------------------------------------------------------------
CLASSIFIER_IMAGE_SIZE: Final[int] = 224
CLASSIFIER_ARCH: Final[str] = "resnet50"
SEGMENTER_IMAGE_SIZE: Final[int] = 256

#: Folder names of the COVID-CT-MD releases, class -> accepted spellings (compared case-insensitively).
DATASET_FOLDERS: Final[dict[str, tuple[str, ...]]] = {
    "covid19": ("COVID-19 subjects", "COVID-19 Cases", "COVID-19"),
    "cap": ("CAP subjects", "Cap subjects", "Cap Cases", "CAP Cases", "CAP"),
    "normal": ("Normal subjects", "Normal Cases", "Normal"),
}

#: Bundle format version written to ``model.json``; loading refuses other major versions.
#: 1.1: the card's content hash leaves out ``created`` (1.0 cards, which hashed it, still load).
#: 1.2: it also leaves out ``training.sources``, the folders the data was read from (1.1 cards still load).
BUNDLE_FORMAT_VERSION: Final[str] = "1.2"

#: Scanner profiles of the synthetic cohorts ("default" mixes the others patient by patient);
#: ``covidct.data.synth.scanner.PROFILES`` defines them, a test keeps the two in step.
SYNTH_SITES: Final[tuple[str, ...]] = (
    "default",
    "siemens-scope",
    "ge-lightspeed",
    "toshiba-aquilion",
    "philips-ingenuity",
)

#: The pretrained pipeline used when no ``--model`` is given: ``$COVIDCT_MODEL`` if set, else the ``models/``
#: folder at the root of a source checkout (see :func:`covidct.diagnose.resolve_model_dir`).
MODEL_ENV: Final[str] = "COVIDCT_MODEL"
SHIPPED_MODEL_FOLDER: Final[str] = "models"


# --- lesions ------------------------------------------------------------------------------------
class LesionLabel(IntEnum):
    """Values of a lesion mask (uint8): 0 background, 1 ground-glass opacity, 2 consolidation."""

    BACKGROUND = 0
    GROUND_GLASS = 1
    CONSOLIDATION = 2


LESION_LABEL_NAMES: Final[dict[int, str]] = {0: "background", 1: "ground_glass", 2: "consolidation"}
#: Training target "lesion, type not given" (binary masks): only ground glass + consolidation is asked for.
LESION_ANY: Final[int] = 3
#: Lesion network input: a slice cropped to the lungs, in this window (lung, ground glass, consolidation and
#: soft tissue all distinct), resized to LESION_IMAGE_SIZE.
LESION_WINDOW: Final[Window] = Window(level=-500.0, width=1500.0)
LESION_IMAGE_SIZE: Final[int] = 192
#: Where a pipeline folder keeps its lesion model (``MODEL/lesions``).
LESION_FOLDER: Final[str] = "lesions"
