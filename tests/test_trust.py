"""Audit trail and signed releases: any flipped byte is caught and named."""

import json

import pytest

from fedsyn.trust.audit import AuditLog, verify_log
from fedsyn.trust.signing import (
    VerificationError,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_release,
    verify_release,
)


@pytest.fixture()
def keys(tmp_path):
    private, public = generate_keypair(tmp_path / "keys")
    assert (private.stat().st_mode & 0o777) == 0o600
    return load_private_key(private), load_public_key(public)


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture()
def log(tmp_path, keys):
    trail = AuditLog(tmp_path / "audit.jsonl", keys[0])
    for round_ in range(1, 6):
        trail.append("update_accepted", round=round_, site=f"site-{round_}")
    return trail.path


def test_clean_log_verifies(log, keys):
    assert verify_log(log, keys[1]) == 5


def test_flipped_byte_in_an_entry_is_named(log, keys):
    third_line_start = sum(len(line) + 1 for line in log.read_text().splitlines()[:2])
    _flip(log, third_line_start + log.read_text().splitlines()[2].index('"site-3"') + 2)
    with pytest.raises(VerificationError, match=r"audit.jsonl:3: .*altered"):
        verify_log(log, keys[1])


def test_removed_entry_breaks_the_chain(log, keys):
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    with pytest.raises(VerificationError, match=r"audit.jsonl:2: .*chain broken"):
        verify_log(log, keys[1])


def test_rewritten_tail_fails_the_head_signature(log, keys, tmp_path):
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    forged = AuditLog(tmp_path / "forged.jsonl")  # same chain rules, no key: a valid-looking chain
    for entry in lines[:-1]:
        forged.append(entry["event"], round=entry["round"], site=entry["site"])
    forged.append("update_accepted", round=5, site="evil")
    forged.path.with_name("forged.jsonl.sig").write_text(log.with_name("audit.jsonl.sig").read_text())
    with pytest.raises(VerificationError, match="signature does not match"):
        verify_log(forged.path, keys[1])


@pytest.fixture()
def release(tmp_path, keys):
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "synthetic.csv").write_text("age,sex\n60,F\n70,M\n")
    (folder / "privacy_report.json").write_text(json.dumps({"sites": [{"epsilon": 1.0}]}))
    (folder / "schema.json").write_text(json.dumps({"name": "flchain", "columns": []}))
    sign_release(folder, keys[0])
    return folder


def test_clean_release_verifies(release, keys):
    assert verify_release(release, keys[1]).files == 3


@pytest.mark.parametrize("name", ["synthetic.csv", "privacy_report.json", "schema.json"])
def test_flipped_byte_in_a_release_file_is_named(release, keys, name):
    _flip(release / name, 3)
    with pytest.raises(VerificationError, match=f"{name}: content differs"):
        verify_release(release, keys[1])


def test_flipped_byte_in_the_manifest_fails_the_signature(release, keys):
    _flip(release / "manifest.json", 20)
    with pytest.raises(VerificationError, match="manifest.json: the signature does not match"):
        verify_release(release, keys[1])


def test_added_file_and_other_key_are_refused(release, keys, tmp_path):
    (release / "extra.csv").write_text("x")
    with pytest.raises(VerificationError, match="extra.csv: present but not in the signed manifest"):
        verify_release(release, keys[1])
    (release / "extra.csv").unlink()
    _, other = generate_keypair(tmp_path / "other")
    with pytest.raises(VerificationError, match="signature does not match"):
        verify_release(release, load_public_key(other))


def _append_many(path: str, run: str, count: int) -> None:
    log = AuditLog(path, run_id=run)
    for index in range(count):
        log.append("round_finished", round=index)


def test_two_runs_writing_one_audit_log_keep_one_chain(tmp_path):
    """Concurrent coordinators (two runs at once) append under a lock: one chain, no forked seq."""
    import multiprocessing

    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_many, args=(str(path), run, 25)) for run in ("run-a", "run-b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert verify_log(path) == 50
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["seq"] for e in entries] == list(range(50))
    assert {e["run"] for e in entries} == {"run-a", "run-b"}
