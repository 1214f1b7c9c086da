import {promises as fs} from 'node:fs';
import * as path from 'node:path';
import type {DatabaseSync, SQLInputValue, StatementSync} from 'node:sqlite';
import type {
  ClaimOutcome,
  IdempotencyRecord,
  JobPage,
  JobQuery,
  MetadataStore,
  QuotaReservation,
} from '../../core/ports';
import type {ImageRecord, JobError, JobRecord} from '../../core/records';
import {decideClaim, keyJobState} from '../../core/usecases/idempotency';
import {readJsonRecords, type JsonRecords} from './json-records-import';
import {inWriteTransaction, openDatabase} from './sqlite-schema';

/** The database file, under the data directory. */
export const DATABASE_FILE = 'imagegen.db';

/** The directory the JSON-file store kept its records in, imported once and then renamed. */
const JSON_RECORDS_DIR = 'records';
const JSON_IMPORT_MARK = 'json_records_import';
/** How many expired idempotency keys one claim deletes: the sweep keeps pace without a long write. */
const SWEEP_BATCH = 32;
/** A day's quota count is kept this many days after it (as Firestore's TTL keeps it). */
const QUOTA_KEEP_DAYS = 2;

interface IdempotencyRow {
  fingerprint: string;
  job_id: string;
  lease_until_ms: number;
  expires_at_ms: number;
  completed: number;
}

interface ReservationRow {
  job_id: string;
  subject: string;
  day: string;
  amount: number;
  created_at: string;
}

/** Prepared statements by their text, for one connection. */
class Statements {
  private readonly prepared = new Map<string, StatementSync>();

  constructor(readonly db: DatabaseSync) {}

  get<T>(sql: string, ...params: SQLInputValue[]): T | undefined {
    return this.statement(sql).get(...params) as T | undefined;
  }

  all<T>(sql: string, ...params: SQLInputValue[]): T[] {
    return this.statement(sql).all(...params) as T[];
  }

  /** Returns the number of rows changed. */
  run(sql: string, ...params: SQLInputValue[]): number {
    return Number(this.statement(sql).run(...params).changes);
  }

  private statement(sql: string): StatementSync {
    let statement = this.prepared.get(sql);
    if (!statement) {
      statement = this.db.prepare(sql);
      this.prepared.set(sql, statement);
    }
    return statement;
  }
}

/**
 * The SQL of one `listJobs` page: one index range (see the indexes of
 * migration 1), read newest first and stopped after `limit + 1` rows, the
 * extra row telling whether a next page exists. With a metadata filter the
 * label index drives the scan (CROSS JOIN keeps SQLite from reordering it).
 */
export function jobListQuery(query: JobQuery): {sql: string; params: SQLInputValue[]} {
  const label = query.metadata;
  const [createdAt, id] = label ? ['l.created_at', 'l.job_id'] : ['j.created_at', 'j.id'];
  const where: string[] = [];
  const params: SQLInputValue[] = [];
  if (label) {
    where.push('l.key = ?', 'l.value = ?');
    params.push(label.key, label.value);
  }
  if (query.owner !== undefined) {
    where.push('j.owner = ?');
    params.push(query.owner);
  }
  if (query.status) {
    where.push('j.status = ?');
    params.push(query.status);
  }
  if (query.source) {
    where.push('j.source = ?');
    params.push(query.source);
  }
  if (query.after) {
    where.push(`(${createdAt}, ${id}) < (?, ?)`);
    params.push(query.after.createdAt, query.after.id);
  }
  params.push(query.limit + 1);
  const from = label ? 'job_labels l CROSS JOIN jobs j ON j.id = l.job_id' : 'jobs j';
  const filter = where.length > 0 ? `WHERE ${where.join(' AND ')}` : '';
  return {
    sql: `SELECT j.record FROM ${from} ${filter} ORDER BY ${createdAt} DESC, ${id} DESC LIMIT ?`,
    params,
  };
}

function isConstraintError(error: unknown): boolean {
  // SQLITE_CONSTRAINT and its extended codes (unique, primary key, ...) share the low byte 19.
  const code = (error as {errcode?: unknown} | undefined)?.errcode;
  return typeof code === 'number' && (code & 0xff) === 19;
}

/** The UTC day (YYYY-MM-DD) `days` before `now`'s. */
function daysBefore(now: Date, days: number): string {
  return new Date(now.getTime() - days * 86_400_000).toISOString().slice(0, 10);
}

/** A job row's columns but its id: created_at, status, owner, source, lease_until_ms, record. */
function jobColumns(job: JobRecord): [string, string, string | null, string, number | null, string] {
  return [
    job.created_at,
    job.status,
    job.owner,
    job.source,
    job.lease_until === null ? null : epochMs(job.lease_until, 'A job lease'),
    JSON.stringify(job),
  ];
}

function epochMs(iso: string, what: string): number {
  const ms = Date.parse(iso);
  if (!Number.isFinite(ms)) throw new Error(`${what} is not a timestamp: ${JSON.stringify(iso)}`);
  return ms;
}

/**
 * Jobs, images, idempotency keys and quotas in one SQLite database under the
 * data directory (`imagegen.db`), shared safely by every local process using
 * that directory: each write that reads before it writes, or touches more
 * than one row, is one transaction holding the write lock.
 *
 * The calls are synchronous and short (an indexed lookup or a page); the
 * database is opened, migrated, and fed the old JSON records if there are
 * any, on first use.
 */
export class SqliteMetadataStore implements MetadataStore {
  private readonly dataDir: string;
  private opening: Promise<Statements> | undefined;

  constructor(dataDir: string) {
    this.dataDir = path.resolve(dataDir);
  }

  async createJob(job: JobRecord): Promise<void> {
    const sql = await this.sql();
    try {
      inWriteTransaction(sql.db, () => this.insertJob(sql, job));
    } catch (error) {
      if (isConstraintError(error))
        throw new Error(`Job ${job.id} or one of its images already exists`, {cause: error});
      throw error;
    }
  }

  async completeJob(job: JobRecord): Promise<boolean> {
    const sql = await this.sql();
    try {
      return inWriteTransaction(sql.db, () => {
        const current = sql.get<{status: string}>('SELECT status FROM jobs WHERE id = ?', job.id);
        if (current?.status !== 'running') return false;
        this.updateJob(sql, job);
        this.writeLabels(sql, job);
        for (const image of job.images) {
          sql.run('INSERT INTO images (id, job_id) VALUES (?, ?)', image.id, job.id);
        }
        // Settled for good: the images were made, so the reservation is never given back.
        sql.run('DELETE FROM quota_reservations WHERE job_id = ?', job.id);
        return true;
      });
    } catch (error) {
      if (isConstraintError(error))
        throw new Error(`An image of job ${job.id} already exists`, {cause: error});
      throw error;
    }
  }

  async failJob(id: string, error: JobError, updatedAt: string): Promise<boolean> {
    const sql = await this.sql();
    return inWriteTransaction(sql.db, () => {
      const job = this.readJob(sql, id);
      if (job?.status !== 'running') return false;
      this.updateJob(sql, {...job, status: 'failed', error, lease_until: null, updated_at: updatedAt});
      return true;
    });
  }

  async getJob(id: string): Promise<JobRecord | null> {
    return this.readJob(await this.sql(), id);
  }

  async getImage(id: string): Promise<ImageRecord | null> {
    const sql = await this.sql();
    const row = sql.get<{record: string}>(
      'SELECT j.record FROM images i JOIN jobs j ON j.id = i.job_id WHERE i.id = ?',
      id,
    );
    if (!row) return null;
    return (JSON.parse(row.record) as JobRecord).images.find(image => image.id === id) ?? null;
  }

  async listJobs(query: JobQuery): Promise<JobPage> {
    const sql = await this.sql();
    const {sql: text, params} = jobListQuery(query);
    const rows = sql.all<{record: string}>(text, ...params);
    const jobs = rows.slice(0, query.limit).map(row => JSON.parse(row.record) as JobRecord);
    const last = jobs.at(-1);
    return {
      jobs,
      next: rows.length > query.limit && last ? {createdAt: last.created_at, id: last.id} : null,
    };
  }

  async listStaleJobs(now: Date, limit: number): Promise<JobRecord[]> {
    const sql = await this.sql();
    return sql
      .all<{record: string}>(
        `SELECT record FROM jobs WHERE status = 'running' AND lease_until_ms < ?
         ORDER BY created_at, id LIMIT ?`,
        now.getTime(),
        limit,
      )
      .map(row => JSON.parse(row.record) as JobRecord);
  }

  async deleteImage(id: string, updatedAt: string): Promise<ImageRecord | null> {
    const sql = await this.sql();
    return inWriteTransaction(sql.db, () => {
      const entry = sql.get<{job_id: string}>('SELECT job_id FROM images WHERE id = ?', id);
      if (!entry) return null;
      sql.run('DELETE FROM images WHERE id = ?', id);
      const job = this.readJob(sql, entry.job_id);
      const image = job?.images.find(candidate => candidate.id === id);
      if (!job || !image) return null;
      this.updateJob(sql, {
        ...job,
        images: job.images.filter(candidate => candidate.id !== id),
        updated_at: updatedAt,
      });
      return image;
    });
  }

  async deleteJob(id: string): Promise<JobRecord | null> {
    const sql = await this.sql();
    return inWriteTransaction(sql.db, () => {
      const job = this.readJob(sql, id);
      if (!job) return null;
      sql.run('DELETE FROM images WHERE job_id = ?', id);
      sql.run('DELETE FROM job_labels WHERE job_id = ?', id);
      sql.run('DELETE FROM jobs WHERE id = ?', id);
      return job;
    });
  }

  async claimIdempotencyKey(keyHash: string, claim: IdempotencyRecord, now: Date): Promise<ClaimOutcome> {
    const sql = await this.sql();
    return inWriteTransaction(sql.db, () => {
      const row = sql.get<IdempotencyRow>(
        `SELECT fingerprint, job_id, lease_until_ms, expires_at_ms, completed
         FROM idempotency_keys WHERE key_hash = ?`,
        keyHash,
      );
      const existing: IdempotencyRecord | null = row
        ? {
            fingerprint: row.fingerprint,
            jobId: row.job_id,
            leaseUntil: new Date(row.lease_until_ms),
            expiresAt: new Date(row.expires_at_ms),
            completed: row.completed === 1,
          }
        : null;
      const job = existing
        ? (sql.get<{status: JobRecord['status']; lease_until_ms: number | null}>(
            'SELECT status, lease_until_ms FROM jobs WHERE id = ?',
            existing.jobId,
          ) ?? null)
        : null;
      const state = keyJobState(
        job && {
          status: job.status,
          lease_until: job.lease_until_ms === null ? null : new Date(job.lease_until_ms).toISOString(),
        },
        now,
      );
      const {result, write} = decideClaim(existing, state, claim, now);
      if (write) this.writeIdempotencyKey(sql, keyHash, write);
      // Firestore's TTL policy forgets expired keys; here each claim forgets a few.
      sql.run(
        `DELETE FROM idempotency_keys WHERE key_hash IN
           (SELECT key_hash FROM idempotency_keys WHERE expires_at_ms < ? LIMIT ${SWEEP_BATCH})`,
        now.getTime(),
      );
      return result;
    });
  }

  async completeIdempotencyKey(keyHash: string, jobId: string): Promise<void> {
    const sql = await this.sql();
    sql.run('UPDATE idempotency_keys SET completed = 1 WHERE key_hash = ? AND job_id = ?', keyHash, jobId);
  }

  async releaseIdempotencyKey(keyHash: string, jobId: string): Promise<void> {
    const sql = await this.sql();
    sql.run(
      'DELETE FROM idempotency_keys WHERE key_hash = ? AND job_id = ? AND completed = 0',
      keyHash,
      jobId,
    );
  }

  async reserveQuota(reservation: QuotaReservation, limit: number): Promise<{ok: boolean; used: number}> {
    const {subject, day, jobId, amount, createdAt} = reservation;
    const createdAtMs = epochMs(createdAt, 'A reservation time');
    const sql = await this.sql();
    return inWriteTransaction(sql.db, () => {
      const used =
        sql.get<{used: number}>('SELECT used FROM quota_counters WHERE subject = ? AND day = ?', subject, day)
          ?.used ?? 0;
      if (sql.get('SELECT 1 FROM quota_reservations WHERE job_id = ?', jobId)) return {ok: true, used};
      if (used + amount > limit) return {ok: false, used};
      // Counts of days long past are no use (Firestore's TTL deletes them too).
      sql.run('DELETE FROM quota_counters WHERE day < ?', daysBefore(new Date(), QUOTA_KEEP_DAYS));
      this.addToQuotaCounter(sql, subject, day, amount);
      sql.run(
        `INSERT INTO quota_reservations (job_id, subject, day, amount, created_at, created_at_ms)
         VALUES (?, ?, ?, ?, ?, ?)`,
        jobId,
        subject,
        day,
        amount,
        createdAt,
        createdAtMs,
      );
      return {ok: true, used: used + amount};
    });
  }

  async releaseQuota(reservation: QuotaReservation): Promise<void> {
    const sql = await this.sql();
    inWriteTransaction(sql.db, () => {
      // What was reserved counts, not what the caller says was.
      const held = sql.get<ReservationRow>(
        'SELECT subject, day, amount FROM quota_reservations WHERE job_id = ?',
        reservation.jobId,
      );
      if (!held) return;
      sql.run('DELETE FROM quota_reservations WHERE job_id = ?', reservation.jobId);
      sql.run(
        'UPDATE quota_counters SET used = max(0, used - ?) WHERE subject = ? AND day = ?',
        held.amount,
        held.subject,
        held.day,
      );
    });
  }

  async listQuotaReservations(before: Date, limit: number): Promise<QuotaReservation[]> {
    const sql = await this.sql();
    return sql
      .all<ReservationRow>(
        `SELECT job_id, subject, day, amount, created_at FROM quota_reservations
         WHERE created_at_ms < ? ORDER BY created_at_ms, job_id LIMIT ?`,
        before.getTime(),
        limit,
      )
      .map(row => ({
        subject: row.subject,
        day: row.day,
        jobId: row.job_id,
        amount: row.amount,
        createdAt: row.created_at,
      }));
  }

  async ping(): Promise<void> {
    (await this.sql()).get('SELECT 1');
  }

  /** Proves the database takes a write: takes the write lock, as every write does, and lets it go. */
  async checkWritable(): Promise<void> {
    inWriteTransaction((await this.sql()).db, () => undefined);
  }

  /** Closes the database; the next call opens it again. */
  async close(): Promise<void> {
    const opening = this.opening;
    this.opening = undefined;
    if (opening) (await opening.catch(() => null))?.db.close();
  }

  private sql(): Promise<Statements> {
    this.opening ??= this.open().catch(error => {
      this.opening = undefined;
      throw error;
    });
    return this.opening;
  }

  private async open(): Promise<Statements> {
    await fs.mkdir(this.dataDir, {recursive: true});
    const sql = new Statements(openDatabase(path.join(this.dataDir, DATABASE_FILE)));
    try {
      await this.importJsonRecords(sql);
    } catch (error) {
      sql.db.close();
      throw error;
    }
    return sql;
  }

  /**
   * Imports the JSON store's records, once: in one transaction, which also
   * marks the import done, so a second process (or a second run after a
   * crash before the rename) imports nothing. The directory is then renamed,
   * kept for reference.
   */
  private async importJsonRecords(sql: Statements): Promise<void> {
    const recordsDir = path.join(this.dataDir, JSON_RECORDS_DIR);
    const exists = await fs.stat(recordsDir).then(
      stat => stat.isDirectory(),
      () => false,
    );
    if (!exists) return;
    const imported = () => sql.get('SELECT 1 FROM store_meta WHERE key = ?', JSON_IMPORT_MARK) !== undefined;
    if (!imported()) {
      const records = await readJsonRecords(recordsDir);
      inWriteTransaction(sql.db, () => {
        if (imported()) return;
        const summary = this.insertJsonRecords(sql, records);
        sql.run(
          'INSERT INTO store_meta (key, value) VALUES (?, ?)',
          JSON_IMPORT_MARK,
          JSON.stringify({imported_at: new Date().toISOString(), ...summary}),
        );
      });
    }
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    await fs.rename(recordsDir, `${recordsDir}.imported-${stamp}`).catch(error => {
      // Another process renamed it first.
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    });
  }

  /** Inside the import transaction; a job that conflicts with another is left out, not the import. */
  private insertJsonRecords(sql: Statements, records: JsonRecords) {
    const skipped = [...records.skipped];
    let jobs = 0;
    for (const job of records.jobs) {
      sql.db.exec('SAVEPOINT json_job');
      try {
        this.insertJob(sql, job);
        sql.db.exec('RELEASE json_job');
        jobs++;
      } catch (error) {
        sql.db.exec('ROLLBACK TO json_job');
        sql.db.exec('RELEASE json_job');
        if (!isConstraintError(error)) throw error;
        skipped.push(`jobs/${job.id}.json`);
      }
    }
    for (const {keyHash, record} of records.idempotencyKeys) this.writeIdempotencyKey(sql, keyHash, record);
    for (const {subject, day, used} of records.quotaCounters) this.addToQuotaCounter(sql, subject, day, used);
    return {
      jobs,
      idempotency_keys: records.idempotencyKeys.length,
      quota_counters: records.quotaCounters.length,
      skipped,
    };
  }

  private addToQuotaCounter(sql: Statements, subject: string, day: string, amount: number): void {
    sql.run(
      `INSERT INTO quota_counters (subject, day, used) VALUES (?, ?, ?)
       ON CONFLICT (subject, day) DO UPDATE SET used = used + excluded.used`,
      subject,
      day,
      amount,
    );
  }

  private readJob(sql: Statements, id: string): JobRecord | null {
    const row = sql.get<{record: string}>('SELECT record FROM jobs WHERE id = ?', id);
    return row ? (JSON.parse(row.record) as JobRecord) : null;
  }

  /** The job row, its labels and its image index: fails if the job or an image id exists. */
  private insertJob(sql: Statements, job: JobRecord): void {
    sql.run(
      `INSERT INTO jobs (created_at, status, owner, source, lease_until_ms, record, id) VALUES (?, ?, ?, ?, ?, ?, ?)`,
      ...jobColumns(job),
      job.id,
    );
    this.writeLabels(sql, job);
    for (const image of job.images)
      sql.run('INSERT INTO images (id, job_id) VALUES (?, ?)', image.id, job.id);
  }

  private updateJob(sql: Statements, job: JobRecord): void {
    sql.run(
      `UPDATE jobs SET created_at = ?, status = ?, owner = ?, source = ?, lease_until_ms = ?, record = ? WHERE id = ?`,
      ...jobColumns(job),
      job.id,
    );
  }

  private writeLabels(sql: Statements, job: JobRecord): void {
    sql.run('DELETE FROM job_labels WHERE job_id = ?', job.id);
    for (const [key, value] of Object.entries(job.metadata)) {
      sql.run(
        'INSERT INTO job_labels (job_id, key, value, created_at) VALUES (?, ?, ?, ?)',
        job.id,
        key,
        value,
        job.created_at,
      );
    }
  }

  private writeIdempotencyKey(sql: Statements, keyHash: string, record: IdempotencyRecord): void {
    sql.run(
      `INSERT OR REPLACE INTO idempotency_keys
         (key_hash, fingerprint, job_id, lease_until_ms, expires_at_ms, completed)
       VALUES (?, ?, ?, ?, ?, ?)`,
      keyHash,
      record.fingerprint,
      record.jobId,
      record.leaseUntil.getTime(),
      record.expiresAt.getTime(),
      record.completed ? 1 : 0,
    );
  }
}
