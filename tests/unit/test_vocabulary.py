"""Model vocabularies: each model's SR concepts and alert wording come from its own package."""

from __future__ import annotations

import pytest

from models.base import GENERIC_VOCABULARY, PRIVATE_SCHEME, ModelCard, ReportVocabulary, private_code
from models.elastography.concepts import VOCABULARY as ELASTO
from models.gout_mtp1.concepts import VOCABULARY as GOUT
from models.hand_joints.concepts import VOCABULARY as HAND
from models.lge_qa.concepts import VOCABULARY as LGE
from models.synovitis.concepts import VOCABULARY as SYNOVITIS


def card(vocabulary: ReportVocabulary = GENERIC_VOCABULARY) -> ModelCard:
    return ModelCard(id="m", version="1", name="M", manufacturer="x", intended_use="x",
                     labels=("a", "b"), vocabulary=vocabulary)


class TestPrivateCode:
    """Private codes are stable hashes that fit SH and LO."""

    def test_same_key_same_code_and_fits(self) -> None:
        """A key always yields the same <= 16-char value of the 99SIDECAR scheme."""
        a, b = private_code("k", "x" * 100), private_code("k", "other")
        assert a.value == b.value and len(a.value) <= 16 and a.scheme_designator == PRIVATE_SCHEME
        assert len(a.meaning) == 64


class TestAlertLines:
    """The technologist's alert wording comes from the card."""

    def test_lge_alert_names_the_answer_in_words_and_gives_the_models_advice(self) -> None:
        """LGE: "low certainty" in words, the model's own advice last, no underscores."""
        lines = card(LGE).alert_lines("low_certainty", 0.81, series_number=7, instance_number=3,
                                      not_for_clinical_use=True)
        assert lines[0] == "AI QA ALERT - NOT FOR CLINICAL USE"
        assert "Series 7  image 3" in lines
        assert "Result: low certainty (p = 0.81)" in lines
        assert lines[-1] == "Consider repeating this slice."

    def test_model_without_vocabulary_gets_plain_lines_and_no_advice(self) -> None:
        """A card with no vocabulary: label words from the label, unknown numbers as '?'."""
        lines = card().alert_lines("a_b", 0.5, series_number=None, instance_number=None,
                                   not_for_clinical_use=False)
        assert lines == ("AI QA ALERT", "Model: m 1", "Series ?  image ?", "Result: a b (p = 0.50)")


@pytest.mark.parametrize("vocabulary", [LGE, SYNOVITIS, GOUT, ELASTO, HAND])
def test_every_model_vocabulary_names_a_question(vocabulary: ReportVocabulary) -> None:
    """Each bundled model reports under a question of its own, not the generic one."""
    assert vocabulary.question != GENERIC_VOCABULARY.question
    assert vocabulary.grade_concept is not None


def test_ordinal_grades_are_numbered() -> None:
    """Grades are ordinal: synovitis 0-3, Tsukuba 1-5, hand SHS/KL 0-4."""
    assert SYNOVITIS.ordinal["grade_3"] == 3
    assert ELASTO.ordinal["Tsukuba 1"] == 1
    assert HAND.ordinal["KL 0"] == 0 and HAND.ordinal["SHS JSN 4"] == 4
