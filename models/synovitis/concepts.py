"""What the SR says for the four synovitis variants (their ReportVocabulary, see models/base.py).

The EULAR-OMERACT combined synovitis score (0-3) has no standard concept; the grade is ordinal,
so a viewer lists it as a number (NUM "EULAR-OMERACT synovitis grade" = 0..3) beside the coded
answer.
"""

from __future__ import annotations

from models.base import ReportVocabulary, private_code

SYNOVITIS_GRADE = private_code("concept/eular-omeract-synovitis", "EULAR-OMERACT synovitis grade")
GRADES = ("grade_0", "grade_1", "grade_2", "grade_3")

VOCABULARY = ReportVocabulary(
    question=SYNOVITIS_GRADE,
    label_text={g: f"synovitis grade {k}" for k, g in enumerate(GRADES)},
    ordinal={g: k for k, g in enumerate(GRADES)},
    alert_advice="Review this joint image.",
)
