import {randomUUID} from 'node:crypto';
import {existsSync, mkdtempSync, rmSync} from 'node:fs';
import {tmpdir} from 'node:os';
import {join} from 'node:path';
import {DatabaseSync} from 'node:sqlite';
import {DATABASE_FILE} from '../../src/adapters/local/sqlite-metadata-store';
import type {JobRecord} from '../../src/core/records';
import {
  asCarol,
  asOps,
  call,
  carolAndOps,
  clockMovedBy,
  LATER_MS,
  LEASE_MS,
  UPSTREAM_TIMEOUT_SECONDS,
  waitFor,
} from '../support/durability';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';
import {buildFunction, startFunctionProcess, type FunctionProcess} from '../support/function-process';
import {startHttpGate} from '../support/http-gate';
import {expectInvariants, localObjects, localSnapshot, tally} from '../support/invariants';

type Report = Record<string, string[]>;

/**
 * The durability claims of write-ahead jobs in local mode (objects on the
 * disk, records in SQLite): the function runs as its own OS process, killed
 * with SIGKILL at a chosen step; a later process on the same DATA_DIR (its
 * clock moved past every lease) runs the reconciler, as local mode does at
 * start and on POST /tasks/reconcile; then the invariants of
 * test/support/invariants.ts are checked over everything the stores hold.
 */
describe('durability: local disk + SQLite', () => {
  const outDir = join(__dirname, '../../.test-results', `dist-durability-local-${process.pid}`);
  const root = mkdtempSync(join(tmpdir(), 'imagegen-durability-'));
  let openai: FakeOpenAI;
  const processes: FunctionProcess[] = [];
  const figures: Record<string, unknown> = {};

  beforeAll(async () => {
    buildFunction(outDir);
    openai = await startFakeOpenAI();
  }, 120_000);
  afterEach(async () => {
    await Promise.all(processes.splice(0).map(fn => fn.kill()));
    openai.reset();
  });
  afterAll(async () => {
    console.log(`durability figures (local): ${JSON.stringify(figures)}`);
    await openai?.close();
    rmSync(outDir, {recursive: true, force: true});
    rmSync(root, {recursive: true, force: true});
  });

  const generations = () => openai.requests.filter(r => r.path === '/v1/images/generations').length;

  /** One scenario's DATA_DIR and its function processes. */
  function scene(name: string, overrides: Record<string, string> = {}) {
    const dataDir = mkdtempSync(join(root, `${name}-`));
    const env = (extra: Record<string, string> = {}) => ({
      OPENAI_API_KEY: 'sk-test-key',
      OPENAI_BASE_URL: openai.url,
      UPSTREAM_MAX_RETRIES: '0',
      UPSTREAM_TIMEOUT_SECONDS: String(UPSTREAM_TIMEOUT_SECONDS),
      DATA_DIR: dataDir,
      // The reconciler runs once at each start, and when asked.
      RECONCILE_INTERVAL_SECONDS: '0',
      LOG_LEVEL: 'info',
      API_KEYS: carolAndOps(20),
      ...overrides,
      ...extra,
    });
    const start = async (extra: Record<string, string> = {}) => {
      const fn = await startFunctionProcess(outDir, env(extra));
      processes.push(fn);
      return fn;
    };
    const jobs = (): JobRecord[] => {
      if (!existsSync(join(dataDir, DATABASE_FILE))) return [];
      const db = new DatabaseSync(join(dataDir, DATABASE_FILE), {readOnly: true});
      try {
        return (db.prepare('SELECT record FROM jobs').all() as {record: string}[]).map(
          row => JSON.parse(row.record) as JobRecord,
        );
      } finally {
        db.close();
      }
    };
    return {
      dataDir,
      start,
      jobs,
      /** Whole objects (with their metadata) under images/. */
      objects: () => localObjects(dataDir).objects.map(object => object.path),
      /**
       * A process on the same DATA_DIR, started after every lease has ended
       * (its clock moved ahead). Its reconciler runs at start; then once
       * more when asked. The repairs of both passes are returned together.
       */
      async reconcileLater() {
        const later = await start(clockMovedBy(LATER_MS));
        const atStart = await waitFor('the reconciler pass at start', () => reconcilerLogs(later)[0]);
        const asked = await call(later, 'POST', '/tasks/reconcile?scope=full&limit=1000', {headers: asOps});
        expect(asked.status).toBe(200);
        const report: Report = {};
        for (const [kind, list] of [...Object.entries(atStart), ...Object.entries(asked.body as Report)]) {
          report[kind] = [...(report[kind] ?? []), ...list];
        }
        return {later, report};
      },
      expectInvariants(quotaSubjects = ['carol']) {
        const snapshot = localSnapshot(dataDir);
        expectInvariants(snapshot, {now: new Date(Date.now() + LATER_MS), leaseMs: LEASE_MS, quotaSubjects});
        return tally(snapshot);
      },
    };
  }

  /** The reports of the reconciler passes a process has logged. */
  function reconcilerLogs(fn: FunctionProcess): Report[] {
    return fn
      .output()
      .split('\n')
      .filter(line => line.startsWith('{') && line.includes('"reconcile"'))
      .map(line => (JSON.parse(line) as {reconcile: Report}).reconcile);
  }

  /**
   * Starts one keyed generation as carol, kills its process with SIGKILL
   * once `killWhen` resolves, has a later process reconcile, and retries
   * the key there.
   */
  async function killDuring(
    name: string,
    body: Record<string, unknown>,
    killWhen: (stores: ReturnType<typeof scene>) => Promise<void>,
    options: {env?: Record<string, string>; afterKill?: () => void} = {},
  ) {
    const stores = scene(name);
    const fn = await stores.start(options.env);
    const request = {body, headers: {...asCarol, 'idempotency-key': randomUUID()}};
    const answer = call(fn, 'POST', '/generate', request);
    await killWhen(stores);
    await fn.kill();
    options.afterKill?.();
    expect((await answer).status).toBe(0);
    openai.setLatency(0);
    openai.clearFaults();
    const [job, ...others] = stores.jobs();
    expect([job?.status, others]).toEqual(['running', []]);
    const objectsAtKill = stores.objects();

    const {later, report} = await stores.reconcileLater();
    const settled = stores.jobs().find(candidate => candidate.id === job!.id)!;
    const paidBefore = generations();
    const retried = await call(later, 'POST', '/generate', request);
    expect(retried.status).toBe(200);
    // A completed job is replayed (OpenAI is not paid again); a failed one is run again, as a new job.
    const replays = settled.status === 'completed';
    expect({
      same_job: retried.body.job_id === job!.id,
      replayed: retried.headers.get('idempotent-replayed'),
      paid_again: generations() - paidBefore > 0,
    }).toEqual(
      replays
        ? {same_job: true, replayed: 'true', paid_again: false}
        : {same_job: false, replayed: null, paid_again: true},
    );
    figures[name] = {
      objects_at_kill: objectsAtKill.length,
      settled: settled.status,
      repairs: report,
      stores: stores.expectInvariants(),
    };
    return {job: job!, settled, report, objectsAtKill};
  }

  test('kill -9 during the upstream wait: the reconciler fails the job and gives its quota back', async () => {
    openai.setLatency(60_000);
    const {job, settled, report} = await killDuring(
      'kill-upstream',
      {prompt: 'killed waiting', count: 2},
      async () => {
        await waitFor('the upstream request', () => generations() === 1);
      },
    );
    expect(settled.status).toBe('failed');
    expect(report.jobs_failed).toEqual([job.id]);
    expect(report.reservations_released).toEqual([job.id]);
  }, 60_000);

  test('kill -9 with one image stored and the other call still upstream: the reconciler fails the job and removes the object', async () => {
    // SVG is made one image per call: two calls, one of which never answers.
    openai.injectFault({kind: 'hang'});
    const {job, settled, report, objectsAtKill} = await killDuring(
      'kill-half-stored',
      {prompt: 'half stored', count: 2, output_format: 'svg'},
      async stores => {
        await waitFor('the first object', () => stores.objects().length === 1);
      },
    );
    expect(settled.status).toBe('failed');
    expect(report.jobs_failed).toEqual([job.id]);
    expect(report.objects_removed).toEqual(objectsAtKill);
  }, 60_000);

  test('kill -9 between the objects and the record (SQLite locked by another process): the reconciler completes the job', async () => {
    // The upstream answer waits at a gate until the test holds the database's write lock.
    const gate = await startHttpGate(openai.url.replace(/\/v1$/, ''));
    let lock: DatabaseSync | undefined;
    try {
      const answers = gate.hold(request => request.path.startsWith('/v1/images/'));
      const {job, settled, report, objectsAtKill} = await killDuring(
        'kill-record',
        {prompt: 'stored, not recorded', count: 2},
        async stores => {
          await answers.reached(1);
          // The job is recorded running (before the upstream call); now no write can land: the run
          // stores its objects, then waits on the lock (up to SQLite's busy timeout) to record them.
          lock = new DatabaseSync(join(stores.dataDir, DATABASE_FILE));
          lock.exec('BEGIN IMMEDIATE');
          answers.release();
          await waitFor('both objects', () => stores.objects().length === 2);
        },
        {
          env: {OPENAI_BASE_URL: `${gate.url}/v1`},
          afterKill: () => {
            lock?.exec('ROLLBACK');
            lock?.close();
          },
        },
      );
      expect(objectsAtKill).toHaveLength(2);
      expect(settled.status).toBe('completed');
      expect(settled.images.map(image => image.object_path)).toEqual(objectsAtKill);
      expect(report.jobs_completed).toEqual([job.id]);
    } finally {
      if (lock?.isOpen) lock.close();
      await gate.close();
    }
  }, 60_000);

  test('two processes on one DATA_DIR share a quota of 5: no more than 5 images are made', async () => {
    const stores = scene('shared-quota', {API_KEYS: carolAndOps(5)});
    const [first, second] = await Promise.all([stores.start(), stores.start()]);
    openai.setLatency(50);
    // Many concurrent generations, split across both processes.
    const answers = await Promise.all(
      Array.from({length: 24}, async (_, i) => {
        const fn = i % 2 === 0 ? first! : second!;
        return {
          fn,
          ...(await call(fn, 'POST', '/generate', {body: {prompt: `shared ${i}`}, headers: asCarol})),
        };
      }),
    );
    const made = answers.filter(answer => answer.status === 200);
    const refused = answers.filter(answer => answer.status !== 200);
    expect(made).toHaveLength(5);
    expect(new Set(refused.map(answer => answer.body.code))).toEqual(new Set(['QUOTA_EXCEEDED']));
    expect(stores.objects()).toHaveLength(5);
    expect(generations()).toBe(5);
    const byProcess = (fn: FunctionProcess) => made.filter(answer => answer.fn === fn).length;
    figures['shared-quota'] = {
      made: made.length,
      refused: refused.length,
      by_process: [byProcess(first!), byProcess(second!)],
      stores: stores.expectInvariants(),
    };
  }, 60_000);
});
