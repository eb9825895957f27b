"""Ingestion: DICOM folders, zips, multi-frame files and NIfTI/NRRD/MHA volumes into a :class:`CTVolume`."""

from covidct.io.formats import safe_extract_zip
from covidct.io.loader import Study, load_study, open_study
from covidct.io.volume import CTVolume, SliceInfo, StudyMeta

__all__ = ["CTVolume", "SliceInfo", "Study", "StudyMeta", "load_study", "open_study", "safe_extract_zip"]
