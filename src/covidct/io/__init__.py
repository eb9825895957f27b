"""Ingestion: DICOM folders, zips, multi-frame files and NIfTI/NRRD/MHA volumes into a :class:`CTVolume`."""

from covidct.io.volume import CTVolume, SliceInfo, StudyMeta

__all__ = ["CTVolume", "SliceInfo", "StudyMeta"]
