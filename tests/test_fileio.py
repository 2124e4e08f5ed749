"""Reading and writing files: images, arrays, sinograms, DICOM, atomic writes."""

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from resample_cli.fileio.atomic import atomic_path
from resample_cli.fileio.ct import (
    hu_to_unit,
    new_derived_series,
    read_ct_header,
    read_dicom_hu,
    read_sinogram,
    unit_to_hu,
    write_derived_dicom,
)
from resample_cli.fileio.errors import InputError
from resample_cli.fileio.images import read_image, write_image


def test_8_and_16_bit_grey_and_rgb_images_read_into_unit_range(tmp_path):
    rgb = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 3).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    grey16 = (np.arange(20).reshape(4, 5) * 3000).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    a = read_image(tmp_path / "rgb.png")
    assert a.data.shape == (3, 4, 5) and a.bit_depth == 8
    np.testing.assert_allclose(a.data, rgb.transpose(2, 0, 1) / 255.0, atol=1e-7)
    b = read_image(tmp_path / "g16.png")
    assert b.data.shape == (1, 4, 5) and b.bit_depth == 16
    np.testing.assert_allclose(b.data[0], grey16 / 65535.0, atol=1e-7)


def test_alpha_is_dropped_with_a_warning(tmp_path):
    Image.fromarray(np.zeros((3, 3, 4), np.uint8)).save(tmp_path / "a.png")
    with pytest.warns(UserWarning, match="alpha"):
        assert read_image(tmp_path / "a.png").data.shape == (3, 3, 3)


def test_16_bit_round_trip_keeps_precision(tmp_path):
    data = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8)
    write_image(tmp_path / "o.png", data, bit_depth=16)
    back = np.asarray(Image.open(tmp_path / "o.png"), dtype=np.float64) / 65535
    assert np.abs(back - data[0]).max() <= 0.5 / 65535 + 1e-7


@pytest.mark.parametrize(
    "content, problem",
    [(b"", "empty file"), (b"\x89PNG\r\n\x1a\n\x00\x00", "not a readable image"), (None, "no such file")],
)
def test_bad_images_name_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=problem) as err:
        read_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_png_is_refused(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "t.png"
    )
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable image"):
        read_image(tmp_path / "t.png")


def test_nan_in_array_is_refused(tmp_path):
    np.save(tmp_path / "n.npy", np.array([[0.5, np.nan]]))
    with pytest.raises(InputError, match="NaN"):
        read_image(tmp_path / "n.npy")


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.png") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_sinogram_layouts_and_angles(tmp_path):
    sino = np.random.default_rng(0).random((25, 40)).astype(np.float32)
    np.save(tmp_path / "s.npy", sino)
    np.save(tmp_path / "t.npy", sino.T)  # scikit-image's (detectors, angles)
    a = read_sinogram(tmp_path / "s.npy", n_angles=25)
    b = read_sinogram(tmp_path / "t.npy", n_angles=25)
    np.testing.assert_array_equal(a.data, sino)
    np.testing.assert_array_equal(b.data, sino)
    np.testing.assert_allclose(a.angles_deg, np.arange(25) * 180 / 25)
    rad = np.deg2rad(np.linspace(0, 170, 25))
    np.savez(tmp_path / "r.npz", sinogram=sino, angles=rad)
    c = read_sinogram(tmp_path / "r.npz", angle_unit="rad")
    np.testing.assert_allclose(c.angles_deg, np.linspace(0, 170, 25))


def test_sinogram_errors(tmp_path):
    np.save(tmp_path / "sq.npy", np.zeros((30, 30), np.float32))
    with pytest.raises(InputError, match="ambiguous.*--layout"):
        read_sinogram(tmp_path / "sq.npy", n_angles=30)
    assert read_sinogram(tmp_path / "sq.npy", n_angles=30, layout="det-first").data.shape == (30, 30)
    with pytest.raises(InputError, match="does not match 25 angles"):
        read_sinogram(tmp_path / "sq.npy", n_angles=25)
    np.savez(tmp_path / "k.npz", other=np.zeros(3))
    with pytest.raises(InputError, match="no 'sinogram' key"):
        read_sinogram(tmp_path / "k.npz", n_angles=3)


def _ct_slice(path, pixels, slope=1.0, intercept=-1024.0, modality="CT", padding=None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = "Test^Patient", "P1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if padding is not None:
        ds.PixelPaddingValue = padding
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_dicom_hu_window_and_padding(tmp_path):
    raw = np.array([[0, 1024, 2048], [4096, -2000, 500]], dtype=np.int16)
    _ct_slice(tmp_path / "s.dcm", raw, slope=1.0, intercept=-1024.0, padding=-2000)
    hu, _ = read_dicom_hu(tmp_path / "s.dcm")
    expected = raw.astype(np.float32) - 1024
    expected[1, 1] = -1024  # the padding value is clamped to air
    np.testing.assert_array_equal(hu, expected)
    unit = hu_to_unit(hu)
    np.testing.assert_allclose(unit, (np.clip(expected, -1024, 3072) + 1024) / 4096)
    np.testing.assert_allclose(unit_to_hu(unit), np.clip(expected, -1024, 3072), atol=1e-3)


def test_dicom_errors(tmp_path):
    _ct_slice(tmp_path / "mr.dcm", np.zeros((2, 2)), modality="MR")
    with pytest.raises(InputError, match="modality is MR, not CT"):
        read_dicom_hu(tmp_path / "mr.dcm")
    ds = pydicom.dcmread(tmp_path / "mr.dcm")
    del ds.PixelData
    ds.Modality = "CT"
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(InputError, match="no pixel data"):
        read_dicom_hu(tmp_path / "nopix.dcm")


def test_derived_dicom_copies_patient_and_gets_new_uids(tmp_path):
    template = _ct_slice(tmp_path / "t.dcm", np.zeros((4, 4)))
    hu = np.array([[-1000.0, 0.0], [40.0, 1500.0]], dtype=np.float32)
    header = read_ct_header(tmp_path / "t.dcm")
    write_derived_dicom(tmp_path / "o.dcm", hu, header, new_derived_series(header), derivation="test")
    out = pydicom.dcmread(tmp_path / "o.dcm")
    assert out.PatientID == "P1" and out.StudyInstanceUID == template.StudyInstanceUID
    assert out.SeriesInstanceUID != template.SeriesInstanceUID
    assert out.SOPInstanceUID != template.SOPInstanceUID
    assert list(out.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    got = out.pixel_array * float(out.RescaleSlope) + float(out.RescaleIntercept)
    np.testing.assert_array_equal(got, hu)


def test_npz_angles_must_agree_with_a_count_given_beside_them(tmp_path):
    sino = np.zeros((25, 40), np.float32)
    np.savez(tmp_path / "a.npz", sinogram=sino, angles=np.arange(25) * 180 / 25)
    assert read_sinogram(tmp_path / "a.npz", n_angles=25).data.shape == (25, 40)
    with pytest.raises(InputError, match="holds 25 angles but 30 were given"):
        read_sinogram(tmp_path / "a.npz", n_angles=30)
