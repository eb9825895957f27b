"""Cohort-scale diagnosis: many studies into per-study JSON and one results table, in one process or on Ray."""

from covidct.cohort.run import ENGINES, CohortSummary, diagnose_cohort
from covidct.cohort.table import CohortStudy, read_study_list, studies_from_inputs

__all__ = [
    "ENGINES",
    "CohortStudy",
    "CohortSummary",
    "diagnose_cohort",
    "read_study_list",
    "studies_from_inputs",
]
