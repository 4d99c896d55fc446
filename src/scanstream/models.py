"""The shapes exchanged through Redis, defined once.

Everything that goes into a Redis entry and comes back out (scan states, node kinds,
image references, the description of a node) is defined here, so that the publisher and
the readers cannot drift apart.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class ScanState(enum.IntEnum):
    """State of a scan. Ordered: a scan only moves forward.

    ``DONE``, ``USER_ABORTED``, ``KILLED`` and ``FAILED`` are final. ``EXPIRED`` is never
    stored: a session walk ends with it a scan that expired or was deleted from Redis before
    its end was read (its END_SCAN says so; the data it had is not all there).
    """

    CREATED = 0
    PREPARED = 1
    DONE = 4
    USER_ABORTED = 5
    KILLED = 6
    FAILED = 7
    EXPIRED = 8

    @property
    def is_final(self) -> bool:
        """True for the end states."""
        return self >= ScanState.DONE


FINAL_STATES = (ScanState.DONE, ScanState.USER_ABORTED, ScanState.KILLED, ScanState.FAILED)


class NodeType(str, enum.Enum):
    """Kinds of nodes in the tree. The values are the ``node.type`` strings of the seed API.

    ``node.type`` itself stays a plain ``str`` (as in the seed API); the members compare equal
    to it (``node.type == NodeType.CHANNEL``), which is how the code tests it.
    """

    SESSION = "session"
    SCAN = "scan"
    SCAN_GROUP = "scan_group"
    CONTAINER = "container"
    CHANNEL = "channel"
    LIMA = "lima"
    NODE_REF_CHANNEL = "node_ref_channel"


#: Node types that own a data stream (test it with ``_protocol.entries.has_data_stream``).
DATA_NODE_TYPES = frozenset(
    t.value for t in (NodeType.CHANNEL, NodeType.LIMA, NodeType.NODE_REF_CHANNEL)
)
#: Node types of scans.
SCAN_NODE_TYPES = frozenset(t.value for t in (NodeType.SCAN, NodeType.SCAN_GROUP))


def is_hdf5_format(file_format: str) -> bool:
    """True when an image reference's ``file_format`` names an HDF5 file.

    One rule for the readers and the writer: ``H5`` and any name starting with ``HDF5``
    (``HDF5``, ``HDF5BS``, ``HDF5GZ``...), case-insensitive.
    """
    name = file_format.upper()
    return name == "H5" or name.startswith("HDF5")


class ImageReference(NamedTuple):
    """Where one 2D image is stored: a frame of a detector file.

    Attributes
    ----------
    file_path : str
        Path of the detector file (absolute paths are recommended).
    path_in_file : str
        Path of the dataset inside the file (HDF5), empty for single-image formats.
    index_in_file : int
        Index of the frame along the first axis of that dataset.
    file_format : str
        ``"HDF5"`` (or a variant, see :attr:`is_hdf5`: readable by scanstream), or another
        format name (``"EDF"``...) that scanstream transports but cannot read.
    """

    file_path: str
    path_in_file: str
    index_in_file: int
    file_format: str

    @property
    def is_hdf5(self) -> bool:
        """True when the file is HDF5 (see :func:`is_hdf5_format`)."""
        return is_hdf5_format(self.file_format)


class SavingMode(str, enum.Enum):
    """How a lima-like detector saves its images."""

    MANUAL = "MANUAL"
    NOSAVING = "NOSAVING"


class SavingState(str, enum.Enum):
    """Where the saving of a scan stands: the verdict the writer that owns the scan records.

    ``SAVED``, ``FAILED`` and ``NOT_SAVED`` are final. A scan no writer has taken yet is
    ``WAITING``.
    """

    WAITING = "WAITING"  #: no writer has taken the scan (yet)
    WRITING = "WRITING"  #: a writer is writing it (file and entries known)
    SAVED = "SAVED"  #: every point is in the file, checked against the sealed lengths
    #: the writer could not save it; ``reason`` says why, and when a failure of the
    #: environment (disk full) is tried again (:attr:`SavingVerdict.retried`), then SAVED
    FAILED = "FAILED"
    NOT_SAVED = "NOT_SAVED"  #: not saved by design (saving off in scan_info)

    @property
    def is_final(self) -> bool:
        """True for SAVED, FAILED and NOT_SAVED."""
        return self in (SavingState.SAVED, SavingState.FAILED, SavingState.NOT_SAVED)


#: In the reason of a FAILED verdict: the running writer tries the scan again
#: (:mod:`scanstream.writer.retry`).
RETRY_NOTE = "the running writer tries again"


@dataclass(frozen=True)
class SavingVerdict:
    """Whether and where a scan was saved, as recorded in Redis by the writer that owns it.

    Attributes
    ----------
    state : SavingState
        Where the saving stands.
    file : str or None
        The file the scan is (being) written into.
    entries : tuple of str
        The NeXus entries of the scan in that file (``"12.1"``, ``"12.2"``...).
    points : dict
        Points (or images) in the file per data node name, once SAVED.
    reason : str or None
        Why the scan was not saved (FAILED), or why saving is off (NOT_SAVED).
    writer : str or None
        Identity of the writer that recorded the verdict (``host:pid:token``).
    time : float or None
        Epoch time the verdict was recorded.
    """

    state: SavingState
    file: str | None = None
    entries: tuple[str, ...] = ()
    points: dict[str, int] = field(default_factory=dict)
    reason: str | None = None
    writer: str | None = None
    time: float | None = None

    @property
    def retried(self) -> bool:
        """True for a FAILED scan that the running writer tries again (``reason`` says when)."""
        return self.state is SavingState.FAILED and RETRY_NOTE in (self.reason or "")

    def __str__(self) -> str:
        if self.state is SavingState.SAVED:
            return f"saved in {self.file}::{','.join(self.entries)}"
        if self.state is SavingState.WRITING:
            return f"being written into {self.file}"
        if self.state is SavingState.WAITING:
            return "waiting for a writer"
        return f"{self.state.value}: {self.reason or 'no reason recorded'}"


@dataclass(frozen=True)
class NodeDescription:
    """What a NEW_NODE entry of a scan's event stream says about a node.

    Attributes
    ----------
    index : int
        Number of the node inside its scan (1, 2, ...). The scan itself is 0.
    parent : int
        Index of the parent node (0: the scan).
    type : str
        One of the :class:`NodeType` values.
    name : str
        The node name (for channels, the full name such as ``"axis:roby"``).
    info : dict
        Node metadata. Channels: ``dtype``, ``shape`` (``-1`` for a variable length),
        ``unit``; lima nodes: ``dtype``, ``shape`` (height, width), ``saving_mode``.
    """

    index: int
    parent: int
    type: str
    name: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScanEnd:
    """The final state of a scan, carried by END_SCAN.

    Attributes
    ----------
    state : ScanState
        DONE, USER_ABORTED, KILLED or FAILED.
    error : str or None
        The error text (exception type and message) when the scan did not end DONE.
    end_time : float
        Epoch time of the end.
    lengths : dict
        Final number of points (or images) per data node index.
    lost : dict
        Data node index -> points Redis had acknowledged to the publisher, for the streams
        that hold fewer (a failover or a restart lost acknowledged writes; the scan then
        ended FAILED). Empty when nothing was lost.
    """

    state: ScanState
    error: str | None
    end_time: float
    lengths: dict[int, int]
    lost: dict[int, int] = field(default_factory=dict)
