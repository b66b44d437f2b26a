"""Synthetic data for training and tests: the shared toolkit and the DICOM writer.

`toolkit` holds seeded, vectorised physics pieces (speckle, PSF, Rician noise, bias field,
Beer-Lambert attenuation, shapes, elastic deformation); `dicom_writer` turns pixels into MR, US
and CR/DX objects with realistic vendor headers. Per-task generators live with their models.
All patient data they write is fake.
"""
