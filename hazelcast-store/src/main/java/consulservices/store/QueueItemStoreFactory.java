package consulservices.store;

import com.hazelcast.collection.QueueStore;
import com.hazelcast.collection.QueueStoreFactory;

import java.util.Properties;

/** Named in conf/hazelcast.xml: Hazelcast makes one QueueItemStore per queue through it, with the queue's name. */
public class QueueItemStoreFactory implements QueueStoreFactory<String> {
    @Override
    public QueueStore<String> newQueueStore(String name, Properties properties) {
        return new QueueItemStore(name);
    }
}
