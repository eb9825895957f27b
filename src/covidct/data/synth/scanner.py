"""Scanner profiles ("medical centres"): sampling, noise, stored-value encoding and file naming.

A profile fixes what a centre does (manufacturer, kernels, pixel encoding, compression, file naming,
localizer habits); each patient then draws slice thickness, spacing, dose and kernel from the profile's ranges.
``"default"`` mixes all profiles patient by patient, as a multi-centre dataset does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from covidct.errors import ConfigError


@dataclass(frozen=True)
class Profile:
    name: str
    manufacturer: str
    model: str
    thickness_mm: tuple[float, ...]
    kernels: tuple[tuple[str, float], ...]  # (name, sharpness 0 smooth .. 1 sharp)
    noise_hu: tuple[float, float]  # range of noise standard deviation (dose)
    intercept: int  # RescaleIntercept
    signed: bool  # PixelRepresentation 1
    bits_stored: int
    compression: tuple[str, ...]  # "jpeg-lossless" | "none" (one drawn per patient)
    naming: str  # "siemens" | "uid" | "counter-shuffled"
    localizer_p: float  # probability that the folder also holds a localizer
    padding: int | None  # stored value outside the reconstruction circle (None: air)
    fov_mm: tuple[float, float]


PROFILES: dict[str, Profile] = {
    "siemens-scope": Profile(
        "siemens-scope",
        "SIEMENS",
        "SOMATOM Scope",
        (2.0,),
        (("D40s", 0.4), ("B70s", 0.9)),
        (8.0, 16.0),
        -1024,
        False,
        12,
        ("jpeg-lossless",),
        "siemens",
        0.0,
        None,
        (300.0, 390.0),
    ),
    "ge-lightspeed": Profile(
        "ge-lightspeed",
        "GE MEDICAL SYSTEMS",
        "LightSpeed VCT",
        (1.25, 2.5, 5.0),
        (("STANDARD", 0.3), ("LUNG", 0.95)),
        (8.0, 22.0),
        -1024,
        True,
        16,
        ("none",),
        "uid",
        0.4,
        -2000,
        (320.0, 420.0),
    ),
    "toshiba-aquilion": Profile(
        "toshiba-aquilion",
        "TOSHIBA",
        "Aquilion",
        (1.0, 2.0, 3.0),
        (("FC08", 0.2), ("FC52", 0.85)),
        (6.0, 18.0),
        0,
        True,
        16,
        ("none", "jpeg-lossless"),
        "counter-shuffled",
        0.3,
        -2048,
        (320.0, 400.0),
    ),
    "philips-ingenuity": Profile(
        "philips-ingenuity",
        "Philips",
        "Ingenuity CT",
        (1.0, 2.0, 3.0, 5.0),
        (("B", 0.35), ("YA", 0.8)),
        (9.0, 24.0),
        -1024,
        False,
        12,
        ("jpeg-lossless", "none"),
        "uid",
        0.5,
        None,
        (330.0, 420.0),
    ),
}
SITES: tuple[str, ...] = ("default", *PROFILES)


@dataclass(frozen=True)
class ScannerSettings:
    """What one series was acquired and stored with."""

    site: str
    manufacturer: str
    model: str
    thickness_mm: float
    spacing_z_mm: float
    n_slices: int
    size: int
    pixel_mm: float
    kernel: str
    sharpness: float
    noise_hu: float
    intercept: int
    signed: bool
    bits_stored: int
    compression: str
    naming: str
    localizer: bool
    padding: int | None

    def as_row(self) -> dict[str, object]:
        return asdict(self)


def sample_settings(
    site: str, rng: np.random.Generator, *, size: str, extent_mm: float, n_slices: int | None = None
) -> ScannerSettings:
    """Draw a patient's scanner settings from ``site`` for a scan of ``extent_mm`` along z.

    ``size="full"``: 512 x 512 and 100-300 slices (thickness from the profile); ``size="small"``: 128 x 128 and
    30-60 slices (for tests). ``n_slices`` forces the slice count (spacing follows from the extent).
    """
    if site not in SITES:
        raise ConfigError(f"unknown scanner site {site!r}: use one of {', '.join(SITES)}")
    if size not in ("full", "small"):
        raise ConfigError(f"unknown size {size!r}: use 'full' or 'small'")
    if site == "default":
        names = list(PROFILES)
        prof = PROFILES[names[int(rng.choice(len(names), p=[0.4, 0.2, 0.2, 0.2]))]]
    else:
        prof = PROFILES[site]
    thickness = float(rng.choice(prof.thickness_mm))
    if size == "full":
        matrix = 512
        spacing = thickness if thickness <= 3.0 else thickness / 2
        n = int(np.clip(round(extent_mm / spacing), 100, 300))
    else:
        matrix = 128
        n = int(rng.integers(30, 61))
    if n_slices is not None:
        n = int(n_slices)
    spacing = extent_mm / n
    if size == "small" or n_slices is not None:
        thickness = round(max(spacing, min(thickness, 5.0)), 2) if size == "full" else round(spacing, 2)
    fov = float(rng.uniform(*prof.fov_mm))
    kernel, sharp = prof.kernels[int(rng.integers(len(prof.kernels)))]
    noise = float(rng.uniform(*prof.noise_hu)) * (1.0 + 0.5 * sharp)
    return ScannerSettings(
        site=prof.name,
        manufacturer=prof.manufacturer,
        model=prof.model,
        thickness_mm=float(thickness),
        spacing_z_mm=float(spacing),
        n_slices=n,
        size=matrix,
        pixel_mm=fov / matrix,
        kernel=kernel,
        sharpness=float(sharp),
        noise_hu=noise / np.sqrt(max(thickness, 0.5) / 2.0),
        intercept=prof.intercept,
        signed=prof.signed,
        bits_stored=prof.bits_stored,
        compression=str(rng.choice(prof.compression)),
        naming=prof.naming,
        localizer=bool(rng.random() < prof.localizer_p),
        padding=prof.padding,
    )


def add_noise(hu: np.ndarray, s: ScannerSettings, rng: np.random.Generator) -> np.ndarray:
    """Add quantum noise of ``s.noise_hu`` (in place) whose texture follows the kernel sharpness.

    Noise is drawn from a bank of 8 slices rolled by random offsets (cheap and visually independent):
    a sharp kernel gives white noise, a smooth one noise correlated over a few pixels.
    """
    from scipy import ndimage

    z, h, w = hu.shape
    bank = rng.standard_normal((8, h, w), dtype=np.float32)
    smooth = ndimage.uniform_filter(bank, size=(1, 3, 3))
    smooth /= max(float(smooth.std()), 1e-6)
    bank = np.sqrt(s.sharpness) * bank + np.sqrt(1.0 - s.sharpness) * smooth
    bank *= np.float32(s.noise_hu)
    shifts = rng.integers(0, [h, w], size=(z, 2))
    for i in range(z):
        hu[i] += np.roll(bank[i % 8], tuple(int(v) for v in shifts[i]), axis=(0, 1))
    return hu


def apply_fov(hu: np.ndarray, s: ScannerSettings) -> np.ndarray:
    """Pixels outside the reconstruction circle: stored padding (GE, Toshiba) or air."""
    h, w = hu.shape[1:]
    yy, xx = np.ogrid[:h, :w]
    outside = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 > (min(h, w) / 2) ** 2
    if s.padding is not None:
        hu[:, outside] = s.padding + s.intercept
    return hu


def to_stored(hu: np.ndarray, s: ScannerSettings) -> np.ndarray:
    """HU (int16) -> stored pixel values (``uint16`` or ``int16``) for this scanner's encoding."""
    stored = hu.astype(np.int32) - s.intercept
    if s.signed:
        lo, hi = -(2 ** (s.bits_stored - 1)), 2 ** (s.bits_stored - 1) - 1
        return np.clip(stored, lo, hi).astype(np.int16)
    return np.clip(stored, 0, 2**s.bits_stored - 1).astype(np.uint16)
