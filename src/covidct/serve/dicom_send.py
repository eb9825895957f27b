"""Send result objects to a PACS: C-STORE to ``AET@HOST:PORT`` (pynetdicom) or STOW-RS (dicomweb-client)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from covidct.errors import ConfigError, CovidCTError

log = logging.getLogger(__name__)

_DEST = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>[0-9]{1,5})$")


class SendError(CovidCTError):
    """The PACS did not take the results (unreachable, association rejected, or a failure status)."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer: its AE title, host and port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AET@HOST:PORT``, e.g. ``ORTHANC@127.0.0.1:4242``; ConfigError naming the form otherwise."""
        m = _DEST.match(text.strip())
        if m is None or not 0 < int(m["port"]) < 65536:
            raise ConfigError(f"--send-to {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
        return cls(m["aet"], m["host"], int(m["port"]))


def c_store(
    paths: Sequence[Path], dest: Destination, *, calling_ae: str = "COVIDCT", timeout_s: float = 60.0
) -> None:
    """Send the files by C-STORE in one association; SendError when any is not stored."""
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise SendError(f"could not open an association with {dest.ae_title}@{dest.host}:{dest.port}")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code not in (0x0000, 0xB000, 0xB006, 0xB007):
                raise SendError(
                    f"{dest.ae_title} refused a result object ({ds.Modality}, status 0x{code & 0xFFFF:04X})"
                )
    finally:
        assoc.release()


def stow_rs(paths: Sequence[Path], url: str, *, timeout_s: float = 60.0) -> None:
    """Store the files through STOW-RS at ``url`` (the DICOMweb root, e.g. http://host:8042/dicom-web)."""
    import pydicom
    from dicomweb_client.api import DICOMwebClient

    datasets = [pydicom.dcmread(p) for p in paths]
    client = DICOMwebClient(url=url.rstrip("/"))
    try:
        response = client.store_instances(datasets)
    except Exception as exc:  # requests' HTTPError and connection errors
        raise SendError(f"STOW-RS to {url} failed: {type(exc).__name__}: {exc}") from exc
    failed = getattr(response, "FailedSOPSequence", None)
    if failed:
        raise SendError(f"STOW-RS to {url}: {len(failed)} of {len(datasets)} result objects were refused")
    log.debug("STOW-RS: %d objects stored", len(datasets))
