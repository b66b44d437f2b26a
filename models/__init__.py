"""Clinical models. They import nothing from sidecar/ and never see pynetdicom.

Weights bundled here are demo weights trained on synthetic phantoms: NOT FOR CLINICAL USE.
"""
