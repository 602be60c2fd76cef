"""The synthetic folder's DICOM: a series written file by file with the competition's tags (and the
real profile's irregularities: flips, MONOCHROME1, rescale, missing tags), and the ids."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .phantom import SliceGeom


def _uid(*parts) -> str:
    return "1.2.826.0.1.3680043.8.498." + ".".join(str(int(p)) for p in parts)


class SeriesWriter:
    """Writes the slices of one MR series as DICOM Part 10 files (16-bit MONOCHROME2, explicit VR
    little endian). The series-level tags are built once; each slice sets only what differs."""

    def __init__(self, study_id: int, series_id: int, description: str, thickness: float,
                 slope: float = 1.0, intercept: float = 0.0, mono1: bool = False, drop: tuple = (),
                 spacing_between: float | None = None):
        import pydicom
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian

        self._pydicom3 = int(pydicom.__version__.split(".")[0]) >= 3
        self.study_id, self.series_id = study_id, series_id
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.Modality = "MR"
        ds.StudyInstanceUID = _uid(study_id)
        ds.SeriesInstanceUID = _uid(study_id, series_id)
        ds.PatientID = str(study_id)
        ds.StudyID = str(study_id)
        ds.SeriesNumber = int(series_id % 100000)
        ds.SeriesDescription = description
        ds.SliceThickness = round(float(thickness), 3)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12 if mono1 else 16  # MONOCHROME1 is inverted against 2**BitsStored - 1
        ds.HighBit = ds.BitsStored - 1
        if spacing_between is not None:
            ds.SpacingBetweenSlices = round(float(spacing_between), 3)
        ds.PixelRepresentation = 0
        if slope != 1.0 or intercept != 0.0:
            ds.RescaleSlope = slope
            ds.RescaleIntercept = intercept
        if not self._pydicom3:
            ds.is_little_endian, ds.is_implicit_VR = True, False
        self.ds = ds
        self.drop = tuple(drop)  # keywords the hidden test's files lack now and then

    def write(self, path: Path, pixels: np.ndarray, g: SliceGeom, instance: int) -> None:
        import pydicom

        ds = self.ds
        uid = _uid(self.study_id, self.series_id, instance)
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPInstanceUID = uid
        ds.InstanceNumber = int(instance)
        ds.ImagePositionPatient = [round(float(v), 4) for v in g.ipp]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*g.row_dir, *g.col_dir)]
        ds.PixelSpacing = [round(g.spacing, 6), round(g.spacing, 6)]
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
        for keyword in self.drop:
            if keyword in ds:
                delattr(ds, keyword)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._pydicom3:
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
        else:  # pydicom 2.x
            ds.save_as(path, write_like_original=False)


def write_dicom(path: Path, pixels: np.ndarray, g: SliceGeom, instance: int, study_id: int, series_id: int,
                description: str, thickness: float, slope: float = 1.0, intercept: float = 0.0) -> None:
    """One slice as its own series file (tests build small series with this)."""
    SeriesWriter(study_id, series_id, description, thickness, slope, intercept).write(path, pixels, g, instance)


def unique_ids(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """n distinct random integers in [low, high), like the competition's study and series ids."""
    out: list[int] = []
    seen: set[int] = set()
    while len(out) < n:
        v = int(rng.integers(low, high))
        if v not in seen:
            seen.add(v)
            out.append(v)
    return np.array(out, dtype=np.int64)
