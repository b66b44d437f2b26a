"""What the SR says for breast_elastography (its ReportVocabulary, see models/base.py).

The Tsukuba elasticity score (Itoh et al., Radiology 2006, 1-5) has no standard concept; it is
ordinal, so a viewer lists it as a number beside the coded answer.
"""

from __future__ import annotations

from models.base import ReportVocabulary, private_code

TSUKUBA_SCORE = private_code("concept/tsukuba-score", "Tsukuba elasticity score")
N_TSUKUBA = 5

VOCABULARY = ReportVocabulary(
    question=TSUKUBA_SCORE,
    label_text={f"Tsukuba {k}": f"Tsukuba score {k} (estimated)" for k in range(1, N_TSUKUBA + 1)},
    ordinal={f"Tsukuba {k}": k for k in range(1, N_TSUKUBA + 1)},
)
