"""Synthetic chest CT cohorts (normal / CAP / COVID-19 phantoms) with ground truth, in the COVID-CT-MD layout.

``generate_patient(cls, seed=...)`` makes one study in memory; ``generate_cohort(out, patients=...)`` writes a
cohort to disk (DICOM, Index.csv, label arrays, NIfTI masks, cohort.csv). See :mod:`.cohort` and :mod:`.phantom`.
"""

from __future__ import annotations

from covidct.data.synth.cohort import class_counts, generate_cohort
from covidct.data.synth.phantom import SynthPatient, generate_patient
from covidct.data.synth.scanner import SITES

__all__ = ["SITES", "SynthPatient", "class_counts", "generate_cohort", "generate_patient"]
