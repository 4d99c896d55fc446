"""The subscriber's layering and the read-side fixes of the architecture review (issue 10)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import h5py
import numpy as np
import pytest

from scanstream import (
    DecodingError,
    EventType,
    ImageReference,
    InvalidTransitionError,
    ScanState,
    get_session_node,
    read_image,
)
from scanstream.models import is_hdf5_format
from scanstream.subscribe.nodes import DataNode

SUBSCRIBE = Path(__file__).resolve().parents[1] / "src" / "scanstream" / "subscribe"

# Each module may import (at run time) only the modules before it in this order.
ORDER = [
    "events",
    "info",
    "lost",
    "leases",
    "follows",
    "walker",
    "nodes",
    "lima_view",
    "data_nodes",
    "tree",
]


def _runtime_imports(path: Path) -> tuple[set[str], list[str]]:
    """(sibling modules imported at module level outside TYPE_CHECKING, names imported in functions)."""
    tree = ast.parse(path.read_text())
    siblings: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            siblings.add((node.module or "").split(".")[0])
    in_functions = [
        alias.name
        for func in ast.walk(tree)
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(func)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    return siblings, in_functions


@pytest.mark.parametrize("module", ORDER)
def test_subscribe_modules_import_downward_only(module: str) -> None:
    siblings, in_functions = _runtime_imports(SUBSCRIBE / f"{module}.py")
    allowed = set(ORDER[: ORDER.index(module)]) | {"images"}
    assert siblings <= allowed, f"{module} imports {sorted(siblings - allowed)} at run time"
    assert in_functions == []


def test_only_read_image_imports_lazily() -> None:
    siblings, in_functions = _runtime_imports(SUBSCRIBE / "images.py")
    assert siblings == set() and in_functions == ["h5py"]


@pytest.mark.parametrize(
    ("file_format", "expected"),
    [
        ("HDF5", True),
        ("hdf5", True),
        ("HDF5BS", True),
        ("HDF5GZ", True),
        ("H5", True),
        ("h5", True),
        ("EDF", False),
        ("CBF", False),
        ("", False),
        ("H5X", False),
    ],
)
def test_one_hdf5_rule(file_format: str, expected: bool) -> None:
    assert is_hdf5_format(file_format) is expected
    assert ImageReference("f", "p", 0, file_format).is_hdf5 is expected


def test_read_image_accepts_every_hdf5_name_and_refuses_others(tmp_path: Path) -> None:
    path = tmp_path / "frames.h5"
    with h5py.File(path, "w") as file:
        file["entry/data"] = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    for fmt in ("HDF5", "HDF5GZ", "h5"):
        image = read_image(ImageReference(str(path), "entry/data", 1, fmt))
        assert image.tolist() == np.arange(12, 24).reshape(3, 4).tolist()
    with pytest.raises(DecodingError, match="'EDF'"):
        read_image(ImageReference(str(path), "entry/data", 1, "EDF"))


def test_walk_on_new_events_has_the_typed_parameters_of_walk_events() -> None:
    walk = inspect.signature(DataNode.walk_events).parameters
    new = inspect.signature(DataNode.walk_on_new_events).parameters
    assert list(new) == list(walk)
    assert [p.annotation for p in new.values()] == [p.annotation for p in walk.values()]
    assert new["from_next"].default is True and walk["from_next"].default is False


def test_state_only_reads_and_check_lease_records_killed(session, store) -> None:
    scan = session.create_scan("s")
    scan.create_container("t").create_channel("c").emit(1.0)
    scan.flush()
    store.redis.delete(store.keys.scan_lease(session.name, scan.number))
    node = get_session_node(session.name, store=store).get_scan(scan.number)
    events_before = store.redis.xlen(node.events_key)
    assert node.state is ScanState.CREATED
    assert store.redis.hget(node.key, "state") == b"CREATED"  # nothing written
    assert store.redis.xlen(node.events_key) == events_before
    assert node.check_lease() is ScanState.KILLED
    assert store.redis.hget(node.key, "state") == b"KILLED"
    assert node.state is ScanState.KILLED
    with pytest.raises(InvalidTransitionError, match="already ended KILLED: it cannot end DONE"):
        scan.end()


def test_events_carry_declared_indices_and_own_descriptions(session, store) -> None:
    with session.create_scan("s") as scan:
        timer = scan.create_container("timer")
        channel = timer.create_channel("diode", dtype="float64", unit="V")
        scan.prepared()
        channel.emit([1.0, 2.0])
    node = get_session_node(session.name, store=store).get_scan(scan.number)
    events = list(node.walk_events(wait=False))
    new_nodes = {n.name: n.index for t, n, _ in events if t is EventType.NEW_NODE}
    assert new_nodes == {"timer": 1, "diode": 2} and node.index == 0
    [first] = [d for t, _, d in events if t is EventType.NEW_DATA]
    assert first.description is not None and first.description["unit"] == "V"
    first.description["unit"] = "changed by a consumer"
    # A second walk of the same node objects: its event has its own, unchanged description.
    [again] = [d for t, _, d in node.walk_events(wait=False) if t is EventType.NEW_DATA]
    assert again.description is not None and again.description["unit"] == "V"
    diode = node.children()[0].children()[0]
    assert diode.index == 2 and diode.description["unit"] == "V"
    # END_SCAN's outcome is kept on the scan node, under both names.
    assert node.scan_end is not None and node.scan_end.state is ScanState.DONE
    assert node.end is node.scan_end
