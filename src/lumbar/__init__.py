"""lumbar: RSNA 2024 lumbar spine degenerative classification, from DICOM to one offline Kaggle kernel."""
__version__ = "0.1.0"
