"""The task store in PostgreSQL, for replicas on several hosts: `SqlTaskStore`'s statements over one psycopg
connection per store."""

import threading

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
except ImportError as error:  # the optional `postgres` extra
    raise ImportError("a postgresql:// task store needs psycopg: pip install 'qasr[postgres]'") from error

from qasr.serve.task_store import SCHEMA, SqlTaskStore

SCHEMA_LOCK = 0x71A5  # an advisory lock key: replicas starting at once must not race to create the table
# without these a database host that vanished from the network hangs a store call (and the thread under it) for as
# long as TCP retries, many minutes; each is well under a lease, and the URL's own settings win
CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 10_000
TCP_USER_TIMEOUT_MS = 10_000


def connection_params(url: str) -> dict:
    """The URL's libpq parameters, with the timeouts above wherever it sets none."""
    params = conninfo_to_dict(url)
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
    params.setdefault("tcp_user_timeout", str(TCP_USER_TIMEOUT_MS))
    options = params.get("options", "")
    if "statement_timeout" not in options:
        params["options"] = f"{options} -c statement_timeout={STATEMENT_TIMEOUT_MS}".strip()
    return params


class PostgresTaskStore(SqlTaskStore):
    """Tasks in a PostgreSQL database, durable once a statement returns (the server's synchronous commit). One
    connection in autocommit mode, so every statement is its own transaction, used under a lock: the store is
    called from several threads at once (the store's pools)."""

    NOW = "(EXTRACT(EPOCH FROM now())::float8)"  # the statement's transaction start: one instant per statement
    # rows another replica is claiming right now are skipped, not waited for, and never claimed twice
    LOCK_CLAIMED = " FOR UPDATE SKIP LOCKED"
    REQUEST_FIELD = "(request::jsonb ->> '{}')"
    OUTAGES = (psycopg.OperationalError, psycopg.InterfaceError)  # refused, dropped, timed out

    def __init__(self, url: str, max_attempts: int = 3):
        super().__init__(max_attempts)
        self.params = connection_params(url)
        self.lock = threading.Lock()
        self.db = psycopg.connect(**self.params, autocommit=True)
        with self.lock, self.db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self.db.execute(SCHEMA.replace("REAL", "DOUBLE PRECISION"))

    def _disconnect(self) -> None:
        with self.lock:
            self.db.close()

    def _send(self, sql: str, args: tuple | list) -> list[tuple]:
        with self.lock:
            # the database restarted or the network dropped: the call that saw it failed (it may have committed,
            # so it is not repeated); the next one reconnects
            if self.db.broken:
                self.db = psycopg.connect(**self.params, autocommit=True)
            cursor = self.db.execute(sql.replace("?", "%s"), args)
            return cursor.fetchall() if cursor.description is not None else []
