"""The wire vocabulary: the task envelope (:mod:`.envelope`), the outcome record
(:mod:`.outcome`), record headers (:mod:`.headers`) and the dead-letter format
(:mod:`.deadletter`). It imports nothing of kafcel but :mod:`kafcel.errors`.
"""
