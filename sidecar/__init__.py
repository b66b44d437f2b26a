"""The DICOM AI sidecar: receive, keep, route, infer, report and deliver.

Demo model weights bundled with this package are trained on synthetic phantoms and are
NOT FOR CLINICAL USE.
"""

__version__ = "0.1.0"
