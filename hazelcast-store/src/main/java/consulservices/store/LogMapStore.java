package consulservices.store;

import com.hazelcast.core.HazelcastInstance;
import com.hazelcast.map.MapLoaderLifecycleSupport;
import com.hazelcast.map.MapStore;

import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.Properties;
import java.util.UUID;

/**
 * The log map (message id -> entry, logging_svc/store.py) written through to the table log_entries
 * (db/migrations/). An entry is stored as the string the services wrote, stamp and message together
 * (contracts/log_entry.py), so this class knows nothing of its format.
 *
 * <p>Write-through: Hazelcast calls store() on the partition thread before it puts the entry in memory, and
 * answers the client only after both; an exception here leaves memory unchanged and fails the put.
 * putIfAbsent of a key not in memory calls load() first (one SELECT by primary key per new message: measured
 * in docs/BENCHMARKS.md); it is kept, because it is what finds an entry whose commit the client never saw
 * acknowledged, so that a retry does not store it twice.
 */
public class LogMapStore implements MapStore<String, String>, MapLoaderLifecycleSupport {
    /** Keys per SELECT while the map loads: Hazelcast pages loadAllKeys() itself into loadAll() calls. */
    static final int KEY_PAGE = 10_000;

    private Db db;

    @Override
    public void init(HazelcastInstance hz, Properties properties, String mapName) {
        db = Db.of(hz);
    }

    @Override
    public void destroy() {
    }

    @Override
    public void store(String key, String value) {
        db.run("storing log entry " + key, c -> {
            try (PreparedStatement s = c.prepareStatement(
                    "INSERT INTO log_entries (id, entry) VALUES (?, ?) ON CONFLICT (id) DO NOTHING")) {
                s.setObject(1, UUID.fromString(key));
                s.setString(2, value);
                s.executeUpdate();
            }
            return null;
        });
    }

    @Override
    public void storeAll(Map<String, String> entries) {
        db.run("storing " + entries.size() + " log entries", c -> {
            c.setAutoCommit(false);
            try (PreparedStatement s = c.prepareStatement(
                    "INSERT INTO log_entries (id, entry) VALUES (?, ?) ON CONFLICT (id) DO NOTHING")) {
                for (Map.Entry<String, String> e : entries.entrySet()) {
                    s.setObject(1, UUID.fromString(e.getKey()));
                    s.setString(2, e.getValue());
                    s.addBatch();
                }
                s.executeBatch();
                c.commit();
            } finally {
                c.setAutoCommit(true);
            }
            return null;
        });
    }

    @Override
    public void delete(String key) {
        deleteAll(List.of(key));
    }

    @Override
    public void deleteAll(Collection<String> keys) {
        db.run("deleting " + keys.size() + " log entries", c -> {
            try (PreparedStatement s = c.prepareStatement("DELETE FROM log_entries WHERE id = ANY (?)")) {
                s.setArray(1, c.createArrayOf("uuid", uuids(keys)));
                s.executeUpdate();
            }
            return null;
        });
    }

    /** putIfAbsent's look before a write, on the request path: it fails fast. */
    @Override
    public String load(String key) {
        return select(List.of(key), false).get(key);
    }

    /** While the map loads: patiently, because a failed load is final until the cluster restarts. */
    @Override
    public Map<String, String> loadAll(Collection<String> keys) {
        return select(keys, true);
    }

    private Map<String, String> select(Collection<String> keys, boolean patient) {
        Db.Work<Map<String, String>> work = c -> {
            Map<String, String> found = new HashMap<>(keys.size() * 2);
            try (PreparedStatement s = c.prepareStatement("SELECT id, entry FROM log_entries WHERE id = ANY (?)")) {
                s.setArray(1, c.createArrayOf("uuid", uuids(keys)));
                try (ResultSet rs = s.executeQuery()) {
                    while (rs.next()) {
                        found.put(rs.getObject(1, UUID.class).toString(), rs.getString(2));
                    }
                }
            }
            return found;
        };
        String what = "loading " + keys.size() + " log entries";
        return patient ? db.runPatiently(what, work) : db.run(what, work);
    }

    /** Every id, a page of KEY_PAGE at a time in id order: no transaction or cursor held while the map loads. */
    @Override
    public Iterable<String> loadAllKeys() {
        return () -> new Iterator<>() {
            private List<String> page = nextPage(null);
            private int at;

            @Override
            public boolean hasNext() {
                if (at == page.size() && page.size() == KEY_PAGE) {
                    page = nextPage(page.get(page.size() - 1));
                    at = 0;
                }
                return at < page.size();
            }

            @Override
            public String next() {
                if (!hasNext()) {
                    throw new NoSuchElementException();
                }
                return page.get(at++);
            }
        };
    }

    private List<String> nextPage(String after) {
        return db.runPatiently("listing the log's ids", c -> {
            List<String> ids = new ArrayList<>(KEY_PAGE);
            String sql = after == null
                    ? "SELECT id FROM log_entries ORDER BY id LIMIT " + KEY_PAGE
                    : "SELECT id FROM log_entries WHERE id > ? ORDER BY id LIMIT " + KEY_PAGE;
            try (PreparedStatement s = c.prepareStatement(sql)) {
                if (after != null) {
                    s.setObject(1, UUID.fromString(after));
                }
                try (ResultSet rs = s.executeQuery()) {
                    while (rs.next()) {
                        ids.add(rs.getObject(1, UUID.class).toString());
                    }
                }
            }
            return ids;
        });
    }

    private static Object[] uuids(Collection<String> keys) {
        return keys.stream().map(UUID::fromString).toArray();
    }
}
