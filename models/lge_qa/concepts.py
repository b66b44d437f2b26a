"""What the SR and the QA alert say for lge_qa (its ReportVocabulary, see models/base.py).

No standard concept names "how certain an expert reader would be of this LGE slice", so the
question is a private concept; the two labels get private codes whose meanings are their words.
"""

from __future__ import annotations

from models.base import ReportVocabulary, private_code
from models.lge_qa.labels import HIGH_CERTAINTY, LOW_CERTAINTY

LGE_SLICE_CERTAINTY = private_code("concept/lge-slice-certainty", "LGE slice certainty")

VOCABULARY = ReportVocabulary(
    question=LGE_SLICE_CERTAINTY,
    label_text={HIGH_CERTAINTY: "high certainty", LOW_CERTAINTY: "low certainty"},
    alert_advice="Consider repeating this slice.",
)
