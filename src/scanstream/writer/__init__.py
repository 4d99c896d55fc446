"""The external HDF5/NeXus writer: :class:`WriterService` follows sessions and writes scans."""

from ..admin.registry import pool_members, saved_scans, writer_status
from .scan_result import ScanResult, WriteResult, scan_file_path
from .scan_writer import ScanWriter
from .service import WriterService

__all__ = [
    "ScanResult",
    "ScanWriter",
    "WriteResult",
    "WriterService",
    "pool_members",
    "saved_scans",
    "scan_file_path",
    "writer_status",
]
