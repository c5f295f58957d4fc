"""Atomic outputs: the destination appears only complete, and a failed write leaves neither it nor a temporary."""

import pytest

from modeling_lucafound.atomic_files import atomic_output, write_json_atomically, write_text_atomically


def test_written_file_appears_complete_with_no_temporary_left(tmp_path):
    write_text_atomically(tmp_path / "report.txt", "complete")
    assert (tmp_path / "report.txt").read_text() == "complete"
    assert [path.name for path in tmp_path.iterdir()] == ["report.txt"]


def test_failure_while_writing_keeps_the_previous_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "features.json"
    write_json_atomically(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_output(target) as temporary:
            temporary.write_text('{"version": 2, "trunc')
            raise RuntimeError("crash in the middle of writing")
    assert target.read_text() == '{\n  "version": 1\n}\n'
    assert [path.name for path in tmp_path.iterdir()] == ["features.json"]


def test_temporary_keeps_the_requested_suffix(tmp_path):
    with atomic_output(tmp_path / "crop.nii.gz", suffix=".nii.gz") as temporary:
        assert temporary.name.endswith(".nii.gz") and temporary.parent == tmp_path
        temporary.write_bytes(b"x")
