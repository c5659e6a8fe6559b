#!/usr/bin/env bash
# Submit kafcel tasks without Python: any Kafka client that writes the JSON envelope works.
#
# This script uses kcat (https://github.com/edenhill/kcat, Debian package `kcat`). Run it
# from anywhere once the local stack (`make dev-up`), a worker and the bridge are up:
#
#   examples/kcat.sh produce   # one record, then several with -K: (the default)
#   examples/kcat.sh poison    # a record the bridge cannot use: it lands on the DLQ
#   examples/kcat.sh results   # outcomes: key and value of each record
#   examples/kcat.sh dlq       # dead letters: kafcel.* headers and the original value
#
# The same environment as the rest of kafcel picks the cluster and the topics.
#
# Other languages (Go, Java, Node, Rust...): produce the same UTF-8 JSON as the record
# value and the ordering key as the record key, with acks=all (and idempotence on).
# The JSON Schema of the envelope ships at src/kafcel/schema/envelope-v1.json (in the
# wheel: kafcel/schema/envelope-v1.json): validate against it in your producer's tests.
set -euo pipefail

BROKER="${KAFCEL_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
TOPIC="${KAFCEL_TOPIC:-celery-tasks}"
RESULTS="${KAFCEL_RESULTS_TOPIC:-$TOPIC.results}"
DLQ="${KAFCEL_DLQ_TOPIC:-$TOPIC.dlq}"

produce() {
    # One record: the value is the envelope, -k sets the key. The key decides the
    # partition, so one user's orders stay in order (fully so with `--ordering key`).
    #   v     envelope version, the integer 1
    #   task  a Celery task name registered in the bridge's app (or on its allow-list)
    #   args  positional arguments, JSON values only (kwargs: an object)
    #   id    idempotency key: becomes the Celery task id, so writing this record twice
    #         still charges order 42 once (the worker's once-guard skips a finished id
    #         for KAFCEL_ONCE_DONE_TTL_S, 7 days by default)
    printf '%s\n' '{"v":1,"task":"shop.process_order","args":[42,"2026-11-23"],"id":"order-42"}' |
        kcat -P -b "$BROKER" -t "$TOPIC" -k user-7

    # Several records, each line `key:value`. -K: splits at the first ':', so the JSON
    # may contain ':' but the key may not (pick another delimiter, -K'|', if it must).
    # Without "id", the task id is derived from topic/partition/offset (UUIDv5): a record
    # read again after a crash or a rebalance gets the same id and is not run twice; two
    # *different* records with equal content are two tasks. Send an "id" when the same
    # request may be produced more than once (a retried HTTP call upstream, say).
    kcat -P -b "$BROKER" -t "$TOPIC" -K: <<'RECORDS'
user-7:{"v":1,"task":"shop.process_order","args":[43,"2026-11-23"],"id":"order-43"}
user-8:{"v":1,"task":"shop.process_order","kwargs":{"order_id":44,"day":"2026-11-23"}}
user-7:{"v":1,"task":"shop.process_order","args":[45,"2026-11-24"],"countdown":30,"headers":{"source":"kcat"}}
RECORDS
    echo "produced to $TOPIC on $BROKER; see the outcomes with: $0 results"
}

poison() {
    # Not JSON, then a task the app does not know: the bridge sends each to the DLQ with
    # the original bytes and never stalls the partition. A task that fails for good on
    # the worker (here: a day that is not a date) ends there too, with a FAILURE outcome.
    kcat -P -b "$BROKER" -t "$TOPIC" -K: <<'RECORDS'
user-9:this is not json
user-9:{"v":1,"task":"shop.no_such_task","args":[]}
user-9:{"v":1,"task":"shop.process_order","args":[46,"someday"],"id":"order-46"}
RECORDS
    echo "produced 3 bad records; see them with: $0 dlq"
}

results() {
    # One outcome per task that reached a final state, keyed like its request:
    #   user-7 {"task_id":"order-42","task":"shop.process_order","status":"SUCCESS",...}
    # -e exits at the end of the topic; drop it to follow new outcomes. Downstream
    # services (Flink, Spark, other consumers) read this same topic.
    kcat -C -b "$BROKER" -t "$RESULTS" -o beginning -e -q -f '%k %s\n'
}

dlq() {
    # %h prints the headers: kafcel.error.class, kafcel.error.message, kafcel.stage
    # (bridge or worker), kafcel.origin.topic/partition/offset, kafcel.task, ...
    # %s is the original value, ready to be fixed and produced again (a replay).
    kcat -C -b "$BROKER" -t "$DLQ" -o beginning -e -q -f '%h %s\n'
}

case "${1:-produce}" in
    produce) produce ;;
    poison) poison ;;
    results) results ;;
    dlq) dlq ;;
    *)
        echo "usage: $0 [produce|poison|results|dlq]" >&2
        exit 2
        ;;
esac
