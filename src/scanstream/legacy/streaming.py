"""``bliss.config.streaming``: the stop handler of the stream readers."""

from ..subscribe.events import StopHandler

DataStreamReaderStopHandler = StopHandler

__all__ = ["DataStreamReaderStopHandler"]
