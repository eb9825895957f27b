"""covidct: normal / CAP / COVID-19 diagnosis from chest CT.

The pipeline, one module per stage, data flowing one way::

    io -> CTVolume -> segment -> lung mask -> classify -> slice probabilities -> decide -> Decision

Importing this package has no side effects: no logging set-up, no model loading.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
