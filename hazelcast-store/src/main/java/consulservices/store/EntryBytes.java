package consulservices.store;

import com.hazelcast.query.extractor.ValueCollector;
import com.hazelcast.query.extractor.ValueExtractor;

import java.nio.charset.StandardCharsets;

/**
 * The attribute {@code utf8_bytes} of a log entry (conf/hazelcast.xml): its length in UTF-8 bytes. The
 * logging service projects it over the map to rebuild the log's size counter after the cluster restarted
 * (logging_svc/store.py, LogSize): the cost formula stays in Python, the members only measure.
 */
public class EntryBytes implements ValueExtractor<Object, Object> {
    @Override
    public void extract(Object entry, Object argument, ValueCollector<Object> collector) {
        collector.addObject(entry.toString().getBytes(StandardCharsets.UTF_8).length);
    }
}
