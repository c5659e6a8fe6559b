"""The once-guard: claims, done markers (:mod:`.once`) and the leases that keep a
running task's claim alive (:mod:`.lease`)."""
