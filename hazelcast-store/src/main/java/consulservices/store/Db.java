package consulservices.store;

import com.hazelcast.core.Hazelcast;
import com.hazelcast.core.HazelcastInstance;
import com.hazelcast.dataconnection.impl.JdbcDataConnection;
import com.hazelcast.instance.BuildInfoProvider;
import com.hazelcast.jet.impl.util.Util;

import java.sql.Connection;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Set;
import java.util.logging.Logger;

/**
 * A member's connections to PostgreSQL: the pool of the JDBC data connection {@value #DATA_CONNECTION} of
 * conf/hazelcast.xml (Hazelcast's own data connection, a shaded HikariCP pool), the schema check, and what a
 * store call does when PostgreSQL cannot be reached.
 *
 * <p>The fence: Hazelcast 5.5 hands data connections to its SQL and Jet code, not through HazelcastInstance.
 * This class, and only it, reaches the service through the member's NodeEngine ({@code Util.getNodeEngine})
 * and the {@code @Beta} JdbcDataConnection; it refuses to run on another Hazelcast minor version than
 * {@value #WRITTEN_FOR}x, so an upgrade fails loudly at the first store call instead of somewhere inside.
 * tests/integration/test_durable_log.py starts members on this jar and fails when the fence breaks.
 */
final class Db {
    static final String DATA_CONNECTION = "postgres";
    static final String WRITTEN_FOR = "5.5.";
    /**
     * After a failed connection, store calls fail at once for this long. They run on the member's partition
     * threads: without it every write to an unreachable PostgreSQL would hold its partition thread for the
     * pool's whole connectionTimeout, and with it every other operation of that partition.
     */
    static final long RETRY_AFTER_NANOS = 1_000_000_000L;
    /**
     * How long a load keeps trying to reach PostgreSQL. Loading runs once per cluster start, off the request
     * path, and a failed load leaves the map failed until the cluster restarts: the first connections of
     * three members starting at once on two cores took 1.5 s (more than the pool's connectionTimeout).
     */
    static final long LOAD_PATIENCE_NANOS = 120_000_000_000L;
    /** Between a load's tries: a pause, not a second wait (getConnection waited connectionTimeout already). */
    static final long LOAD_RETRY_MILLIS = 50;

    private static final Logger LOG = Logger.getLogger(Db.class.getName());
    private static volatile Db member;

    private final JdbcDataConnection connection;
    private final int schemaVersion;
    private volatile long downUntil = System.nanoTime();
    private volatile boolean schemaChecked;

    interface Work<T> {
        T run(Connection c) throws SQLException;
    }

    private Db(JdbcDataConnection connection, int schemaVersion) {
        this.connection = connection;
        this.schemaVersion = schemaVersion;
    }

    /** The member's Db, made on first use from the member's data connection. */
    static synchronized Db of(HazelcastInstance hz) {
        if (member == null) {
            String version = BuildInfoProvider.getBuildInfo().getVersion();
            if (!version.startsWith(WRITTEN_FOR)) {
                throw new IllegalStateException("consulservices.store.Db reaches the data connection through "
                        + "Hazelcast " + WRITTEN_FOR + "x internals; this member runs " + version
                        + ": check Util.getNodeEngine and JdbcDataConnection, then change WRITTEN_FOR");
            }
            JdbcDataConnection dc = Util.getNodeEngine(hz).getDataConnectionService()
                    .getAndRetainDataConnection(DATA_CONNECTION, JdbcDataConnection.class);
            member = new Db(dc, Integer.getInteger("hz.db.schema", 0));
        }
        return member;
    }

    /** For the QueueStore, which Hazelcast gives no HazelcastInstance: the one member of this JVM. */
    static Db member() {
        Db db = member;
        if (db != null) {
            return db;
        }
        Set<HazelcastInstance> all = Hazelcast.getAllHazelcastInstances();
        if (all.size() != 1) {
            throw new StoreRefused("the store needs one Hazelcast member in this JVM, found " + all.size(), null, true);
        }
        return of(all.iterator().next());
    }

    /**
     * run(), trying again for LOAD_PATIENCE_NANOS while no connection can be had: for the loads. Outside the
     * fence: a map's load sends hundreds of loadAll() calls at once, more than the pool's connections, so some
     * wait past its connectionTimeout for a connection that is busy, not for a database that is gone. Counted
     * as "unreachable", that wait shut every store call out for RETRY_AFTER_NANOS, again and again: a log of
     * 1,000,000 entries took 64 s to load, in bursts between stalls of a second. A load waits its turn instead.
     */
    <T> T runPatiently(String what, Work<T> work) {
        long deadline = System.nanoTime() + LOAD_PATIENCE_NANOS;
        while (true) {
            try {
                return attempt(what, work, false);
            } catch (StoreRefused e) {
                if (System.nanoTime() - deadline > 0 || !e.unreachable) {
                    throw e;
                }
                LOG.warning(e.getMessage() + "; trying again");
                try {
                    // The wait for a connection (the pool's connectionTimeout) already spaced the tries.
                    Thread.sleep(LOAD_RETRY_MILLIS);
                } catch (InterruptedException interrupted) {
                    Thread.currentThread().interrupt();
                    throw e;
                }
            }
        }
    }

    <T> T run(String what, Work<T> work) {
        return attempt(what, work, true);
    }

    /** One try; `fenced`: refused at once while the last failed connection is recent, and a failure fences. */
    private <T> T attempt(String what, Work<T> work, boolean fenced) {
        if (fenced && System.nanoTime() - downUntil < 0) {
            throw new StoreRefused(what + ": PostgreSQL was unreachable less than "
                    + RETRY_AFTER_NANOS / 1_000_000 + " ms ago; not tried", null, true);
        }
        Connection c;
        try {
            c = connection.getConnection();
        } catch (RuntimeException e) {
            if (fenced) {
                downUntil = System.nanoTime() + RETRY_AFTER_NANOS;
            }
            throw new StoreRefused(what + ": no connection to PostgreSQL: " + rootMessage(e), e, true);
        }
        try (c) {
            checkSchema(c);
            return work.run(c);
        } catch (SQLException e) {
            String state = e.getSQLState() == null ? "" : e.getSQLState();
            // Class 08 is a connection exception: the statement may have reached the server before the
            // connection broke. Any other error is PostgreSQL's answer: the statement did not commit.
            if (state.startsWith("08")) {
                downUntil = System.nanoTime() + RETRY_AFTER_NANOS;
                throw new StoreOutcomeUnknown(what + ": the connection to PostgreSQL broke: " + e.getMessage(), e);
            }
            throw new StoreRefused(what + ": PostgreSQL refused it: " + e.getMessage() + " (SQLState " + state + ")", e, false);
        }
    }

    /** Once per member: the database's schema is the one this checkout's migrations make (hz.db.schema). */
    private void checkSchema(Connection c) throws SQLException {
        if (schemaChecked) {
            return;
        }
        int found;
        try (Statement s = c.createStatement();
             ResultSet rs = s.executeQuery("SELECT coalesce(max(version), 0) FROM schema_version")) {
            rs.next();
            found = rs.getInt(1);
        }
        if (found != schemaVersion) {
            throw new StoreRefused("the database's schema is version " + found + ", this member knows version "
                    + schemaVersion + (found > schemaVersion
                    ? ": it was migrated by newer code; run that code, or restore a backup"
                    : ": run ./scripts/up, which applies db/migrations/"), null, false);
        }
        schemaChecked = true;
        LOG.info("PostgreSQL schema version " + found + " checked");
    }

    private static String rootMessage(Throwable e) {
        Throwable root = e;
        while (root.getCause() != null && root.getCause() != root) {
            root = root.getCause();
        }
        return root == e ? String.valueOf(e.getMessage()) : e.getMessage() + ": " + root.getMessage();
    }
}
