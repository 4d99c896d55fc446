"""``bliss.data.events``: the event types and tuples, and ``ImageNotSaved``."""

from ..exceptions import ImageNotSavedError
from ..subscribe.events import Event, EventData, EventType

#: What BLISS raised for the references of images a detector does not save (NOSAVING).
ImageNotSaved = ImageNotSavedError

__all__ = ["Event", "EventData", "EventType", "ImageNotSaved"]
