"""``bliss.data.events``: the event types and tuples."""

from ..subscribe.events import Event, EventData, EventType

__all__ = ["Event", "EventData", "EventType"]
