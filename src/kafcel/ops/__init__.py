"""Operator tooling, never imported by the data path: ``kafcel status`` (:mod:`.status`),
dead letters (:mod:`.deadletters`), range replay (:mod:`.replay`), the dashboard
(:mod:`.dashboard`) and terminal output (:mod:`.render`).

Nothing is imported here: each CLI command loads only the modules it needs.
"""
