"""Volume formats (NIfTI / NRRD / MHA through SimpleITK), zip archives, and the canonical array orientation.

Canonical orientation (what every reader returns): array axes (z, y, x) run toward the patient's inferior,
posterior and left (the DICOM LPS axes, z reversed), so slice 0 is the most superior and column 0 is the
patient's right, the radiological display. Only axis permutations and flips are applied (no resampling);
oblique direction cosines are kept in ``direction``.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from covidct.errors import InputError
from covidct.registry import AIR_HU

#: Suffixes read as a volume image rather than DICOM.
VOLUME_SUFFIXES: dict[str, str] = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mha",
}

#: Default limits of :func:`safe_extract_zip`: total and per-member uncompressed bytes, members, and the
#: compression ratio (uncompressed / compressed) above which a member, or the whole archive, is a bomb. The
#: ratio is judged only past ``RATIO_MIN_BYTES`` uncompressed, where no honest CT data compresses that well
#: (DICOM slices deflate 2-10x; a member of zeros ~1000x), so small, very compressible files stay accepted.
MAX_ZIP_BYTES = 8 * 1024**3
MAX_ZIP_FILES = 50_000
MAX_ZIP_MEMBER_BYTES = 2 * 1024**3
MAX_ZIP_RATIO = 100.0
RATIO_MIN_BYTES = 16 * 1024**2


def volume_format(path: Path) -> str | None:
    """``"nifti"``, ``"nrrd"``, ``"mha"`` from the file name, or None."""
    name = path.name.lower()
    for suffix, fmt in VOLUME_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def canonicalize(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    origin: np.ndarray,
    direction: np.ndarray,
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, np.ndarray]:
    """Permute/flip array axes so that x -> L, y -> P, z -> I (see the module doc).

    ``direction`` columns are the LPS cosines of the array's x, y, z index axes; ``spacing`` is (z, y, x);
    ``origin`` is the LPS position of voxel [0, 0, 0]. Returns the same four, transformed.
    """
    direction = np.asarray(direction, dtype=np.float64).copy()
    origin = np.asarray(origin, dtype=np.float64).copy()
    dominant = [int(np.argmax(np.abs(direction[:, j]))) for j in range(3)]  # per array axis x, y, z
    sp_xyz = [spacing[2], spacing[1], spacing[0]]
    if sorted(dominant) == [0, 1, 2] and dominant != [0, 1, 2]:
        # array axis for each LPS axis, as numpy axes (x = 2, y = 1, z = 0)
        order_xyz = [dominant.index(k) for k in range(3)]
        hu = np.transpose(hu, [2 - order_xyz[2], 2 - order_xyz[1], 2 - order_xyz[0]])
        direction = direction[:, order_xyz]
        sp_xyz = [sp_xyz[k] for k in order_xyz]
    want = (1.0, 1.0, -1.0)  # x toward L (+), y toward P (+), z toward I (-S)
    for j in range(3):
        k = int(np.argmax(np.abs(direction[:, j])))
        if k == j and np.sign(direction[k, j]) != want[j]:
            axis = 2 - j
            n = hu.shape[axis]
            origin = origin + direction[:, j] * sp_xyz[j] * (n - 1)
            direction[:, j] = -direction[:, j]
            hu = np.flip(hu, axis=axis)
    return np.ascontiguousarray(hu), (sp_xyz[2], sp_xyz[1], sp_xyz[0]), origin, direction


def read_volume_image(path: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, np.ndarray]:
    """Read a NIfTI / NRRD / MHA file as canonical HU (values below air raised to -1024).

    Returns ``(hu, spacing_zyx, origin_lps, direction)``.
    """
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise InputError(
            f"{path}: cannot read this volume file ({first}); is it a complete NIfTI/NRRD/MHA?"
        ) from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: expected a 3-D grey-scale CT volume, got {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s)"
        )
    arr = sitk.GetArrayFromImage(image)
    if arr.shape[0] < 2:
        raise InputError(f"{path}: a single slice; a CT volume needs at least 2 slices")
    if np.issubdtype(arr.dtype, np.integer) and arr.min() >= -32768 and arr.max() <= 32767:
        hu = arr.astype(np.int16)
    else:
        hu = arr.astype(np.float32)
    np.maximum(hu, AIR_HU, out=hu)
    sx, sy, sz = image.GetSpacing()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    return canonicalize(hu, (float(sz), float(sy), float(sx)), origin, direction)


def _mib(n: float) -> str:
    return f"{n / 1024**2:,.0f} MiB" if n >= 1024**2 else f"{int(n):,} bytes"


def check_zip_members(
    zip_path: Path,
    infos: list[zipfile.ZipInfo],
    *,
    max_bytes: int,
    max_files: int,
    max_member_bytes: int,
    max_ratio: float | None,
    ratio_min_bytes: int = RATIO_MIN_BYTES,
) -> None:
    """Refuse an archive from its directory alone, before anything is extracted (:class:`InputError`)."""
    if len(infos) > max_files:
        raise InputError(f"{zip_path}: {len(infos)} members exceed the limit of {max_files} files")
    for info in infos:
        if info.file_size > max_member_bytes:
            raise InputError(
                f"{zip_path}: member {info.filename!r} is {_mib(info.file_size)} uncompressed, past the limit "
                f"of {_mib(max_member_bytes)} a file (zip bomb?); refused before extraction"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if max_ratio is not None and info.file_size > ratio_min_bytes and ratio > max_ratio:
            raise InputError(
                f"{zip_path}: member {info.filename!r} expands {ratio:,.0f}x ({_mib(info.compress_size)} to "
                f"{_mib(info.file_size)}), past the compression ratio limit of {max_ratio:g}x (zip bomb?); "
                "refused before extraction"
            )
    declared = sum(i.file_size for i in infos)
    if declared > max_bytes:
        raise InputError(f"{zip_path}: {declared} bytes uncompressed exceed the limit of {max_bytes}")
    packed = max(sum(i.compress_size for i in infos), 1)
    if max_ratio is not None and declared > ratio_min_bytes and declared / packed > max_ratio:
        raise InputError(
            f"{zip_path}: the archive expands {declared / packed:,.0f}x ({_mib(packed)} to {_mib(declared)}), "
            f"past the compression ratio limit of {max_ratio:g}x (zip bomb?); refused before extraction"
        )


def safe_extract_zip(
    zip_path: str | Path,
    dest: str | Path,
    *,
    max_bytes: int = MAX_ZIP_BYTES,
    max_files: int = MAX_ZIP_FILES,
    max_member_bytes: int = MAX_ZIP_MEMBER_BYTES,
    max_ratio: float | None = MAX_ZIP_RATIO,
    ratio_min_bytes: int = RATIO_MIN_BYTES,
) -> Path:
    """Extract ``zip_path`` into ``dest``, refusing path traversal, links and zip bombs.

    Refuses (with :class:`InputError`) absolute names, ``..`` components, symbolic links, more than
    ``max_files`` members, a member of more than ``max_member_bytes`` uncompressed, more than ``max_bytes``
    in total, and a member (or the archive) of more than ``ratio_min_bytes`` that expands more than
    ``max_ratio`` times (None: no ratio limit), all from the archive's directory before anything is written. While writing, the bytes are
    counted again (a member may not exceed what its header declares), so a lying header does not help.
    Returns ``dest``.
    """
    zip_path = Path(zip_path)
    dest = Path(dest)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{zip_path}: not a readable zip archive ({exc})") from exc
    with archive:
        infos = archive.infolist()
        check_zip_members(
            zip_path,
            infos,
            max_bytes=max_bytes,
            max_files=max_files,
            max_member_bytes=max_member_bytes,
            max_ratio=max_ratio,
            ratio_min_bytes=ratio_min_bytes,
        )
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        written = 0
        for info in infos:
            name = PurePosixPath(info.filename.replace("\\", "/"))
            if name.is_absolute() or ".." in name.parts or (name.parts and name.parts[0].endswith(":")):
                raise InputError(f"{zip_path}: unsafe member name {info.filename!r} (path traversal)")
            mode = (info.external_attr >> 16) & 0o170000
            if mode == stat.S_IFLNK:
                raise InputError(f"{zip_path}: member {info.filename!r} is a symbolic link; refused")
            target = (root / Path(*name.parts)).resolve() if name.parts else root
            if root not in target.parents and target != root:
                raise InputError(f"{zip_path}: member {info.filename!r} escapes the extraction folder")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            member_written = 0
            with archive.open(info) as src, open(target, "wb") as out:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    written += len(chunk)
                    member_written += len(chunk)
                    if written > max_bytes or member_written > info.file_size:
                        out.close()
                        target.unlink(missing_ok=True)
                        raise InputError(
                            f"{zip_path}: expands past {max_bytes} bytes or past its declared sizes (zip "
                            "bomb?); refused"
                        )
                    out.write(chunk)
    return dest
