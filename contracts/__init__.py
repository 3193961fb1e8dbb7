"""What the services send each other: the queue item, the log entry, the paging cursors and limits, the formats
of request ids and trace context. Imports nothing of ours, so every side of a contract reads the same text."""
