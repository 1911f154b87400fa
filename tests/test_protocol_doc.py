"""docs/PROTOCOL.md's examples, and README's "Send your first event", run as written against the real service."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .checker import identity_holds
from .fix_service import require_command

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "PROTOCOL.md", ROOT / "README.md")
EXAMPLE = re.compile(r"<!-- example: (?P<name>[\w-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)
# what each example stores: scale -> events; and a line it prints
EXPECTED = {
    "python-client": (7, 100, "stored 100, already stored 0, invalid 0"),
    "python-push": (8, 1001, ""),
    "python-dealer": (9, 50, "'accepted': 50"),
    "c-dealer": (10, 3, "accepted 3"),
    "readme-first-event": (4711, 1, "Reply(accepted=1, duplicates=0, invalid=0, error=None)"),
}
HEREDOC = re.compile(r"python3 - <<'EOF'\n(?P<code>.*?)\nEOF\n", re.S)


def examples() -> dict[str, tuple[str, str]]:
    found = {}
    for doc in DOCS:
        for m in EXAMPLE.finditer(doc.read_text()):
            lang, code = m["lang"], m["code"]
            if lang == "sh":  # the Python a shell example feeds to python3
                lang, code = "python", HEREDOC.search(code)["code"]
            found[m["name"]] = (lang, code)
    return found


# run by tests/test_mqtt.py, test_sparkplug.py and test_opcua.py, with a broker or as an OPC UA server
RUN_WITH_A_BROKER = {"mqtt-publisher", "readme-inputs", "sparkplug-node", "opcua-terminal", "opcua-config"}


def test_every_example_of_the_docs_is_run_by_this_module():
    assert set(examples()) == set(EXPECTED) | RUN_WITH_A_BROKER


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_doc_example_stores_its_events(name, service_factory, dsn, conn, tmp_path):
    lang, code = examples()[name]
    svc = service_factory("--dsn", dsn, "--writers", "1")
    svc.wait_ready()
    # the examples name the default endpoints; this service listens on free ports
    code = code.replace("tcp://127.0.0.1:5555", svc.bind).replace("tcp://127.0.0.1:5556", svc.ack_bind)
    if lang == "python":
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    else:
        source, binary = tmp_path / "send.c", tmp_path / "send"
        source.write_text(code)
        subprocess.run([require_command("cc"), str(source), "-o", str(binary), "-lzmq", "-lmsgpackc"], check=True,
                       timeout=120)
        run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr
    scale, events, printed = EXPECTED[name]
    assert printed in run.stdout
    s = svc.wait_for(lambda s: s["persisted"] >= events and s["pending"] == 0, timeout_s=30)
    assert s["persisted"] == events and s["invalid"] == 0 and identity_holds(s)
    stored = conn.execute("SELECT count(*), count(DISTINCT seq), min(data_1->>'val') FROM weighing_logs "
                          "WHERE scale_id = %s", (scale,)).fetchone()
    assert stored[:2] == (events, events)
    assert conn.execute("SELECT scale_id FROM scale_current_states").fetchall() == [(scale,)]
