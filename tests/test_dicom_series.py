"""DICOM series that stay series: ``simulate ct`` records what each slice was and the noise
it added; ``ct --dicom-template`` (a file or a folder) writes the slices of one source
series as one new derived series, each slice in its place.

Each run uses the tiny one-channel prior and a few steps: the tags are what is checked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import STEPS, ct_hu_phantom, files_in, load_report, one_line_error, random_grey, write_ct_dicom
from pydicom.uid import PYDICOM_ROOT_UID, CTImageStorage, generate_uid

from resample_cli.fileio.ct import (
    IMPLEMENTATION_CLASS_UID,
    derived_slice,
    new_derived_series,
    read_ct_header,
)

pytestmark = pytest.mark.usefixtures("offline", "one_thread")

Z = (-75.7, -70.7, -65.7)
IOP = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
SPACING = [0.7, 0.8]  # between rows, between columns


def write_series(folder: Path, names=("slice1.dcm", "slice2.dcm", "slice3.dcm")) -> list[pydicom.Dataset]:
    """Three slices of one CT series, InstanceNumber 1, 2, 3 at z = Z; their datasets."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    slices = []
    for number, (name, z) in enumerate(zip(names, Z, strict=True), start=1):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_ct_dicom(path, ct_hu_phantom())
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesDescription = "Abdomen"
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [-100.0, -120.0, z]
        ds.ImageOrientationPatient = IOP
        ds.PixelSpacing = SPACING
        ds.SliceThickness = 5.0
        ds.WindowCenter, ds.WindowWidth = 50, 350
        ds.save_as(path)
        slices.append(ds)
    return slices


def simulate(cli, inputs, out: Path, *noise) -> None:
    cli("simulate", "ct", inputs, "-o", out, "--angles", "8", *noise)


def reconstruct(cli, grey_prior_dir, inputs, out: Path, *options, expect: int = 0):
    return cli("ct", inputs, "-o", out, "--model", grey_prior_dir, "--steps", STEPS, *options, expect=expect)


def derived_in(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


def check_one_new_series(derived: list[pydicom.Dataset], sources: list[pydicom.Dataset]) -> None:
    """Every tag of issue 17: one new series, each slice its own new instance in its source's place."""
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    assert len(derived) == len(sources)
    assert len({ds.SeriesInstanceUID for ds in derived}) == 1
    assert len({ds.SOPInstanceUID for ds in derived}) == len(derived)
    for name in ("SeriesDescription", "SeriesDate", "SeriesTime"):
        assert len({ds.get(name) for ds in derived}) == 1, name
    referenced = set()
    for ds in derived:
        (item,) = ds.SourceImageSequence
        assert item.ReferencedSOPClassUID == CTImageStorage
        source = by_uid[item.ReferencedSOPInstanceUID]
        referenced.add(source.SOPInstanceUID)
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.SOPInstanceUID not in by_uid
        assert ds.InstanceNumber == source.InstanceNumber
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(list(source.ImagePositionPatient))
        assert [float(v) for v in ds.ImageOrientationPatient] == IOP
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx(SPACING)
        assert (ds.Rows, ds.Columns) == (32, 32) and float(ds.SliceThickness) == 5.0
        assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (50, 350)
        for name in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID"):
            assert ds.get(name) == source.get(name), name
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        meta = ds.file_meta
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert meta.ImplementationClassUID.startswith(PYDICOM_ROOT_UID)
        assert meta.ImplementationVersionName.startswith("RESAMPLE_")
        assert len(meta.ImplementationVersionName) <= 16
    assert referenced == set(by_uid)


def test_a_series_reconstructed_with_a_template_folder_stays_one_series(tmp_path, cli, grey_prior_dir):
    sources = write_series(tmp_path / "src")
    simulate(cli, tmp_path / "src", tmp_path / "sino", "--relative-noise", "0.01")
    with np.load(tmp_path / "sino" / "slice2.npz") as f:
        record, noise_std = json.loads(str(f["dicom"])), float(f["noise_std"])
    assert noise_std > 0
    assert record["SOPInstanceUID"] == sources[1].SOPInstanceUID and record["InstanceNumber"] == 2
    assert record["SeriesInstanceUID"] == sources[1].SeriesInstanceUID
    assert record["StudyInstanceUID"] == sources[1].StudyInstanceUID
    assert record["ImagePositionPatient"] == [-100.0, -120.0, -70.7]
    assert record["ImageOrientationPatient"] == IOP and record["PixelSpacing"] == SPACING
    assert record["SliceThickness"] == 5.0
    assert (record["WindowCenter"], record["WindowWidth"]) == (50.0, 350.0)

    # The templates named unlike the inputs, in the other order: only the UIDs match them.
    templates = tmp_path / "templates"
    templates.mkdir()
    for i, name in enumerate(("slice3", "slice2", "slice1")):
        shutil.copy(tmp_path / "src" / f"{name}.dcm", templates / f"t{i}.dcm")
    out = tmp_path / "out"
    reconstruct(cli, grey_prior_dir, tmp_path / "sino", out, "--dicom-template", templates)
    derived = derived_in(out)
    check_one_new_series(derived, sources)
    for ds in derived:
        stem = "slice" + str(ds.InstanceNumber)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, np.round(np.load(out / f"{stem}.npy")))


def test_a_single_template_file_places_each_slice_by_its_record(tmp_path, cli, grey_prior_dir):
    """The reported run: --dicom-template src/slice1.dcm for all three slices."""
    sources = write_series(tmp_path / "src")
    simulate(cli, tmp_path / "src", tmp_path / "sino")
    out = tmp_path / "out"
    reconstruct(
        cli, grey_prior_dir, tmp_path / "sino", out, "--dicom-template", tmp_path / "src" / "slice1.dcm"
    )
    check_one_new_series(derived_in(out), sources)

    # A sinogram that records no slice takes the template's slice tags.
    np.save(tmp_path / "plain.npy", np.load(tmp_path / "sino" / "slice3.npz")["sinogram"])
    plain = tmp_path / "plain"
    options = ["--angles", "8", "--dicom-template", tmp_path / "src" / "slice1.dcm"]
    reconstruct(cli, grey_prior_dir, tmp_path / "plain.npy", plain, *options)
    (ds,) = derived_in(plain)
    assert ds.InstanceNumber == 1 and float(ds.ImagePositionPatient[2]) == pytest.approx(Z[0])
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == sources[0].SOPInstanceUID


@pytest.mark.parametrize("kind", ["MR file", "folder with an MR slice", "empty folder", "folder of PNGs"])
def test_an_unusable_template_is_refused_before_any_solve(tmp_path, cli, grey_prior_dir, kind):
    write_series(tmp_path / "src", names=("a.dcm", "b.dcm", "c.dcm"))
    simulate(cli, tmp_path / "src" / "a.dcm", tmp_path / "sino")
    template = tmp_path / "templates"
    template.mkdir()
    if kind == "MR file":
        template = template / "mr.dcm"
        write_ct_dicom(template, ct_hu_phantom(), modality="MR")
    elif kind == "folder with an MR slice":
        shutil.copy(tmp_path / "src" / "a.dcm", template)
        write_ct_dicom(template / "mr.dcm", ct_hu_phantom(), modality="MR")
    elif kind == "folder of PNGs":
        random_grey(template / "a.png")
    out = tmp_path / "out"
    r = reconstruct(
        cli, grey_prior_dir, tmp_path / "sino" / "a.npz", out, "--dicom-template", template, expect=2
    )
    text = " ".join(r.stderr.split())
    assert "--dicom-template" in text
    assert ("not CT" if "MR" in kind else "no DICOM files") in text
    assert "loading model" not in r.stderr and not out.exists()


def test_an_input_without_a_matching_template_fails_before_the_model(tmp_path, cli, grey_prior_dir):
    write_series(tmp_path / "src")
    simulate(cli, tmp_path / "src" / "slice1.dcm", tmp_path / "sino")
    np.save(tmp_path / "sino" / "other.npy", np.load(tmp_path / "sino" / "slice1.npz")["sinogram"])
    other_series = tmp_path / "other"
    write_series(other_series)  # same names, other UIDs: slice1.npz matches slice1.dcm by name
    out = tmp_path / "out"
    options = ["--angles", "8", "--dicom-template", other_series]
    r = reconstruct(cli, grey_prior_dir, tmp_path / "sino", out, *options, expect=1)
    one_line_error(r.stderr, str(tmp_path / "sino" / "other.npy"), "no template in", "name other")
    assert files_in(out) >= {"slice1.dcm"} and "other.dcm" not in files_in(out)


def test_dicom_files_without_a_suffix_are_found_by_their_preamble(tmp_path, cli, grey_prior_dir):
    sources = write_series(tmp_path / "export", names=("IM0001", "IM0002", "IM0003"))
    (tmp_path / "export" / "README").write_text("not DICOM, no suffix either\n")
    simulate(cli, tmp_path / "export", tmp_path / "sino")
    assert files_in(tmp_path / "sino") == {"IM0001.npz", "IM0002.npz", "IM0003.npz"}
    out = tmp_path / "out"
    reconstruct(cli, grey_prior_dir, tmp_path / "sino", out, "--dicom-template", tmp_path / "export")
    check_one_new_series(derived_in(out), sources)


@pytest.mark.parametrize(
    ("simulated", "given", "source"),
    [
        (["--relative-noise", "0.05"], [], "npz"),
        (["--relative-noise", "0.05"], ["--noise", "0.2"], "--noise"),
        (["--relative-noise", "0.05"], ["--relative-noise", "0.01"], "--relative-noise"),
        ([], [], "default"),  # a noise-free simulation records 0, which cannot stop a solve
    ],
    ids=["stored", "--noise wins", "--relative-noise wins", "noise-free"],
)
def test_the_stored_noise_std_is_used_when_no_noise_is_given(
    tmp_path, cli, grey_prior_dir, simulated, given, source
):
    write_series(tmp_path / "src")
    simulate(cli, tmp_path / "src" / "slice1.dcm", tmp_path / "sino", *simulated)
    with np.load(tmp_path / "sino" / "slice1.npz") as f:
        stored, sino = float(f["noise_std"]), f["sinogram"]
    out = tmp_path / "out"
    reconstruct(cli, grey_prior_dir, tmp_path / "sino" / "slice1.npz", out, *given)
    report = load_report(out / "slice1.report.json")
    expected = {
        "npz": stored,
        "--noise": 0.2,
        "--relative-noise": 0.01 * float(np.abs(sino).max()),
        "default": 0.005,
    }[source]
    assert report["operator"]["sigma_y_source"] == source
    assert report["residual"]["sigma_y"] == pytest.approx(expected, rel=1e-6)


def test_derived_geometry_follows_the_reconstruction_grid(tmp_path):
    """A 32x32 template, a 16x16 reconstruction: pixels twice as large, the field of view
    (and its centre) where it was."""
    (template_ds, *_) = write_series(tmp_path / "src")
    template = read_ct_header(tmp_path / "src" / "slice1.dcm")
    ds = derived_slice(np.zeros((16, 16), np.float32), template, new_derived_series(template))
    assert (ds.Rows, ds.Columns) == (16, 16)
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([1.4, 1.6])
    # The first pixel's centre moves by half the change of spacing: 0.4 along the row
    # direction (x, the column spacing grows by 0.8), 0.35 along the column direction (y).
    assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx([-99.6, -119.65, Z[0]])

    def centre(d):
        position, (dr, dc) = np.array(d.ImagePositionPatient, float), np.array(d.PixelSpacing, float)
        return position + ((d.Columns - 1) * dc / 2, (d.Rows - 1) * dr / 2, 0)

    np.testing.assert_allclose(centre(ds), centre(template_ds))

    del template.WindowCenter, template.WindowWidth
    ds = derived_slice(np.zeros((32, 32), np.float32), template, new_derived_series(template))
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40, 400)  # soft tissue


def test_the_implementation_class_uid_is_the_documented_one():
    assert IMPLEMENTATION_CLASS_UID == generate_uid(entropy_srcs=["resample-cli implementation class"])


def test_simulate_ct_says_when_a_slice_is_not_air_outside_its_inscribed_circle(tmp_path, cli):
    hu = ct_hu_phantom()
    write_ct_dicom(tmp_path / "inside.dcm", hu)
    hu[:4, :4] = 300.0  # the corner: outside the circle the projector's rays always cross
    write_ct_dicom(tmp_path / "corner.dcm", hu)
    r = cli("simulate", "ct", tmp_path / "inside.dcm", tmp_path / "corner.dcm", "-o", tmp_path / "sino")
    (warning,) = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert (
        f"{tmp_path / 'corner.dcm'}: 16 pixels outside the inscribed circle (radius 16 px) are not air"
        in warning
    )
    assert files_in(tmp_path / "sino") == {"inside.npz", "corner.npz"}
