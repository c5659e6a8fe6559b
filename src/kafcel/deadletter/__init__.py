"""Dead letters: one writer for the bridge and the workers.

Both write the same record (the original bytes where they fit, the record's own headers,
then the ``kafcel.*`` headers of :class:`kafcel.protocol.deadletter.DeadLetter`), shed the
same parts when the record would not fit what the producer may send, and report a write
only once Kafka has acknowledged it: a record settles after its dead letter is durable,
never before.
"""

from .writer import DeadLetterWriter, fit

__all__ = ["DeadLetterWriter", "fit"]
