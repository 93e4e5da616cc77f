"""The task store in PostgreSQL, for replicas on several hosts: `SqlTaskStore`'s statements over one psycopg
connection per store."""

import threading

try:
    import psycopg
except ImportError as error:  # the optional `postgres` extra
    raise ImportError("a postgresql:// task store needs psycopg: pip install 'qasr[postgres]'") from error

from serve.task_store import SCHEMA, SqlTaskStore

SCHEMA_LOCK = 0x71A5  # an advisory lock key: replicas starting at once must not race to create the table


class PostgresTaskStore(SqlTaskStore):
    """Tasks in a PostgreSQL database, durable once a statement returns (the server's synchronous commit). One
    connection in autocommit mode, so every statement is its own transaction, used under a lock: the store is
    called from several threads at once (asyncio.to_thread)."""

    NOW = "(EXTRACT(EPOCH FROM now())::float8)"  # the statement's transaction start: one instant per statement
    # rows another replica is claiming right now are skipped, not waited for, and never claimed twice
    LOCK_CLAIMED = " FOR UPDATE SKIP LOCKED"
    MODEL = "(request::jsonb ->> 'model')"

    def __init__(self, url: str, max_attempts: int = 3):
        super().__init__(max_attempts)
        self.url = url
        self.lock = threading.Lock()
        self.db = psycopg.connect(url, autocommit=True)
        with self.lock, self.db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self.db.execute(SCHEMA.replace("REAL", "DOUBLE PRECISION"))

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def _execute(self, sql: str, args: tuple | list) -> list[tuple]:
        with self.lock:
            # the database restarted or the network dropped: the call that saw it failed (it may have committed,
            # so it is not repeated); the next one reconnects
            if self.db.broken:
                self.db = psycopg.connect(self.url, autocommit=True)
            cursor = self.db.execute(sql.replace("?", "%s"), args)
            return cursor.fetchall() if cursor.description is not None else []
