"""Realistic training data: synthetic disease drawn into real lungs, with real lesion textures.

- :mod:`~covidct.data.realistic.donors`: real ground-glass / consolidation patches (COVID-SemiSeg folders).
- :mod:`~covidct.data.realistic.lesions`: COVID-19 and CAP patterns placed into a real volume, in HU.
- :mod:`~covidct.data.realistic.cohort`: :func:`build_realistic_cohort`, a manifest cohort of variants.
"""

from covidct.data.realistic.cohort import RealisticSettings, build_realistic_cohort
from covidct.data.realistic.donors import LesionBank, load_bank

__all__ = ["LesionBank", "RealisticSettings", "build_realistic_cohort", "load_bank"]
