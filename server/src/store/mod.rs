//! Persistence: sea-orm entities and the repository functions that apply state transitions
//! atomically, by compare-and-set on the old state.
//!
//! `store` knows tables and SQL, not use cases: it never decides whether a transition is
//! allowed (that is `domain`) nor what should follow it (that is `service`). A zero-row
//! conditional update means another node won the race; the caller re-reads and moves on.

pub mod entity;
pub mod events;
pub mod repo;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gantry_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, RuntimeErr, TransactionTrait,
};
use tokio::sync::{Mutex, MutexGuard};

/// Errors of the persistence layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the write: the thing exists already.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached right now.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A stored value that does not parse: a bug or a manual edit.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Db(DbErr),
}

impl From<DbErr> for StoreError {
    fn from(err: DbErr) -> Self {
        let text = err.to_string();
        let lower = text.to_ascii_lowercase();
        if lower.contains("unique constraint") || lower.contains("duplicate key") {
            return StoreError::Conflict(text);
        }
        match &err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => StoreError::Unavailable(text),
            DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))
                if matches!(
                    e,
                    sea_orm::sqlx::Error::Io(_)
                        | sea_orm::sqlx::Error::PoolTimedOut
                        | sea_orm::sqlx::Error::PoolClosed
                ) =>
            {
                StoreError::Unavailable(text)
            }
            _ => StoreError::Db(err),
        }
    }
}

/// How hard SQLite works to keep a commit across power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: durable across process crashes.
    #[default]
    Normal,
    /// `synchronous=FULL`: durable across power loss too, at an fsync per commit.
    Full,
}

/// The database handle of a node.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// SQLite allows one writer at a time; taking this lock before a write transaction
    /// turns would-be `SQLITE_BUSY` errors into an orderly queue inside the process.
    write_lock: Option<Arc<Mutex<()>>>,
}

/// A write transaction, holding the SQLite writer lock while it lives.
pub struct WriteTx<'a> {
    pub tx: DatabaseTransaction,
    _guard: Option<MutexGuard<'a, ()>>,
}

impl<'a> WriteTx<'a> {
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Commits and returns the writer lock, still held: what the caller does before
    /// dropping it (publishing the committed events) happens in commit order.
    pub async fn commit_ordered(self) -> Result<Option<MutexGuard<'a, ()>>, StoreError> {
        self.tx.commit().await?;
        Ok(self._guard)
    }
}

impl Store {
    /// Connects to `url` (`sqlite://…` or `postgres://…`).
    pub async fn connect(url: &str, durability: Durability) -> Result<Store, StoreError> {
        let mut opts = ConnectOptions::new(url.to_owned());
        opts.sqlx_logging(false)
            .acquire_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5));
        let sqlite = url.starts_with("sqlite:");
        if sqlite {
            let sync = match durability {
                Durability::Normal => SqliteSynchronous::Normal,
                Durability::Full => SqliteSynchronous::Full,
            };
            // A connection to a local file does not go stale: no ping before each use
            // (a round trip to the connection's thread per query otherwise).
            opts.max_connections(8)
                .min_connections(1)
                .test_before_acquire(false)
                .map_sqlx_sqlite_opts(move |o| {
                    o.journal_mode(SqliteJournalMode::Wal)
                        .synchronous(sync)
                        .busy_timeout(Duration::from_secs(10))
                        .create_if_missing(true)
                });
        } else {
            opts.max_connections(20).min_connections(1);
        }
        let db = Database::connect(opts).await?;
        Ok(Store {
            db,
            write_lock: sqlite.then(|| Arc::new(Mutex::new(()))),
        })
    }

    /// The SQLite URL of the embedded default inside `data_dir`.
    pub fn sqlite_url(data_dir: &Path) -> String {
        format!("sqlite://{}?mode=rwc", data_dir.join("gantry.db").display())
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        Migrator::up(&self.db, None).await?;
        Ok(())
    }

    /// True when the database answers and no migration is pending.
    pub async fn ready(&self) -> Result<bool, StoreError> {
        self.db.ping().await?;
        Ok(Migrator::get_pending_migrations(&self.db).await?.is_empty())
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Runs `write` (one statement outside a transaction) in turn with the write
    /// transactions: on SQLite it then waits in the process's queue, not in SQLite's busy
    /// handler, which sleeps in steps of up to 100 ms while the writer is taken.
    pub async fn in_turn<T>(&self, write: impl Future<Output = T>) -> T {
        let _guard = match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        write.await
    }

    /// Begins a write transaction.
    pub async fn write(&self) -> Result<WriteTx<'_>, StoreError> {
        let guard = match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let tx = self.db.begin().await?;
        if guard.is_some() {
            // Take SQLite's write lock first: a transaction that reads before it writes
            // would fail with SQLITE_BUSY_SNAPSHOT if a single-statement write (a heartbeat)
            // committed in between; taken up front, the busy timeout applies instead.
            tx.execute_unprepared("UPDATE leases SET expires_at = expires_at WHERE 1 = 0")
                .await?;
        }
        Ok(WriteTx { tx, _guard: guard })
    }
}
