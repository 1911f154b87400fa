"""ingestor/seals.py: Ed25519 keys made 0600, seals that verify, and every forgery of one refused."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import msgspec
import pytest

from ingestor import failpoints, seals, verifier
from ingestor.errors import ConfigError

HEADS = [seals.Head(17, 120, "ab" * 32), seals.Head(3, 9, "cd" * 32)]


@pytest.fixture
def keys(tmp_path):
    public, secret = seals.generate_keys(tmp_path / "keys")
    return seals.load_public(public), seals.load_secret(secret), public, secret


def test_keys_are_made_with_the_secret_0600_and_never_overwritten(keys, tmp_path):
    _, _, public, secret = keys
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600 and stat.S_IMODE(os.stat(public).st_mode) == 0o644
    with pytest.raises(FileExistsError):
        seals.generate_keys(tmp_path / "keys")
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        seals.load_secret(secret)
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key")
    garbage.chmod(0o600)
    with pytest.raises(ConfigError, match="not a PEM private key"):
        seals.load_secret(garbage)


def test_a_seal_verifies_with_its_public_key_and_its_heads_in_any_order(keys):
    public, secret, _, _ = keys
    seal = seals.sign(secret, "edge-01", "2026-12-02T07:30:00Z", HEADS)
    assert seals.is_genuine(seal, public)
    assert seal.heads[0].scale_id == 3 and len(seal.signature) == 128
    assert seal.key_id == seals.key_id(public)
    decoded = msgspec.json.decode(msgspec.json.encode(seal), type=seals.Seal)
    assert seals.is_genuine(decoded, public)


@pytest.mark.parametrize("forge", [
    lambda s: msgspec.structs.replace(s, heads=(seals.Head(3, 9, "cd" * 32), seals.Head(17, 119, "ab" * 32))),
    lambda s: msgspec.structs.replace(s, heads=s.heads[:1]),
    lambda s: msgspec.structs.replace(s, sealed_at="2026-12-03T07:30:00Z"),
    lambda s: msgspec.structs.replace(s, signature=("0" if s.signature[0] != "0" else "1") + s.signature[1:]),
    lambda s: msgspec.structs.replace(s, signature="not hex"),
], ids=["an earlier head", "a scale left out", "another time", "a flipped signature", "garbage"])
def test_a_forged_seal_is_refused(keys, forge):
    public, secret, _, _ = keys
    assert not seals.is_genuine(forge(seals.sign(secret, "edge-01", "2026-12-02T07:30:00Z", HEADS)), public)


def test_a_seal_signed_with_another_key_is_refused(keys, tmp_path):
    public, _, _, _ = keys
    _, other = seals.generate_keys(tmp_path / "other")
    assert not seals.is_genuine(seals.sign(seals.load_secret(other), "edge-01", "t", HEADS), public)


def test_the_seal_file_is_appended_and_a_torn_last_line_is_left_out(keys, tmp_path):
    _, secret, _, _ = keys
    path = tmp_path / "seals.jsonl"
    written = [seals.sign(secret, "edge-01", f"2026-12-02T07:3{k}:00Z", HEADS) for k in range(3)]
    for seal in written:
        seals.append(path, seal)
    with open(path, "ab") as f:
        f.write(b'{"version":1,"instance":"edge')  # a crash mid-append
    assert seals.read(path) == written


def test_ingestor_keys_alibi_writes_the_pair_and_refuses_to_overwrite_it(tmp_path):
    import subprocess
    import sys

    argv = [sys.executable, "-m", "ingestor.cli", "keys", "alibi", "--dir", str(tmp_path / "k"), "--name", "plant"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"{tmp_path / 'k' / 'plant.ed25519.pub'}" in r.stdout
    assert seals.load_secret(tmp_path / "k" / "plant.ed25519") is not None
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "not overwriting a key" in again.stderr


# -- the sealer, against a real PostgreSQL, with a failure at each of its steps ---------------------

SEAL_CASES = [(name, action) for name in ("seal.database", "seal.file")
              for action in failpoints.FAILPOINTS[name][0]]
ARMED = {"kill": "1*kill", "disconnect": "1*disconnect", "enospc": "1*enospc", "eio": "1*eio", "sleep": "1*sleep(50)"}
SEAL_ONCE = """
import sys
from ingestor import failpoints, seals
failpoints.arm(sys.argv[1], sys.argv[2])
try:
    seals.Sealer(sys.argv[3], "public", "test", sys.argv[4], sys.argv[5]).seal()
except Exception as e:
    print(type(e).__name__, e)
    sys.exit(3)
"""


def chain_heads(conn, heads: dict[int, int]) -> None:
    for scale, record_no in heads.items():
        conn.execute("INSERT INTO ingestor_claims (scale_id, record_no, link) VALUES (%s, %s, %s) "
                     "ON CONFLICT (scale_id) DO UPDATE SET record_no = EXCLUDED.record_no, link = EXCLUDED.link",
                     (scale, record_no, bytes([record_no]) * 32))


@pytest.mark.parametrize(("name", "action"), SEAL_CASES, ids=[f"{n}={a}" for n, a in SEAL_CASES])
def test_a_failure_at_each_sealing_step_stores_the_seal_whole_or_not_at_all(name, action, keys, dsn, conn, tmp_path):
    _, _, public, secret = keys
    chain_heads(conn, {1: 5, 2: 7})
    seal_file = tmp_path / "seals.jsonl"
    done = subprocess.run([sys.executable, "-c", SEAL_ONCE, name, ARMED[action], dsn, str(secret), str(seal_file)],
                          capture_output=True, text=True, timeout=60)
    in_db = [t for (t,) in conn.execute("SELECT seal FROM ingestor_seals")]
    in_file = seals.read(seal_file) if seal_file.exists() else []
    # the database first, then the file: a seal in the file is always in the database
    expected = {("seal.database", "sleep"): (0, 1, 1), ("seal.file", "sleep"): (0, 1, 1),
                ("seal.database", "kill"): (-9, 0, 0), ("seal.file", "kill"): (-9, 1, 0)}.get(
        (name, action), (3, 0, 0) if name == "seal.database" else (3, 1, 0))
    assert (done.returncode, len(in_db), len(in_file)) == expected, done.stdout + done.stderr
    if action in ("enospc", "eio", "disconnect"):
        assert {"enospc": "No space left", "eio": "Input/output error", "disconnect": "terminating connection"}[action] in \
            done.stdout
    chain_heads(conn, {1: 6})
    seal = seals.Sealer(dsn, "public", "test", secret, seal_file).seal()  # the next interval's seal is whole
    assert [h.record_no for h in seal.heads] == [6, 7] and seals.read(seal_file)[-1] == seal
    assert msgspec.json.decode(conn.execute("SELECT seal FROM ingestor_seals ORDER BY id DESC").fetchone()[0],
                               type=seals.Seal) == seal
    report = verifier.verify(dsn, "public", public_keys=[seals.load_public(public)], seal_file=seal_file)
    assert [f.kind for f in report.findings if f.scale_id is None] == []  # no seal of the file missing, none forged


def test_no_chain_no_seal(keys, dsn, tmp_path):
    assert seals.Sealer(dsn, "public", "test", keys[3], tmp_path / "seals.jsonl").seal() is None
    assert not (tmp_path / "seals.jsonl").exists()
