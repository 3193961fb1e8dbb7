package consulservices.store;

import com.hazelcast.query.extractor.ValueCollector;
import com.hazelcast.query.extractor.ValueExtractor;

import java.nio.charset.StandardCharsets;

/**
 * The attribute {@code entry_cost} of a log entry (conf/hazelcast.xml): the heap one copy of the entry takes,
 * as logging_svc.store.entry_cost estimates it (what the log's capacity counts). After the cluster restarted,
 * the logging service rebuilds the log's size counter with one sum of it over the map, added up on the members:
 * a million entries answer one number, not a million (tests/integration/test_hazelcast_client.py checks that
 * this and the Python formula agree).
 */
public class EntryCost implements ValueExtractor<Object, Object> {
    /** logging_svc.store.ENTRY_OVERHEAD. */
    static final long ENTRY_OVERHEAD = 290;
    /** logging_svc.store.ID_BYTES: every key is a canonical UUID. */
    static final long ID_BYTES = 36;

    @Override
    public void extract(Object entry, Object argument, ValueCollector<Object> collector) {
        long stored = ID_BYTES + entry.toString().getBytes(StandardCharsets.UTF_8).length;
        collector.addObject(ENTRY_OVERHEAD + stored + stored / 2 + stored / 20);
    }
}
