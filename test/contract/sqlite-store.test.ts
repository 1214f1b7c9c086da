import {fork, type ChildProcess} from 'node:child_process';
import {createHash, randomUUID} from 'node:crypto';
import {existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, writeFileSync} from 'node:fs';
import {join} from 'node:path';
import {DatabaseSync} from 'node:sqlite';
import {upgradeJsonJob} from '../../src/adapters/local/json-records-import';
import {
  DATABASE_FILE,
  SqliteMetadataStore,
  jobListQuery,
} from '../../src/adapters/local/sqlite-metadata-store';
import {MIGRATIONS, migrate, openDatabase, schemaVersion} from '../../src/adapters/local/sqlite-schema';
import type {JobQuery} from '../../src/core/ports';
import type {JobRecord, JobStatus} from '../../src/core/records';
import {MemoryMetadataStore} from '../support/memory-stores';
import {finishedJob, runningJob, storedParameters} from '../support/records';
import {useTempDir} from '../support/temp-dir';

const root = useTempDir();
const freshDir = () => mkdtempSync(join(root(), 'data-'));

/** A second connection to a store's database, for looking at what the store wrote. */
function inspect<T>(dataDir: string, look: (db: DatabaseSync) => T): T {
  const db = new DatabaseSync(join(dataDir, DATABASE_FILE), {readOnly: true});
  try {
    return look(db);
  } finally {
    db.close();
  }
}

describe('daily quota shared by several OS processes', () => {
  const worker = join(__dirname, '../support/quota-worker.mjs');

  /** Starts a worker; `ready` once it has opened the store, `granted` with its counts per day. */
  function start(args: string[]): {child: ChildProcess; ready: Promise<unknown>; granted: Promise<number[]>} {
    const child = fork(worker, args, {execPath: process.execPath, execArgv: [], stdio: 'pipe'});
    let stderr = '';
    child.stderr?.on('data', chunk => (stderr += String(chunk)));
    const exited = new Promise<never>((_, reject) =>
      child.once('exit', code => reject(new Error(`worker exited (${code}) before answering:\n${stderr}`))),
    );
    const answer = <T>(key: 'ready' | 'granted') =>
      Promise.race([
        new Promise<T>(resolve =>
          child.on('message', (message: Record<string, T>) => {
            if (key in message) resolve(message[key]!);
          }),
        ),
        exited,
      ]);
    return {child, ready: answer<true>('ready'), granted: answer<number[]>('granted')};
  }

  test('two processes racing for a quota of 5 get 5 images a day between them, never more', async () => {
    const dataDir = freshDir();
    const days = 30;
    // Both processes also open (and migrate) the new database at the same time.
    const workers = [0, 1].map(() => start([dataDir, 'alice', '5', String(days), '10']));
    try {
      await Promise.all(workers.map(w => w.ready));
      for (const w of workers) w.child.send('go');
      const [first, second] = await Promise.all(workers.map(w => w.granted));
      const perDay = first!.map((granted, day) => granted + second![day]!);
      expect(perDay).toEqual(Array(days).fill(5));
    } finally {
      for (const w of workers) if (w.child.exitCode === null) w.child.kill();
    }
    // What the database holds agrees: 5 counted and 5 reservations a day.
    inspect(dataDir, db => {
      const counters = db.prepare('SELECT used FROM quota_counters WHERE subject = ?').all('alice');
      expect(counters.map(row => row.used)).toEqual(Array(days).fill(5));
      const reservations = db
        .prepare('SELECT day, count(*) AS n FROM quota_reservations GROUP BY day ORDER BY day')
        .all();
      expect(reservations.map(row => row.n)).toEqual(Array(days).fill(5));
      expect(schemaVersion(db)).toBe(MIGRATIONS.length);
    });
  });
});

describe('listJobs reads one page, however many jobs there are', () => {
  let dataDir: string;
  let store: SqliteMetadataStore;
  const reference = new MemoryMetadataStore();
  const owners = ['alice', 'bob', 'carol'];
  const statuses: JobStatus[] = ['completed', 'partial', 'running', 'failed'];

  beforeAll(async () => {
    dataDir = freshDir();
    store = new SqliteMetadataStore(dataDir);
    const base = Date.parse('2030-01-01T00:00:00.000Z');
    for (let i = 0; i < 3000; i++) {
      // Timestamps repeat (every 7 jobs share one), so pages must break ties by id.
      const job = finishedJob(
        {
          created_at: new Date(base + Math.floor(i / 7) * 1000).toISOString(),
          owner: owners[i % owners.length]!,
          status: statuses[i % statuses.length]!,
          metadata: {team: `t${i % 5}`, ...(i % 2 === 0 ? {even: 'yes'} : {})},
        },
        1,
      );
      await store.createJob(runningJob(job));
      await reference.createJob(runningJob(job));
      if (job.status === 'running') continue;
      if (job.status === 'failed') {
        await store.failJob(job.id, {code: 'UPSTREAM_ERROR', message: 'x'}, job.created_at);
        await reference.failJob(job.id, {code: 'UPSTREAM_ERROR', message: 'x'}, job.created_at);
      } else {
        await store.completeJob(job);
        await reference.completeJob(job);
      }
    }
  });
  afterAll(() => store.close());

  const queries: [string, Omit<JobQuery, 'limit'>][] = [
    ['everyone', {}],
    ['by status', {status: 'completed'}],
    ['by owner', {owner: 'bob'}],
    ['by owner and status', {owner: 'carol', status: 'running'}],
    ['by a metadata label', {metadata: {key: 'team', value: 't3'}}],
    ['by a label and a status', {metadata: {key: 'even', value: 'yes'}, status: 'completed'}],
    ['by owner and a label', {owner: 'alice', metadata: {key: 'team', value: 't1'}}],
  ];

  test.each(queries)('%s: the query plan walks an index in page order, with no sort', (_, filter) => {
    const after = {createdAt: '2030-01-01T00:02:00.000Z', id: randomUUID()};
    for (const query of [
      {...filter, limit: 20},
      {...filter, limit: 20, after},
    ]) {
      const {sql, params} = jobListQuery(query);
      expect(sql).toMatch(/LIMIT \?$/);
      expect(params.at(-1)).toBe(21);
      const plan = inspect(dataDir, db =>
        db
          .prepare(`EXPLAIN QUERY PLAN ${sql}`)
          .all(...params)
          .map(row => String(row.detail)),
      );
      // Every table is reached through an index (or its key), and the order is the index's own.
      for (const step of plan) expect(step).toMatch(/USING (COVERING )?INDEX|USING INTEGER PRIMARY KEY/);
      expect(plan.join('\n')).not.toMatch(/TEMP B-TREE/);
    }
  });

  test.each(queries)('%s: a page parses only its own records', async (_, filter) => {
    const parse = jest.spyOn(JSON, 'parse');
    try {
      const page = await store.listJobs({...filter, limit: 20});
      expect(page.jobs).toHaveLength(20);
      expect(parse).toHaveBeenCalledTimes(20);
    } finally {
      parse.mockRestore();
    }
  });

  test.each(queries)('%s: pages agree with the reference store, job for job', async (_, filter) => {
    for (const limit of [1, 20, 333]) {
      const pages = async (source: SqliteMetadataStore | MemoryMetadataStore) => {
        const ids: string[] = [];
        let after: JobQuery['after'];
        for (;;) {
          const page = await source.listJobs({...filter, limit, ...(after ? {after} : {})});
          ids.push(...page.jobs.map(job => job.id));
          if (!page.next || (limit === 1 && ids.length >= 50)) return ids;
          after = page.next;
        }
      };
      expect(await pages(store)).toEqual(await pages(reference));
    }
  });

  test('stale jobs come from the lease index, oldest first', async () => {
    const now = new Date('2031-01-01T00:00:00.000Z');
    // Jobs created at the same time may come in either order.
    const stale = await store.listStaleJobs(now, 20);
    expect(stale.every(job => job.status === 'running')).toBe(true);
    expect(stale.map(job => job.created_at)).toEqual(
      (await reference.listStaleJobs(now, 20)).map(job => job.created_at),
    );
    const plan = inspect(dataDir, db =>
      db
        .prepare(
          `EXPLAIN QUERY PLAN SELECT record FROM jobs WHERE status = 'running' AND lease_until_ms < ?
           ORDER BY created_at, id LIMIT ?`,
        )
        .all(now.getTime(), 5)
        .map(row => String(row.detail)),
    );
    expect(plan[0]).toMatch(/USING INDEX jobs_by_lease \(status=\? AND lease_until_ms<\?\)/);
  });
});

describe('import of the JSON-file store', () => {
  /** A job as the JSON store wrote it, from before owners, leases and per-job prompts. */
  function jsonJob(overrides: Partial<JobRecord> = {}): Record<string, unknown> {
    const job = finishedJob(overrides, 2);
    const {owner: _o, error: _e, lease_until: _l, warnings: _w, ...rest} = job;
    const {requested_model: _r, ...parameters} = job.parameters;
    return {
      ...rest,
      parameters,
      images: job.images.map(image => ({...image, prompt: job.prompt})),
    };
  }

  /** The very first stored shape: fewer parameters, one (`user`) since removed. */
  function firstShapeJob(): Record<string, unknown> {
    const job = jsonJob({status: 'partial'});
    return {
      ...job,
      parameters: {
        count: 2,
        model: 'gpt-image-1',
        size: '1024x1024',
        quality: 'high',
        style: null,
        background: null,
        output_format: 'png',
        output_compression: null,
        moderation: null,
        user: 'end-user-1',
        allow_partial: true,
      },
      failures: [{first_index: 1, count: 1, code: 'UPSTREAM_ERROR', error: 'boom'}],
    };
  }

  function writeJsonStore(dataDir: string, jobs: Record<string, unknown>[]) {
    const records = join(dataDir, 'records');
    for (const dir of ['jobs', 'images', 'idempotency', 'quotas'])
      mkdirSync(join(records, dir), {recursive: true});
    for (const job of jobs) {
      writeFileSync(join(records, 'jobs', `${job.id as string}.json`), JSON.stringify(job));
      for (const image of job.images as {id: string}[]) {
        writeFileSync(join(records, 'images', `${image.id}.json`), JSON.stringify({job_id: job.id}));
      }
    }
    // What an interrupted write and a damaged file leave: neither is a record.
    writeFileSync(join(records, 'jobs', `${randomUUID()}.json.tmp-123-abcdef`), '{"id":');
    writeFileSync(join(records, 'jobs', 'damaged.json'), '{"id": "x", ');
    return records;
  }

  const keyHash = (key: string) => createHash('sha256').update(key).digest('hex');

  test('jobs, images, keys and quotas come out as they went in, in today’s shapes; then the directory is renamed', async () => {
    const dataDir = freshDir();
    const recent = jsonJob({created_at: '2030-01-02T00:00:00.000Z', metadata: {team: 'a'}});
    const old = firstShapeJob();
    const records = writeJsonStore(dataDir, [recent, old]);
    writeFileSync(
      join(records, 'idempotency', `${keyHash('k1')}.json`),
      JSON.stringify({
        fingerprint: 'f1',
        job_id: recent.id,
        lease_until: '2030-01-02T00:06:00.000Z',
        expires_at: '2999-01-01T00:00:00.000Z',
        completed: true,
      }),
    );
    writeFileSync(join(records, 'quotas', 'team_alice_2030-01-02.json'), JSON.stringify({used: 3}));

    const store = new SqliteMetadataStore(dataDir);
    const imported = await store.getJob(recent.id as string);
    const recentImages = recent.images as {id: string; prompt: string}[];
    expect(imported).toEqual({
      ...recent,
      owner: null,
      error: null,
      lease_until: null,
      warnings: [],
      source_images: [],
      parameters: {
        ...(recent.parameters as object),
        requested_model: 'gpt-image-2.6-sunburst',
        input_fidelity: null,
      },
      images: recentImages.map(({prompt: _prompt, ...image}) => image),
    });
    expect(await store.getImage(recentImages[1]!.id)).toEqual(imported!.images[1]);

    const first = await store.getJob(old.id as string);
    // What the first shape did not have is null; its `user` is gone.
    expect(first?.parameters).toEqual(
      storedParameters({
        count: 2,
        requested_model: 'gpt-image-1',
        model: 'gpt-image-1',
        quality: 'high',
        output_format: 'png',
        allow_partial: true,
      }),
    );
    expect(first).toEqual(upgradeJsonJob(old as never));
    expect(first?.failures).toEqual(old.failures);

    // Listing and label filters see the imported jobs.
    const page = await store.listJobs({limit: 10});
    expect(page.jobs.map(job => job.id)).toEqual([recent.id, old.id]);
    expect((await store.listJobs({limit: 10, metadata: {key: 'team', value: 'a'}})).jobs).toHaveLength(1);

    // The completed key still replays its job; the quota goes on from the count it had.
    const now = new Date('2030-01-02T00:01:00.000Z');
    const claim = {
      fingerprint: 'f1',
      jobId: randomUUID(),
      leaseUntil: new Date(now.getTime() + 60_000),
      expiresAt: new Date(now.getTime() + 3600_000),
      completed: false,
    };
    expect(await store.claimIdempotencyKey(keyHash('k1'), claim, now)).toEqual({
      outcome: 'completed',
      jobId: recent.id,
    });
    const reservation = (amount: number) => ({
      subject: 'team_alice',
      day: '2030-01-02',
      jobId: randomUUID(),
      amount,
      createdAt: now.toISOString(),
    });
    expect(await store.reserveQuota(reservation(3), 5)).toEqual({ok: false, used: 3});
    expect(await store.reserveQuota(reservation(2), 5)).toEqual({ok: true, used: 5});

    // The directory is renamed, whole; what could not be read is reported.
    expect(existsSync(records)).toBe(false);
    const renamed = readdirSync(dataDir).filter(name => name.startsWith('records.imported-'));
    expect(renamed).toHaveLength(1);
    expect(readdirSync(join(dataDir, renamed[0]!, 'jobs'))).toHaveLength(4);
    const mark = inspect(dataDir, db =>
      JSON.parse(
        String(db.prepare("SELECT value FROM store_meta WHERE key = 'json_records_import'").get()?.value),
      ),
    );
    expect(mark).toMatchObject({
      jobs: 2,
      idempotency_keys: 1,
      quota_counters: 1,
      skipped: ['jobs/damaged.json'],
    });
    await store.close();
  });

  test('the import runs once: a later open, even one that finds the directory again, imports nothing', async () => {
    const dataDir = freshDir();
    const job = jsonJob();
    const records = writeJsonStore(dataDir, [job]);
    writeFileSync(join(records, 'quotas', 'alice_2030-01-02.json'), JSON.stringify({used: 2}));

    const first = new SqliteMetadataStore(dataDir);
    expect(await first.deleteJob(job.id as string)).not.toBeNull();
    await first.close();

    // As after a crash between the import's commit and the rename.
    const [renamed] = readdirSync(dataDir).filter(name => name.startsWith('records.imported-'));
    renameSync(join(dataDir, renamed!), records);

    const second = new SqliteMetadataStore(dataDir);
    expect(await second.getJob(job.id as string)).toBeNull();
    const reservation = {
      subject: 'alice',
      day: '2030-01-02',
      jobId: randomUUID(),
      amount: 1,
      createdAt: '2030-01-02T00:00:00.000Z',
    };
    expect(await second.reserveQuota(reservation, 10)).toEqual({ok: true, used: 3});
    expect(existsSync(records)).toBe(false);
    await second.close();
  });

  test('a data directory without JSON records imports nothing', async () => {
    const dataDir = freshDir();
    const store = new SqliteMetadataStore(dataDir);
    await store.ping();
    await store.close();
    expect(inspect(dataDir, db => db.prepare('SELECT count(*) AS n FROM store_meta').get()?.n)).toBe(0);
  });
});

describe('what has expired is swept, as Firestore TTL policies do', () => {
  const hour = 3600_000;
  const keyClaim = (jobId: string, now: Date, ttlMs: number) => ({
    fingerprint: 'f',
    jobId,
    leaseUntil: new Date(now.getTime() + 60_000),
    expiresAt: new Date(now.getTime() + ttlMs),
    completed: false,
  });
  const count = (dataDir: string, table: string) =>
    inspect(dataDir, db => (db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as {n: number}).n);

  test('each claim deletes a batch of expired keys, never one still valid', async () => {
    const dataDir = freshDir();
    const store = new SqliteMetadataStore(dataDir);
    const start = new Date('2030-01-01T00:00:00Z');
    for (let i = 0; i < 40; i++)
      await store.claimIdempotencyKey(`old-${i}`, keyClaim(randomUUID(), start, hour), start);
    await store.claimIdempotencyKey('valid', keyClaim(randomUUID(), start, 48 * hour), start);
    expect(count(dataDir, 'idempotency_keys')).toBe(41);

    const later = new Date(start.getTime() + 2 * hour);
    await store.claimIdempotencyKey('new-1', keyClaim(randomUUID(), later, hour), later);
    // A batch of 32 of the 40 expired keys is gone; the valid and the new key stay.
    expect(count(dataDir, 'idempotency_keys')).toBe(41 - 32 + 1);
    await store.claimIdempotencyKey('new-2', keyClaim(randomUUID(), later, hour), later);
    const left = inspect(dataDir, db =>
      (
        db.prepare('SELECT key_hash FROM idempotency_keys ORDER BY key_hash').all() as {key_hash: string}[]
      ).map(row => row.key_hash),
    );
    expect(left).toEqual(['new-1', 'new-2', 'valid']);
    await store.close();
  });

  test("a reservation deletes the counts of days more than two days past, and keeps recent days' counts", async () => {
    const dataDir = freshDir();
    const store = new SqliteMetadataStore(dataDir);
    const day = (offset: number) => new Date(Date.now() + offset * 86_400_000).toISOString().slice(0, 10);
    const reserve = (onDay: string) =>
      store.reserveQuota(
        {subject: 'alice', day: onDay, jobId: randomUUID(), amount: 1, createdAt: new Date().toISOString()},
        10,
      );
    for (const offset of [-30, -3, -2, -1]) expect((await reserve(day(offset))).ok).toBe(true);
    await reserve(day(0));
    const days = inspect(dataDir, db =>
      (db.prepare('SELECT day FROM quota_counters ORDER BY day').all() as {day: string}[]).map(
        row => row.day,
      ),
    );
    expect(days).toEqual([day(-2), day(-1), day(0)]);
    await store.close();
  });
});

describe('schema migrations', () => {
  test('a new store is at the latest version, in WAL mode', async () => {
    const dataDir = freshDir();
    const store = new SqliteMetadataStore(dataDir);
    await store.ping();
    inspect(dataDir, db => {
      expect(schemaVersion(db)).toBe(MIGRATIONS.length);
      expect(db.prepare('PRAGMA journal_mode').get()?.journal_mode).toBe('wal');
    });
    await store.close();
    // Opening again finds nothing to do.
    const db = openDatabase(join(dataDir, DATABASE_FILE));
    expect(migrate(db, MIGRATIONS)).toBe(0);
    db.close();
  });

  test('each step runs once, in order; later steps run on a database that has the earlier ones', () => {
    const file = join(freshDir(), 'migrations.db');
    const ran: string[] = [];
    const step = (name: string, sql: string) => (db: DatabaseSync) => {
      ran.push(name);
      db.exec(sql);
    };
    const steps = [step('one', 'CREATE TABLE a (x INTEGER)'), step('two', 'ALTER TABLE a ADD COLUMN y TEXT')];
    const db = openDatabase(file, steps);
    expect(ran).toEqual(['one', 'two']);
    expect(schemaVersion(db)).toBe(2);
    expect(migrate(db, steps)).toBe(0);
    expect(ran).toEqual(['one', 'two']);

    const later = [...steps, step('three', 'CREATE INDEX a_y ON a (y)')];
    expect(migrate(db, later)).toBe(1);
    expect(ran).toEqual(['one', 'two', 'three']);
    expect(schemaVersion(db)).toBe(3);
    db.close();
  });

  test('a step that fails leaves the database as it was', () => {
    const file = join(freshDir(), 'migrations.db');
    const db = openDatabase(file, [d => d.exec('CREATE TABLE a (x INTEGER)')]);
    const failing = [
      (d: DatabaseSync) => d.exec('CREATE TABLE a (x INTEGER)'),
      (d: DatabaseSync) => d.exec('CREATE TABLE b (x INTEGER)'),
      (d: DatabaseSync) => d.exec('THIS IS NOT SQL'),
    ];
    expect(() => migrate(db, failing)).toThrow(/syntax error/);
    expect(schemaVersion(db)).toBe(1);
    expect(db.prepare("SELECT name FROM sqlite_schema WHERE name = 'b'").get()).toBeUndefined();
    db.close();
  });

  test('a database newer than the code is refused, not written', () => {
    const file = join(freshDir(), 'migrations.db');
    openDatabase(file, [d => d.exec('CREATE TABLE a (x)'), d => d.exec('CREATE TABLE b (x)')]).close();
    expect(() => openDatabase(file, [d => d.exec('CREATE TABLE a (x)')])).toThrow(/newer than this code/);
  });
});
