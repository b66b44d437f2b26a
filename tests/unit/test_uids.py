from sidecar.dicom.uids import derive_uid, is_valid_uid, result_uid, short_uid


class TestUidGrammar:
    def test_accepts_ordinary_uids(self) -> None:
        """Real-world UIDs pass."""
        assert is_valid_uid("1.2.840.10008.5.1.4.1.1.4")
        assert is_valid_uid("2.25.123456789012345678901234567890")

    def test_rejects_path_escapes_and_garbage(self) -> None:
        """Anything that could escape a folder or is not the grammar fails."""
        for bad in ["", "../../etc", "1.2/3", "1..2", "1.02", ".1", "1.", "1.2\x00", "a.b", "1" * 65, None, 12]:
            assert not is_valid_uid(bad), bad


class TestDerivation:
    def test_same_inputs_same_uid(self) -> None:
        """A rerun derives the same result UID."""
        a = result_uid("1.2.3", "lge_qa", "1.0", "sr-instance")
        assert a == result_uid("1.2.3", "lge_qa", "1.0", "sr-instance")
        assert is_valid_uid(a)

    def test_any_change_changes_uid(self) -> None:
        """Model version, kind and revision each give a new UID."""
        base = result_uid("1.2.3", "lge_qa", "1.0", "sr-instance")
        assert base != result_uid("1.2.3", "lge_qa", "1.1", "sr-instance")
        assert base != result_uid("1.2.3", "lge_qa", "1.0", "sr-series")
        assert base != result_uid("1.2.3", "lge_qa", "1.0", "sr-instance", revision=1)
        assert derive_uid("a", "b") != derive_uid("ab")

    def test_short_uid_hides_the_uid(self) -> None:
        """Logs get a 12-hex tag, not the UID."""
        s = short_uid("1.2.840.113619.2.55")
        assert len(s) == 12 and "1.2.840" not in s
