-- The log map and the queues of the Hazelcast members, written through by hazelcast-store/ (LogMapStore,
-- QueueItemStore). Applied once, in a transaction, by ./scripts/up (python -m servicekit.ops migrate), which
-- records the number of this file in schema_version.

-- message id -> the entry the logging service wrote: a 20-digit acceptance stamp, then the message
-- (servicekit/log_entry.py). The members load the whole table into the map when the cluster starts.
CREATE TABLE log_entries (
    id uuid PRIMARY KEY,
    entry text NOT NULL
);

-- The items on each queue not yet taken: offer inserts, poll deletes. id is Hazelcast's item id, which
-- grows in queue order; a restarted cluster queues what is left in id order.
CREATE TABLE queue_items (
    queue text NOT NULL,
    id bigint NOT NULL,
    item text NOT NULL,
    PRIMARY KEY (queue, id)
);
