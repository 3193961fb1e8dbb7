package consulservices.store;

import com.hazelcast.collection.QueueStore;

import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.util.Collection;
import java.util.HashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * A queue (item id -> the facade's JSON item, contracts/queue_item.py) written through to the table
 * queue_items, one set of rows per queue name.
 *
 * <p>offer() calls store() and poll() calls delete() on the queue's partition thread before they change
 * memory: an offer answered true is committed, a poll that returned an item has deleted its row. When the
 * queue's first member starts it, loadAllKeys() gives the ids in id order, which is the queue's order
 * (Hazelcast numbers items from the largest loaded id + 1), and the items are read back as they are polled.
 */
public class QueueItemStore implements QueueStore<String> {
    private final String queue;

    QueueItemStore(String queue) {
        this.queue = queue;
    }

    @Override
    public void store(Long id, String item) {
        storeAll(Map.of(id, item));
    }

    @Override
    public void storeAll(Map<Long, String> items) {
        Db.member().run("storing " + items.size() + " items of queue " + queue, c -> {
            try (PreparedStatement s = c.prepareStatement(
                    "INSERT INTO queue_items (queue, id, item) SELECT ?, * FROM unnest(?::bigint[], ?::text[])")) {
                s.setString(1, queue);
                s.setArray(2, c.createArrayOf("bigint", items.keySet().toArray()));
                s.setArray(3, c.createArrayOf("text", items.values().toArray()));
                s.executeUpdate();
            }
            return null;
        });
    }

    @Override
    public void delete(Long id) {
        deleteAll(List.of(id));
    }

    @Override
    public void deleteAll(Collection<Long> ids) {
        Db.member().run("deleting " + ids.size() + " items of queue " + queue, c -> {
            try (PreparedStatement s = c.prepareStatement(
                    "DELETE FROM queue_items WHERE queue = ? AND id = ANY (?)")) {
                s.setString(1, queue);
                s.setArray(2, c.createArrayOf("bigint", ids.toArray()));
                s.executeUpdate();
            }
            return null;
        });
    }

    @Override
    public String load(Long id) {
        return loadAll(List.of(id)).get(id);
    }

    @Override
    public Map<Long, String> loadAll(Collection<Long> ids) {
        return Db.member().run("loading " + ids.size() + " items of queue " + queue, c -> {
            Map<Long, String> found = new HashMap<>(ids.size() * 2);
            try (PreparedStatement s = c.prepareStatement(
                    "SELECT id, item FROM queue_items WHERE queue = ? AND id = ANY (?)")) {
                s.setString(1, queue);
                s.setArray(2, c.createArrayOf("bigint", ids.toArray()));
                try (ResultSet rs = s.executeQuery()) {
                    while (rs.next()) {
                        found.put(rs.getLong(1), rs.getString(2));
                    }
                }
            }
            return found;
        });
    }

    /** In id order: the set's order is the order Hazelcast queues the loaded items in. */
    @Override
    public Set<Long> loadAllKeys() {
        return Db.member().runPatiently("listing the items of queue " + queue, c -> {
            Set<Long> ids = new LinkedHashSet<>();
            try (PreparedStatement s = c.prepareStatement("SELECT id FROM queue_items WHERE queue = ? ORDER BY id")) {
                s.setString(1, queue);
                try (ResultSet rs = s.executeQuery()) {
                    while (rs.next()) {
                        ids.add(rs.getLong(1));
                    }
                }
            }
            return ids;
        });
    }
}
