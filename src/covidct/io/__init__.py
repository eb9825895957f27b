"""Ingestion: DICOM folders, zips, multi-frame files and NIfTI/NRRD/MHA volumes into a :class:`CTVolume`."""

from covidct.io.checks import ChestCheck, check_chest_ct, require_chest_ct
from covidct.io.formats import safe_extract_zip
from covidct.io.loader import Study, available_cpus, load_study, open_study
from covidct.io.volume import CTVolume, SliceInfo, StudyMeta

__all__ = [
    "CTVolume",
    "ChestCheck",
    "SliceInfo",
    "Study",
    "StudyMeta",
    "available_cpus",
    "check_chest_ct",
    "load_study",
    "open_study",
    "require_chest_ct",
    "safe_extract_zip",
]
