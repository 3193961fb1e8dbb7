package consulservices.store;

/**
 * The store did not write: no connection to PostgreSQL could be had, or PostgreSQL answered the statement
 * with an error. The Hazelcast operation fails before it changes anything in memory, and the caller may
 * say "nothing was stored" (logging_svc answers 503 with {"stored": false}).
 */
public class StoreRefused extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** No connection could be had (as opposed to PostgreSQL answering with an error): worth trying again. */
    final boolean unreachable;

    public StoreRefused(String message, Throwable cause, boolean unreachable) {
        super(message, cause);
        this.unreachable = unreachable;
    }
}
