"""Atomic files, torn JSONL tails and directory manifests (checkpoints are verified before a resume trusts them)."""

import json

import pytest

from intro_lite.errors import ConfigError
from intro_lite.io import read_jsonl_log, verify_manifest, write_atomic, write_manifest


def test_torn_last_line_is_dropped_and_reported(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text(json.dumps({"step": 1}) + "\n" + json.dumps({"step": 2}) + "\n" + '{"step": 3, "lo')
    records, note = read_jsonl_log(p)
    assert records == [{"step": 1}, {"step": 2}] and "torn last line" in note and "metrics.jsonl" in note


def test_bad_middle_line_is_an_error_naming_it(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1}\nxx\n{"step": 3}\n')
    with pytest.raises(ConfigError, match=r"m\.jsonl: line 2 is not valid JSON"):
        read_jsonl_log(p)


def test_clean_log_and_missing_file(tmp_path):
    assert read_jsonl_log(tmp_path / "none.jsonl") == ([], "")
    p = tmp_path / "m.jsonl"
    p.write_text('{"a": 1}\n')
    assert read_jsonl_log(p) == ([{"a": 1}], "")


def test_manifest_detects_truncation_corruption_and_missing_files(tmp_path):
    d = tmp_path / "ckpt"
    (d / "adapter").mkdir(parents=True)
    (d / "adapter" / "w.safetensors").write_bytes(b"x" * 1000)
    (d / "state.pt").write_bytes(b"y" * 100)
    write_manifest(d, "COMPLETE", {"step": 3})
    assert verify_manifest(d, "COMPLETE") == ""
    assert json.loads((d / "COMPLETE").read_text())["step"] == 3
    (d / "state.pt").write_bytes(b"y" * 50)
    assert verify_manifest(d, "COMPLETE") == "state.pt has 50 bytes, 100 were written"
    (d / "state.pt").write_bytes(b"z" * 100)
    assert verify_manifest(d, "COMPLETE") == "state.pt does not match its checksum"
    (d / "state.pt").unlink()
    assert verify_manifest(d, "COMPLETE") == "state.pt is missing"
    (d / "COMPLETE").write_text("3\n")
    assert verify_manifest(d, "COMPLETE") == "COMPLETE is not a manifest"
    (d / "COMPLETE").unlink()
    assert verify_manifest(d, "COMPLETE") == "no COMPLETE marker"


def test_write_atomic_leaves_no_temporary(tmp_path):
    write_atomic(tmp_path / "a.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
