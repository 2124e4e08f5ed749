"""Telling DICOM files apart without pydicom: by the ``.dcm`` suffix, or for files with no
suffix (scanner exports such as ``IM0001``) by the ``DICM`` magic after the 128-byte preamble.

No pydicom here: input expansion uses it, and ``--help`` must not wait for pydicom.
"""

from __future__ import annotations

from pathlib import Path

_PREAMBLE = 128
_MAGIC = b"DICM"


def has_dicom_preamble(path: str | Path) -> bool:
    """Whether bytes 128-131 of the file are ``DICM`` (the DICOM Part 10 file format)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_PREAMBLE + len(_MAGIC))
    except OSError:
        return False  # an unreadable file is reported by whatever reads it
    return head[_PREAMBLE:] == _MAGIC


def is_extensionless_dicom(path: str | Path) -> bool:
    """A DICOM file named without a suffix, as scanners export them."""
    return Path(path).suffix == "" and has_dicom_preamble(path)


def looks_like_dicom(path: str | Path) -> bool:
    """A ``.dcm`` file, or a DICOM file without a suffix."""
    return Path(path).suffix.lower() == ".dcm" or is_extensionless_dicom(path)
