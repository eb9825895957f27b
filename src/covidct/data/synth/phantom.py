"""One synthetic patient in memory: anatomy + disease + scanner, with ground truth.

``generate_patient("covid19", seed=3)`` returns a :class:`SynthPatient` whose ``hu`` is what a DICOM reader
decodes from the written files (int16 HU, slice 0 most superior; outside the reconstruction circle some
scanners store padding, e.g. -3024 or -2048 HU), with the lung mask (0/1/2, 1 = patient's right), the lesion
mask (0/1) and the slice / lobe labels in COVID-CT-MD's convention (superior -> inferior; lobes LLL, LUL, RLL,
RML, RUL).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from covidct.data.synth import disease as dis
from covidct.data.synth.anatomy import Anatomy, Body, Grid, build_anatomy
from covidct.data.synth.scanner import ScannerSettings, add_noise, apply_fov, sample_settings
from covidct.data.synth.shapes import nearest2, upsample2
from covidct.errors import ConfigError
from covidct.io.volume import CTVolume, SliceInfo, StudyMeta
from covidct.registry import CLASS_NAMES, class_index

#: Smallest lesion area (mm^2) that makes a slice "infected" in the slice labels.
MIN_LESION_AREA_MM2 = 12.0


@dataclass
class SynthPatient:
    """A generated study and its ground truth (see the module docstring for conventions)."""

    cls: str  # registry class name
    seed: int
    hu: np.ndarray  # int16 (z, y, x)
    spacing: tuple[float, float, float]  # (z, y, x) mm
    origin: tuple[float, float, float]  # LPS x, y, z of voxel [0, 0, 0]
    lung_mask: np.ndarray  # uint8 0/1/2
    lesion_mask: np.ndarray  # uint8 0/1
    slice_labels: np.ndarray  # int32 (z,)
    lobe_labels: np.ndarray  # float64 (z, 5)
    settings: ScannerSettings
    pattern: str
    findings: list[str] = field(default_factory=list)
    localizer: np.ndarray | None = None  # float32 HU projection (z, x) when the folder holds one

    @property
    def lesion_burden(self) -> float:
        """Lesion voxels / lung voxels (NaN without lung)."""
        lung = int(np.count_nonzero(self.lung_mask))
        return float(np.count_nonzero(self.lesion_mask)) / lung if lung else float("nan")

    @property
    def z_positions(self) -> np.ndarray:
        return self.origin[2] - self.spacing[0] * np.arange(self.hu.shape[0])

    def volume(self) -> CTVolume:
        """The study as a :class:`CTVolume` with this patient's geometry."""
        slices = [SliceInfo("", float(z), i + 1) for i, z in enumerate(self.z_positions)]
        meta = StudyMeta(
            manufacturer=self.settings.manufacturer, series_description="synthetic", input_format="synth"
        )
        return CTVolume(self.hu, self.spacing, self.origin, np.diag([1.0, 1.0, -1.0]), slices, meta)


def _compose(
    a: Anatomy, d: dis.Disease, rng: np.random.Generator, cls: str, findings: list[str]
) -> np.ndarray:
    """Vessels, airway walls and lumens over the parenchyma (after disease, so vessels show through GGO)."""
    hu = a.hu
    lung = (a.lung > 0) & ~d.effusion
    vessel = a.vessel * (a.thorax & ~d.effusion)
    hu += vessel * (40.0 - hu)
    wall = np.clip(a.wall - a.airway, 0.0, 1.0) * lung
    hu += 0.7 * wall * (-60.0 - hu)
    hu += (a.airway * lung) * (-1000.0 - hu)
    if rng.random() < 0.2:  # cardiac / breathing motion: doubled edges on a run of lower slices
        n = hu.shape[0]
        start = int(rng.integers(n // 2, max(n - 3, n // 2 + 1)))
        stop = min(n, start + max(2, n // 10))
        shift = int(rng.integers(2, 4))
        hu[start:stop] = 0.65 * hu[start:stop] + 0.35 * np.roll(hu[start:stop], shift, axis=1)
        findings.append("motion")
    return hu


def generate_patient(
    cls: str, *, seed: int, size: str = "small", site: str = "default", n_slices: int | None = None
) -> SynthPatient:
    """Generate one patient of class ``cls`` (``normal``, ``cap``, ``covid19``; display names accepted).

    ``size="small"``: 128 x 128, 30-60 slices (tests); ``"full"``: 512 x 512, 100-300 slices. ``site`` is a
    scanner profile of :data:`covidct.data.synth.scanner.SITES`. Same arguments -> same arrays.
    """
    try:
        name = CLASS_NAMES[class_index(cls)]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
    body = Body.sample(rng)
    above = float(rng.uniform(8, 25))
    extent = above + body.lung_height * 1.38 + float(rng.uniform(20, 50))
    s = sample_settings(site, rng, size=size, extent_mm=extent, n_slices=n_slices)
    need = 2 * (body.aw + 12 + body.muscle + body.fat) + 10
    if s.size * s.pixel_mm < need:
        s = dataclasses.replace(s, pixel_mm=need / s.size)
    factor = 2 if s.size >= 256 else 1
    grid = Grid(
        n_slices=s.n_slices,
        size=s.size,
        factor=factor,
        pixel_mm=s.pixel_mm,
        dz=s.spacing_z_mm,
        s0=-above,
        bx=float(rng.uniform(-10, 10)),
        by=float(rng.uniform(-25, -5)),
    )
    a = build_anatomy(grid, body, rng)
    findings = dis.look_alikes(a, rng)
    if name in ("covid19", "cap"):
        clean = a.hu.copy()
        burden = float(rng.beta(1.3, 2.0) if name == "covid19" else rng.beta(1.5, 2.0))
        for _ in range(
            6
        ):  # an abnormal patient must show disease: redraw (bigger) if none landed in the lung
            d = dis.covid19(a, rng, burden=burden) if name == "covid19" else dis.cap(a, rng, burden=burden)
            if np.count_nonzero((d.lesion >= 0.5) & (a.lung > 0)) * (s.pixel_mm * factor) ** 2 >= 50.0:
                break
            a.hu[...] = clean
            burden = min(1.0, burden + 0.2)
    else:
        d = dis.Disease(np.zeros(a.hu.shape, np.float32), np.zeros(a.hu.shape, bool), "none")
    hu = _compose(a, d, rng, name, findings)
    if s.sharpness > 0.7:  # sharp kernel: edge enhancement
        hu += 0.35 * (hu - ndimage.uniform_filter(hu, size=(1, 3, 3)))
    lung = np.where(d.effusion, 0, a.lung).astype(np.uint8)
    lesion = ((d.lesion >= 0.5) & (lung > 0)).astype(np.uint8)
    # labels: a slice is infected when its lesion area reaches MIN_LESION_AREA_MM2 (counted on the work grid,
    # whose pixels are factor x factor output pixels)
    n = lesion.shape[0]
    area = lesion.reshape(n, -1).sum(1) * (s.pixel_mm * factor) ** 2
    slice_labels = (area >= MIN_LESION_AREA_MM2).astype(np.int32)
    lobe_labels = np.zeros((n, 5), dtype=np.float64)
    for k in range(5):
        hit = ((a.lobe == k + 1) & (lesion > 0)).reshape(n, -1).any(1)
        lobe_labels[:, k] = hit & (slice_labels > 0)
    if factor == 2:
        hu = upsample2(hu)
        lung, lesion = nearest2(lung), nearest2(lesion)
    add_noise(hu, s, rng)
    np.clip(hu, -1024, 3071, out=hu)
    hu = apply_fov(np.rint(hu).astype(np.int16), s)
    fov = s.size * s.pixel_mm
    z0 = float(np.round(rng.uniform(-90, 10), 1))
    origin = (-fov / 2 + s.pixel_mm / 2 - grid.bx * 0, -fov / 2 + s.pixel_mm / 2 - 150.0, z0)
    localizer = None
    if s.localizer:
        localizer = np.clip(hu, -1024, 3071).astype(np.float32).mean(axis=1) * 2.0 + 1000.0
    return SynthPatient(
        cls=name,
        seed=int(seed),
        hu=hu,
        spacing=(s.spacing_z_mm, s.pixel_mm, s.pixel_mm),
        origin=origin,
        lung_mask=lung,
        lesion_mask=lesion,
        slice_labels=slice_labels,
        lobe_labels=lobe_labels,
        settings=s,
        pattern=d.pattern,
        findings=findings,
        localizer=localizer,
    )
