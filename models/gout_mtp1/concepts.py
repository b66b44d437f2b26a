"""What the SR says for gout_mtp1 (its ReportVocabulary, see models/base.py).

The answer's values are standard (SNOMED CT Normal / Abnormal, chosen by the writer from the
label names); the question, a gout-pattern reading of the first MTP joint on ultrasound, is private.
"""

from __future__ import annotations

from models.base import ReportVocabulary, private_code

GOUT_MTP1_FINDING = private_code("concept/gout-mtp1-us", "Gout MTP1 ultrasound finding")

VOCABULARY = ReportVocabulary(
    question=GOUT_MTP1_FINDING,
    label_text={"normal": "normal (no gout pattern)", "abnormal": "abnormal (gout pattern)"},
    alert_advice="Review the first MTP joint images.",
)
