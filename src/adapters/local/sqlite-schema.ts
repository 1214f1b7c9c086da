import {DatabaseSync} from 'node:sqlite';

/**
 * The local metadata database: its connection settings and its schema, as a
 * list of forward migrations. `PRAGMA user_version` is the number of steps
 * applied; a new schema change is a new step at the end, never an edit of an
 * old one.
 */

/** One schema change; runs inside the migration transaction. */
export type Migration = (db: DatabaseSync) => void;

export const MIGRATIONS: readonly Migration[] = [
  // 1: jobs, images, labels, idempotency keys, quotas.
  db =>
    db.exec(`
      -- The job record as JSON, with the fields listings filter and order on as columns.
      -- lease_until_ms is the lease in epoch milliseconds (running jobs only).
      CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        status TEXT NOT NULL,
        owner TEXT,
        lease_until_ms INTEGER,
        record TEXT NOT NULL
      ) STRICT;
      -- Newest first (created_at, id descending), with or without an equality filter in front:
      -- a page is one index range, read up to LIMIT.
      CREATE INDEX jobs_newest ON jobs (created_at DESC, id DESC);
      CREATE INDEX jobs_by_status ON jobs (status, created_at DESC, id DESC);
      CREATE INDEX jobs_by_owner ON jobs (owner, created_at DESC, id DESC);
      CREATE INDEX jobs_by_owner_status ON jobs (owner, status, created_at DESC, id DESC);
      CREATE INDEX jobs_by_lease ON jobs (status, lease_until_ms);

      -- Image id -> its job; the image record itself is in the job's record.
      CREATE TABLE images (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL
      ) STRICT, WITHOUT ROWID;
      CREATE INDEX images_by_job ON images (job_id);

      -- One row per metadata label of a job. The job's created_at is copied here so that a
      -- label filter pages in job order from this table's index alone.
      CREATE TABLE job_labels (
        job_id TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (job_id, key)
      ) STRICT, WITHOUT ROWID;
      CREATE INDEX job_labels_newest ON job_labels (key, value, created_at DESC, job_id DESC);

      CREATE TABLE idempotency_keys (
        key_hash TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        job_id TEXT NOT NULL,
        lease_until_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        completed INTEGER NOT NULL
      ) STRICT, WITHOUT ROWID;

      -- Images counted against a subject's daily quota, reservations held open included.
      CREATE TABLE quota_counters (
        subject TEXT NOT NULL,
        day TEXT NOT NULL,
        used INTEGER NOT NULL,
        PRIMARY KEY (subject, day)
      ) STRICT, WITHOUT ROWID;

      -- Reservations not yet settled by their job's completion. created_at is kept as given;
      -- created_at_ms orders and filters them.
      CREATE TABLE quota_reservations (
        job_id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        day TEXT NOT NULL,
        amount INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
      ) STRICT, WITHOUT ROWID;
      CREATE INDEX quota_reservations_by_age ON quota_reservations (created_at_ms, job_id);

      -- Facts about the store itself (such as the import of the JSON records).
      CREATE TABLE store_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
      ) STRICT, WITHOUT ROWID;
    `),
  // 2: a job's source (legacy, generate, edit) as a column, so listings filter on it by index.
  db =>
    db.exec(`
      ALTER TABLE jobs ADD COLUMN source TEXT NOT NULL DEFAULT 'generate';
      UPDATE jobs SET source = coalesce(json_extract(record, '$.source'), 'generate');
      CREATE INDEX jobs_by_source ON jobs (source, created_at DESC, id DESC);
    `),
  // 3: expired idempotency keys and past days' quota counts are swept by age.
  db =>
    db.exec(`
      CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at_ms);
      CREATE INDEX quota_counters_by_day ON quota_counters (day);
    `),
];

/** How long a statement waits for another process's write lock before failing. */
const BUSY_TIMEOUT_MS = 5000;

/**
 * Opens the database file with the settings several processes sharing it
 * need: a busy timeout (set first, so even switching to WAL waits for a
 * concurrent opener), write-ahead logging (readers never block the writer)
 * and `synchronous=NORMAL` (a commit is atomic and survives a process crash;
 * only a power loss may lose the last commits).
 */
export function openDatabase(file: string, migrations: readonly Migration[] = MIGRATIONS): DatabaseSync {
  const db = new DatabaseSync(file);
  try {
    db.exec(`PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS}`);
    db.exec('PRAGMA journal_mode = WAL');
    db.exec('PRAGMA synchronous = NORMAL');
    migrate(db, migrations);
    return db;
  } catch (error) {
    db.close();
    throw error;
  }
}

export function schemaVersion(db: DatabaseSync): number {
  return (db.prepare('PRAGMA user_version').get() as {user_version: number}).user_version;
}

/**
 * Applies the steps the database has not had yet, all in one transaction: a
 * step that fails leaves the database as it was. Taking the write lock first
 * makes processes that open a new file at the same time migrate it once.
 * Returns how many steps ran.
 */
export function migrate(db: DatabaseSync, migrations: readonly Migration[]): number {
  return inWriteTransaction(db, () => {
    const version = schemaVersion(db);
    if (version > migrations.length) {
      throw new Error(
        `The metadata database has schema version ${version}, newer than this code knows (${migrations.length}); ` +
          'run a newer version of the function',
      );
    }
    for (const step of migrations.slice(version)) step(db);
    // PRAGMA takes no bound parameters; the value is our own integer.
    if (version < migrations.length) db.exec(`PRAGMA user_version = ${migrations.length}`);
    return migrations.length - version;
  });
}

/**
 * Runs `work` in a transaction that takes the write lock at once (BEGIN
 * IMMEDIATE), so what it reads cannot change before it writes, in this
 * process or any other. Commits if `work` returns, rolls back if it throws.
 * `work` must be synchronous: nothing else may run inside the transaction.
 */
export function inWriteTransaction<T>(db: DatabaseSync, work: () => T): T {
  db.exec('BEGIN IMMEDIATE');
  let result: T;
  try {
    result = work();
  } catch (error) {
    rollback(db);
    throw error;
  }
  try {
    db.exec('COMMIT');
  } catch (error) {
    rollback(db);
    throw error;
  }
  return result;
}

function rollback(db: DatabaseSync): void {
  try {
    db.exec('ROLLBACK');
  } catch {
    // SQLite already rolled back (some errors end the transaction themselves).
  }
}
