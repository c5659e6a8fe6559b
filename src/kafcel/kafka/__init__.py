"""Kafka clients: their configuration (:mod:`.config`), what the broker is
(:mod:`.broker`), topics and offsets (:mod:`.admin`), records that must reach Kafka
(:mod:`.delivery`).
"""
