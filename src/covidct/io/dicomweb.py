"""Studies read through DICOMweb: ``dicomweb+http://HOST:PORT/ROOT/studies/<StudyUID>[/series/<SeriesUID>]``.

The instances are fetched with WADO-RS (dicomweb-client) into a local folder and read like any DICOM folder.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from covidct.errors import ConfigError, InputError

log = logging.getLogger(__name__)

SCHEME_PREFIX: str = "dicomweb+"
_PATH = re.compile(r"^(?P<root>.*?)/studies/(?P<study>[0-9.]+)(?:/series/(?P<series>[0-9.]+))?/?$")


@dataclass(frozen=True)
class DicomWebRef:
    """Where a study (or one of its series) lives on a DICOMweb server."""

    root: str
    study: str
    series: str | None = None

    @property
    def name(self) -> str:
        """A short name for outputs: the last part of the series (else study) UID."""
        uid = self.series or self.study
        return f"dicomweb-{uid.rsplit('.', 1)[-1]}"


def is_dicomweb(source: object) -> bool:
    return isinstance(source, str) and source.lower().startswith(SCHEME_PREFIX)


def parse(url: str) -> DicomWebRef:
    """Split a ``dicomweb+http(s)://`` URL; ConfigError naming the expected form otherwise."""
    rest = url[len(SCHEME_PREFIX) :] if is_dicomweb(url) else url
    m = _PATH.match(rest)
    if not rest.lower().startswith(("http://", "https://")) or m is None:
        raise ConfigError(
            f"{url}: expected dicomweb+http://HOST:PORT/DICOMWEB-ROOT/studies/<StudyInstanceUID>"
            "[/series/<SeriesInstanceUID>]"
        )
    return DicomWebRef(m["root"], m["study"], m["series"])


def _save(path: Path, *, ds: Any) -> None:
    ds.save_as(path, enforce_file_format=True)


def fetch(ref: DicomWebRef, dest: str | Path) -> Path:
    """Retrieve the study or series by WADO-RS into ``dest`` (one file per instance); returns ``dest``.

    InputError when the server cannot be reached or holds no such study/series.
    """
    from dicomweb_client.api import DICOMwebClient

    from covidct._files import atomic_write

    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    client = DICOMwebClient(url=ref.root)
    what = f"series {ref.series}" if ref.series else f"study {ref.study}"
    try:
        if ref.series:
            datasets = client.retrieve_series(ref.study, ref.series)
        else:
            datasets = client.retrieve_study(ref.study)
    except Exception as exc:  # requests' connection and HTTP errors
        raise InputError(
            f"{ref.root}: could not retrieve {what} by WADO-RS ({type(exc).__name__}); check the URL and that "
            "the server is running"
        ) from None
    if not datasets:
        raise InputError(f"{ref.root}: the server holds no instances of {what}")
    for i, ds in enumerate(datasets):
        name = str(getattr(ds, "SOPInstanceUID", "") or i)
        atomic_write(out / f"{name}.dcm", partial(_save, ds=ds))
    log.info("retrieved %d instances by WADO-RS", len(datasets))
    return out
