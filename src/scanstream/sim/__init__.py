"""Library-mode scans on simulated devices (BLISS-like): motors, counters, MCA, Lima, scans.

Example::

    from scanstream import create_session
    from scanstream.sim import Motor, DiodeCounter, SavingConfig, ascan

    session = create_session("test_session")
    roby = Motor("roby")
    diode = DiodeCounter("diode", seed=1)
    result = ascan(session, roby, 0, 1, 10, 0.1, diode,
                   saving=SavingConfig("/tmp/data", "test_session"))
"""

from .beamline import Beamline, default_beamline
from .chain import run_chain
from .control import ScanResult, scan_result_of, time_scale
from .devices import (
    ChannelSpec,
    ConstantCounter,
    Counter,
    DiodeCounter,
    GaussianCounter,
    Motor,
    MotorLimitError,
    PointContext,
)
from .groups import GroupResult, group, parallel, sequence
from .lima import LimaAcquisition, LimaDetector, LimaFileExistsError, LimaSavingError
from .masters import Device, TopMaster
from .saving import SavingConfig
from .scans import a2scan, amesh, anscan, ascan, ct, d2scan, dnscan, dscan, loopscan, timescan
from .spectra import Mca, SamplingCounter

__all__ = [
    "Beamline",
    "ChannelSpec",
    "ConstantCounter",
    "Counter",
    "Device",
    "DiodeCounter",
    "GaussianCounter",
    "GroupResult",
    "LimaAcquisition",
    "LimaDetector",
    "LimaFileExistsError",
    "LimaSavingError",
    "Mca",
    "Motor",
    "MotorLimitError",
    "PointContext",
    "SamplingCounter",
    "SavingConfig",
    "ScanResult",
    "TopMaster",
    "a2scan",
    "amesh",
    "anscan",
    "ascan",
    "ct",
    "d2scan",
    "default_beamline",
    "dnscan",
    "dscan",
    "group",
    "loopscan",
    "parallel",
    "run_chain",
    "scan_result_of",
    "sequence",
    "time_scale",
    "timescan",
]
