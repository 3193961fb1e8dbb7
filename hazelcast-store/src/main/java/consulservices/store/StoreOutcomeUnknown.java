package consulservices.store;

/**
 * The connection to PostgreSQL broke while a statement was in flight: it may have been committed. The
 * Hazelcast operation fails without changing memory; a retry under the same key finds a committed entry
 * through MapLoader.load and does not write it twice.
 */
public class StoreOutcomeUnknown extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public StoreOutcomeUnknown(String message, Throwable cause) {
        super(message, cause);
    }
}
