"""CT volumes: a 3-D sinogram array, or a folder of DICOM sinograms of one series, in; a
volume in HU and a derived DICOM series out; slices batched like images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from conftest import ct_dataset, ct_hu_phantom, files_in, load_report
from pydicom.uid import generate_uid

from resample_cli.fileio.ct import equal_angles, hu_to_unit, unit_to_hu
from resample_cli.operators import ParallelBeamCT

pytestmark = pytest.mark.usefixtures("offline", "one_thread")

SIZE, ANGLES = 32, 12


def _slices() -> np.ndarray:
    """Three phantoms told apart by their bone insert's place, in [0, 1]."""
    hu = np.stack([np.roll(ct_hu_phantom(SIZE), shift, axis=1) for shift in (-6, 0, 6)])
    return hu_to_unit(hu)


def _project(images: np.ndarray) -> np.ndarray:
    op = ParallelBeamCT(list(equal_angles(ANGLES)), SIZE, det_count=SIZE)
    with torch.no_grad():
        return op(torch.from_numpy(images)[:, None].double()).float().numpy()[:, 0]


def _rms(volume_hu: np.ndarray, sinograms: np.ndarray) -> np.ndarray:
    """||y - A x|| / sqrt(m) of each slice against each sinogram: [slice, sinogram]."""
    fitted = _project(hu_to_unit(volume_hu))
    return np.sqrt(((fitted[:, None] - sinograms[None]) ** 2).mean(axis=(2, 3)))


def test_a_3d_sinogram_array_gives_a_volume_batched_like_images(tmp_path, cli, model_args):
    sinograms = _project(_slices())
    np.save(tmp_path / "vol.npy", sinograms)
    run = ["ct", tmp_path / "vol.npy", "--angles", ANGLES, "--noise", "0.05", *model_args]
    cli(*run, "-o", tmp_path / "three", "--batch-size", "3")
    assert files_in(tmp_path / "three") == {"vol.npy", "vol.report.json"}
    volume = np.load(tmp_path / "three" / "vol.npy")
    assert volume.shape == (3, SIZE, SIZE) and volume.dtype == np.float32
    report = load_report(tmp_path / "three" / "vol.report.json")
    assert report["operator"]["slices"] == 3 and report["batch"] == {"inputs": 1, "batch_size": 3}
    # The report's residual is that of the whole volume, recomputed here from the file.
    fits = _rms(volume, sinograms)
    whole = float(np.sqrt(np.mean(np.diagonal(fits) ** 2)))
    assert report["residual"]["rms"] == pytest.approx(whole, rel=1e-3)
    # Each slice fits its own sinogram best: the slices kept their order.
    assert (fits.argmin(axis=1) == [0, 1, 2]).all()

    cli(*run, "-o", tmp_path / "one")  # a slice per call
    alone = np.load(tmp_path / "one" / "vol.npy")
    # Batched network arithmetic moves [0, 1] values by up to 5e-4 (test_batching): 2 HU.
    np.testing.assert_allclose(volume, alone, atol=5e-4 * float(unit_to_hu(1) - unit_to_hu(0)))


def _dicom_sinogram(path: Path, sinogram: np.ndarray, number: int, series: str, study: str) -> str:
    """One slice's sinogram as a DICOM file (stored = 100 x value, slope 0.01); its SOPInstanceUID."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = ct_dataset(path, sinogram.shape, slope=0.01, intercept=0)
    ds.PatientName, ds.PatientID = "Phantom^Volume", "PH-9"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.InstanceNumber = "CT", number
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 2.5 * number], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1.0, 0.8]  # between angles (meaningless), between detectors: 0.8 mm
    ds.PixelData = np.round(sinogram * 100).astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID


def test_a_folder_of_dicom_sinograms_gives_a_volume_and_a_derived_series(tmp_path, cli, model_args):
    """The files' names run against their InstanceNumbers: the volume follows the numbers."""
    sinograms = _project(_slices())
    series, study = generate_uid(), generate_uid()
    uids = {}
    for name, number in (("a", 3), ("b", 1), ("c", 2)):
        uids[number] = _dicom_sinogram(
            tmp_path / "scan" / f"{name}.dcm", sinograms[number - 1], number, series, study
        )
    out = tmp_path / "out"
    cli(
        "ct",
        tmp_path / "scan",
        "--angles",
        ANGLES,
        "--noise",
        "0.05",
        "--batch-size",
        "2",
        "-o",
        out,
        *model_args,
    )
    assert files_in(out) == {"scan.npy", "scan.report.json", "scan_dicom"}
    volume = np.load(out / "scan.npy")
    stored = np.round(sinograms * 100) / 100  # what the files hold
    assert (_rms(volume, stored).argmin(axis=1) == [0, 1, 2]).all()

    derived = [pydicom.dcmread(p) for p in sorted((out / "scan_dicom").iterdir())]
    assert [p.name for p in sorted((out / "scan_dicom").iterdir())] == ["0001.dcm", "0002.dcm", "0003.dcm"]
    assert len({ds.SeriesInstanceUID for ds in derived}) == 1 and derived[0].SeriesInstanceUID != series
    for number, ds in enumerate(derived, start=1):
        assert ds.StudyInstanceUID == study and ds.PatientID == "PH-9" and ds.InstanceNumber == number
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == uids[number]
        assert (ds.Rows, ds.Columns) == (SIZE, SIZE) and [float(v) for v in ds.PixelSpacing] == [0.8, 0.8]
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, np.round(np.clip(volume[number - 1], -32768, 32767)))
    assert json.loads((out / "scan.report.json").read_text())["operator"]["slices"] == 3


def test_a_folder_of_two_series_fails_in_one_line_without_outputs(tmp_path, cli, model_args):
    sinograms = _project(_slices())
    study = generate_uid()
    for i, series in enumerate((generate_uid(), generate_uid())):
        _dicom_sinogram(tmp_path / "scan" / f"{i}.dcm", sinograms[i], i + 1, series, study)
    r = cli("ct", tmp_path / "scan", "--angles", ANGLES, "-o", tmp_path / "out", *model_args, expect=1)
    assert f"error: {tmp_path / 'scan'}: holds 2 series; a volume is one series (one folder each)" in r.stderr
    assert files_in(tmp_path / "out") == set()
