"""``scanstream legacy``: unmodified BLISS-style scripts run with their imports resolved."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")

SCRIPT = textwrap.dedent(
    """
    import sys
    from bliss.data.node import get_session_node, get_node
    from bliss.data.nodes.channel import ChannelDataNode
    from bliss.data.nodes.lima import LimaImageChannelDataNode
    from bliss.data.nodes.scan import get_data_from_nodes
    from bliss.data.events import EventType
    from bliss.config.streaming import DataStreamReaderStopHandler
    from bliss.data.scan import ScansWatcher, watch_session_scans
    from blissdata.data.node import get_session_node as get2
    import scanstream

    assert get2 is get_session_node and ChannelDataNode is scanstream.ChannelNode
    session = get_session_node(sys.argv[1])
    scan = session.children()[0]
    data = dict(get_data_from_nodes(None, *scan.walk(wait=False)))
    print(sys.argv[2], sorted(data), data["timer:diode"].tolist())
    """
)


def _run(args, redis_url, cwd, extra_path=""):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (extra_path, SRC) if p))
    return subprocess.run(
        [sys.executable, "-m", "scanstream", "--redis-url", redis_url, "legacy", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


@pytest.fixture
def one_scan(session):
    with session.create_scan("s") as scan:
        scan.create_container("timer").create_channel("timer:diode").emit([1.0, 2.0])
    return scan


def test_an_unmodified_script_runs_with_bliss_names(redis_url, one_scan, tmp_path):
    script = tmp_path / "listener.py"
    script.write_text(SCRIPT)
    done = _run([str(script), "test_session", "hello"], redis_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "hello ['timer:diode'] [1.0, 2.0]"


def test_python_dash_m_scanstream_legacy_runs_it_too(redis_url, one_scan, tmp_path):
    script = tmp_path / "listener.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=SRC, SCANSTREAM_REDIS_URL=redis_url)
    done = subprocess.run(
        [sys.executable, "-m", "scanstream.legacy", str(script), "test_session", "m"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("m ['timer:diode']")


def test_a_legacy_name_not_provided_is_named(redis_url, tmp_path):
    script = tmp_path / "other.py"
    script.write_text("import bliss.common.utils\nimport bliss.common.scans\n")
    done = _run([str(script)], redis_url, tmp_path)
    assert done.returncode != 0
    assert "bliss.common.scans is not part of BLISS's subscriber API" in done.stderr


def test_refuses_where_a_real_bliss_is_installed(redis_url, tmp_path):
    fake = tmp_path / "site"
    (fake / "bliss").mkdir(parents=True)
    (fake / "bliss" / "__init__.py").write_text("")
    script = tmp_path / "s.py"
    script.write_text("print('ran')\n")
    done = _run([str(script)], redis_url, tmp_path, extra_path=str(fake))
    assert done.returncode == 2
    assert "a real bliss" in done.stderr and "would shadow it" in done.stderr
    assert "ran" not in done.stdout


def test_the_script_exit_code_is_kept(redis_url, tmp_path):
    script = tmp_path / "exit.py"
    script.write_text("import sys\nsys.exit(7)\n")
    assert _run([str(script)], redis_url, tmp_path).returncode == 7
    assert _run([str(tmp_path / "missing.py")], redis_url, tmp_path).returncode == 2
