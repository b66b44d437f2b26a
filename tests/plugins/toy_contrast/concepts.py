"""What the SR and the QA alert say for the toy contrast model: its own ReportVocabulary."""

from __future__ import annotations

from models.base import ReportVocabulary, private_code

IMAGE_CONTRAST = private_code("concept/toy-image-contrast", "Toy image contrast")

VOCABULARY = ReportVocabulary(
    question=IMAGE_CONTRAST,
    label_text={"flat": "flat contrast", "contrasty": "good contrast"},
    alert_advice="Toy advice: check the window settings.",
)
