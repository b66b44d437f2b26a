"""What the SR says for hand_joints (its ReportVocabulary, see models/base.py).

Each joint is a planar ROI (its box on the radiograph) with its grade; SHS joint space narrowing
and Kellgren-Lawrence grades share one private concept whose value names the scheme ("SHS JSN 2",
"KL 3"), and the grade number is listed as a NUM so a viewer shows it on the ROI.
"""

from __future__ import annotations

from models.base import ReportVocabulary, private_code
from models.hand_joints import joints as J

HAND_JOINT_GRADE = private_code("concept/hand-joint-grade", "Hand joint grade (SHS narrowing or KL)")

VOCABULARY = ReportVocabulary(
    question=HAND_JOINT_GRADE,
    grade=HAND_JOINT_GRADE,
    ordinal={J.grade_label(s, g): g for s in (J.SHS, J.KL) for g in range(J.N_GRADES)},
)
