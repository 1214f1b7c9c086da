import {createHash, randomUUID} from 'node:crypto';
import {rmSync} from 'node:fs';
import {join} from 'node:path';
import type {Firestore} from '@google-cloud/firestore';
import {COLLECTIONS} from '../../src/adapters/firestore/metadata-store';
import type {JobRecord} from '../../src/core/records';
import {
  asCarol,
  asOps,
  call,
  carolAndOps,
  clockMovedBy,
  LATER_MS,
  LEASE_MS,
  OPS_KEY,
  repairCount,
  UPSTREAM_TIMEOUT_SECONDS,
  waitFor,
} from '../support/durability';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';
import {describeWithFirestore} from '../support/firestore';
import {buildFunction, startFunctionProcess, type FunctionProcess} from '../support/function-process';
import {startGcsTestServer, type GcsTestServer} from '../support/gcs-server';
import {firestoreStringValue, startGrpcStallProxy, type HeldCall} from '../support/grpc-stall-proxy';
import {startHttpGate} from '../support/http-gate';
import {expectInvariants, gcpSnapshot, tally} from '../support/invariants';
import {startPausableFirestore, type PausableFirestore} from '../support/pausable-firestore';

const SCENES = [
  'stall-complete',
  'kill-upstream',
  'kill-upload',
  'kill-upload-landed',
  'kill-record',
  'stall-quota',
  'stall-key-release',
] as const;
type SceneName = (typeof SCENES)[number];

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

/**
 * The durability claims of write-ahead jobs in Cloud Storage + Firestore
 * mode, each scenario a failure the design before write-ahead records had:
 * the function runs as its own OS process (so it can be killed with
 * SIGKILL), against a Firestore emulator of this suite's own (so it can be
 * frozen with SIGSTOP), and every scenario ends with the reconciler run by a
 * later process (its clock moved past every lease) and the invariants of
 * test/support/invariants.ts checked over everything the stores hold.
 */
describeWithFirestore('durability: Cloud Storage + Firestore', () => {
  const outDir = join(__dirname, '../../.test-results', `dist-durability-gcp-${process.pid}`);
  let firestore: PausableFirestore;
  let gcs: GcsTestServer;
  let openai: FakeOpenAI;
  const processes: FunctionProcess[] = [];
  const figures: Record<string, unknown> = {};

  beforeAll(async () => {
    [firestore] = await Promise.all([
      startPausableFirestore(),
      Promise.resolve().then(() => buildFunction(outDir)),
    ]);
    gcs = await startGcsTestServer({buckets: SCENES.map(bucketOf)});
    openai = await startFakeOpenAI();
    // A new emulator answers its first transactions slowly: warm it, so no deadline is missed for that.
    const warm = firestore.client(`warm-${randomUUID().slice(0, 8)}`);
    for (let i = 0; i < 20; i++) {
      await warm.runTransaction(async tx => {
        const ref = warm.collection('warm').doc(String(i % 4));
        tx.set(ref, {n: ((await tx.get(ref)).get('n') ?? 0) + 1});
      });
    }
  }, 180_000);
  afterEach(async () => {
    firestore?.resume();
    await Promise.all(processes.splice(0).map(fn => fn.kill()));
    openai.reset();
    gcs.clearFaults();
  });
  afterAll(async () => {
    console.log(`durability figures (Cloud Storage + Firestore): ${JSON.stringify(figures)}`);
    await openai?.close();
    await gcs?.close();
    firestore?.stop();
    rmSync(outDir, {recursive: true, force: true});
  });

  function bucketOf(name: SceneName) {
    return `durability-${name}`;
  }

  const generations = () => openai.requests.filter(r => r.path === '/v1/images/generations').length;

  /** Lets the process reach both stores once (GET /ready), as an instance that has served before has. */
  async function connected(fn: FunctionProcess) {
    await waitFor('the stores to be ready', async () => (await call(fn, 'GET', '/ready')).status === 200);
  }

  /** One scenario's stores (a bucket and an emulator project of its own) and its function processes. */
  function scene(name: SceneName, overrides: Record<string, string> = {}) {
    const projectId = `${name}-${randomUUID().slice(0, 8)}`;
    const bucket = bucketOf(name);
    const db: Firestore = firestore.client(projectId);
    const env = (extra: Record<string, string> = {}) => ({
      OPENAI_API_KEY: 'sk-test-key',
      OPENAI_BASE_URL: openai.url,
      UPSTREAM_MAX_RETRIES: '0',
      UPSTREAM_TIMEOUT_SECONDS: String(UPSTREAM_TIMEOUT_SECONDS),
      GCS_BUCKET: bucket,
      STORAGE_EMULATOR_HOST: gcs.url,
      GOOGLE_CLOUD_PROJECT: projectId,
      FIRESTORE_EMULATOR_HOST: firestore.host,
      // As in the issue: a deadline shorter than the stall.
      FIRESTORE_TIMEOUT_SECONDS: '3',
      URL_MODE: 'proxy',
      LOG_LEVEL: 'error',
      API_KEYS: carolAndOps(20),
      ...overrides,
      ...extra,
    });
    const start = async (extra: Record<string, string> = {}) => {
      const fn = await startFunctionProcess(outDir, env(extra));
      processes.push(fn);
      return fn;
    };
    return {
      db,
      bucket,
      start,
      objects: (prefix = 'images/') => gcs.listObjectNames(bucket, prefix),
      jobs: async () =>
        (await db.collection(COLLECTIONS.jobs).get()).docs.map(doc => doc.data() as JobRecord),
      /**
       * A process on the same stores, started after every lease has ended
       * (its clock moved ahead), runs the reconciler; the invariants are then
       * judged on its clock.
       */
      async reconcileLater(extra: Record<string, string> = {}) {
        const later = await start({...clockMovedBy(LATER_MS), ...extra});
        const repaired = await call(later, 'POST', '/tasks/reconcile?scope=full&limit=1000', {
          headers: asOps,
        });
        expect(repaired.status).toBe(200);
        return {later, report: repaired.body as Record<string, string[]>};
      },
      async expectInvariants(quotaSubjects = ['carol']) {
        const snapshot = await gcpSnapshot(db, gcs, bucket);
        expectInvariants(snapshot, {now: new Date(Date.now() + LATER_MS), leaseMs: LEASE_MS, quotaSubjects});
        return tally(snapshot);
      },
    };
  }

  test('Firestore frozen during the completing commit: nothing a record may point at is removed, and a retry replays', async () => {
    // Four callers, each with a quota of its own: their reservations do not contend on one counter.
    const callers = [0, 1, 2, 3].map(i => ({name: `caller${i}`, key: `caller${i}-key-0123456789abcdef`}));
    const stores = scene('stall-complete', {
      API_KEYS: [...callers.map(c => `${c.name}:${c.key}:10`), `ops:${OPS_KEY}:admin`].join(','),
    });
    // Uploads go through a gate: each object is written at once, its answer held until the test says.
    const gate = await startHttpGate(gcs.url);
    try {
      const fn = await stores.start({STORAGE_EMULATOR_HOST: gate.url});
      await connected(fn);
      const uploads = gate.hold(request => request.method === 'POST' && request.path.startsWith('/upload/'));
      const requests = callers.map((caller, i) => ({
        body: {prompt: `stall ${i}`, count: 2},
        headers: {'x-api-key': caller.key, ...(i % 2 === 0 ? {'idempotency-key': randomUUID()} : {})},
      }));
      const pending = requests.map(request => call(fn, 'POST', '/generate', request));
      // Every object of the four jobs is written; no upload has been answered, so no commit has started.
      await uploads.reached(8);
      const objectsBefore = stores.objects();
      expect(objectsBefore).toHaveLength(8);
      firestore.pause();
      uploads.release();
      const answers = await Promise.all(pending);
      const objectsWhileFrozen = stores.objects();
      firestore.resume();

      // Each answer names its job and says it may still complete; none is a clean-up.
      const jobIds = answers.map(answer => answer.body?.details?.job_id as string);
      expect(new Set(jobIds).size).toBe(4);
      expect(answers.map(answer => [answer.status, answer.body?.code])).toEqual(
        Array(4).fill([503, 'JOB_OUTCOME_UNKNOWN']),
      );
      for (const [i, answer] of answers.entries()) {
        expect(answer.body.error).toMatch(/may still complete/);
        expect(answer.headers.get('retry-after')).not.toBeNull();
        expect(objectsWhileFrozen.filter(path => path.startsWith(`images/${jobIds[i]}/`))).toHaveLength(2);
      }
      expect(objectsWhileFrozen).toEqual(objectsBefore);

      // The abandoned commits land once Firestore runs again.
      await waitFor('the four jobs to be settled', async () =>
        (await stores.jobs()).every(job => job.status !== 'running'),
      );
      expect(generations()).toBe(4);
      // Without a key, the job the answer named is there, whole.
      for (const i of [1, 3]) {
        const job = await call(fn, 'GET', `/jobs/${jobIds[i]}`, {headers: requests[i]!.headers});
        expect([job.status, job.body.status, job.body.images.length]).toEqual([200, 'completed', 2]);
      }
      // With a key, a retry replays the job the answer named.
      for (const i of [0, 2]) {
        const retried = await call(fn, 'POST', '/generate', requests[i]!);
        expect([retried.status, retried.body.job_id]).toEqual([200, jobIds[i]]);
        expect(retried.headers.get('idempotent-replayed')).toBe('true');
      }
      // The retries replayed: OpenAI was not paid again.
      expect(generations()).toBe(4);

      const {report} = await stores.reconcileLater();
      figures['stall-complete'] = {
        repairs: report,
        stores: await stores.expectInvariants(callers.map(caller => caller.name)),
      };
    } finally {
      await gate.close();
    }
  }, 120_000);

  /**
   * Starts one keyed generation of two images as carol, kills its process
   * with SIGKILL once `killWhen` resolves, and has a later process run the
   * reconciler and retry the key.
   */
  async function killDuring(
    name: SceneName,
    killWhen: (stores: ReturnType<typeof scene>) => Promise<void>,
    options: {env?: Record<string, string>} = {},
  ) {
    const stores = scene(name);
    const fn = await stores.start(options.env);
    const request = {
      body: {prompt: `killed during ${name}`, count: 2},
      headers: {...asCarol, 'idempotency-key': randomUUID()},
    };
    const answer = call(fn, 'POST', '/generate', request);
    await killWhen(stores);
    await fn.kill();
    expect((await answer).status).toBe(0);
    // What the crash left must not get in the way of what follows.
    openai.setLatency(0);
    gcs.clearFaults();
    const [job, ...others] = await stores.jobs();
    expect([job?.status, others]).toEqual([expect.any(String), []]);
    const objectsAtKill = stores.objects();

    const {later, report} = await stores.reconcileLater();
    const settled = (await stores.jobs()).find(candidate => candidate.id === job!.id)!;
    // A retry with the same key, after the lease: it replays what was completed, or runs again; never 409.
    const paidBefore = generations();
    const retried = await call(later, 'POST', '/generate', request);
    expect(retried.status).toBe(200);
    // A completed job is replayed (OpenAI is not paid again); a failed one is run again, as a new job.
    const replays = settled.status === 'completed';
    expect({
      same_job: retried.body.job_id === job!.id,
      replayed: retried.headers.get('idempotent-replayed'),
      paid_again: generations() - paidBefore,
    }).toEqual(
      replays
        ? {same_job: true, replayed: 'true', paid_again: 0}
        : {same_job: false, replayed: null, paid_again: 1},
    );
    figures[name] = {
      objects_at_kill: objectsAtKill.length,
      status_at_kill: job!.status,
      settled: settled.status,
      repairs: report,
      stores: await stores.expectInvariants(),
    };
    return {job: job!, settled, report, objectsAtKill};
  }

  test('kill -9 before the upstream answer: the reconciler fails the job and gives its quota back', async () => {
    openai.setLatency(60_000);
    const {job, settled, report} = await killDuring('kill-upstream', async () => {
      await waitFor('the upstream request', () => generations() === 1);
    });
    expect(job.status).toBe('running');
    expect(settled.status).toBe('failed');
    expect(report.jobs_failed).toEqual([job.id]);
    expect(report.reservations_released).toEqual([job.id]);
  }, 60_000);

  test('kill -9 while an upload hangs: the reconciler fails the job and removes the object that landed', async () => {
    gcs.injectFault({op: 'upload', hang: true, objectNameMatches: /\/001-/});
    const {job, settled, report, objectsAtKill} = await killDuring('kill-upload', async stores => {
      await waitFor('the first object', () => stores.objects().length === 1);
    });
    expect(job.status).toBe('running');
    expect(settled.status).toBe('failed');
    expect(report.jobs_failed).toEqual([job.id]);
    expect(report.objects_removed).toEqual(objectsAtKill);
    expect(report.reservations_released).toEqual([job.id]);
  }, 60_000);

  test('kill -9 after every upload landed but one answer was lost: the reconciler completes the job from its objects', async () => {
    gcs.injectFault({op: 'upload', hang: true, applyFirst: true, objectNameMatches: /\/001-/});
    const {job, settled, report} = await killDuring('kill-upload-landed', async stores => {
      await waitFor('both objects', () => stores.objects().length === 2);
    });
    expect(job.status).toBe('running');
    expect(settled.status).toBe('completed');
    expect(settled.images).toHaveLength(2);
    expect(report.jobs_completed).toEqual([job.id]);
  }, 60_000);

  test('kill -9 between the objects and the record (Firestore stalled as the run completes): the reconciler completes the job', async () => {
    const proxy = await startGrpcStallProxy(firestore.host);
    try {
      // The first call of the completing transaction (the read of the running job) is held on its way
      // to Firestore: the run has stored every object and waits on the record.
      const completing = proxy.holdNext(
        grpcCall => grpcCall.method === 'BatchGetDocuments' && grpcCall.body.includes('/documents/jobs/'),
      );
      let held: HeldCall | undefined;
      void completing.then(heldCall => (held = heldCall));
      const {job, settled, report, objectsAtKill} = await killDuring(
        'kill-record',
        async () => {
          await waitFor('the completing transaction', () => held);
        },
        {env: {FIRESTORE_EMULATOR_HOST: proxy.host}},
      );
      // Its caller is gone: the held call never reaches Firestore.
      await held!.release();
      expect(job.status).toBe('running');
      expect(objectsAtKill).toHaveLength(2);
      expect(settled.status).toBe('completed');
      expect(settled.images.map(image => image.object_path)).toEqual(objectsAtKill);
      expect(report.jobs_completed).toEqual([job.id]);
    } finally {
      await proxy.close();
    }
  }, 60_000);

  test('Firestore frozen during the quota reservation: once the reconciler ran, no quota is consumed for images never made', async () => {
    const stores = scene('stall-quota', {API_KEYS: carolAndOps(5)});
    const fn = await stores.start();
    await connected(fn);

    firestore.pause();
    const stalled = await call(fn, 'POST', '/generate', {
      body: {prompt: 'never made', count: 3},
      headers: asCarol,
    });
    firestore.resume();
    expect([stalled.status, stalled.body.code]).toEqual([503, 'STORAGE_ERROR']);
    expect(generations()).toBe(0);
    // The abandoned reservation lands once Firestore runs again: 3 of carol's 5 images are taken.
    const quotaUsed = async () =>
      (await stores.db.collection(COLLECTIONS.quotas).where('subject', '==', 'carol').get()).docs.reduce(
        (sum, doc) => sum + Number(doc.get('used')),
        0,
      );
    await waitFor('the abandoned reservation to land', async () => (await quotaUsed()) === 3);
    const reservations = (await stores.db.collection(COLLECTIONS.reservations).get()).docs;
    expect(reservations).toHaveLength(1);

    const {report} = await stores.reconcileLater();
    expect(report.reservations_released).toEqual([reservations[0]!.id]);
    expect(await quotaUsed()).toBe(0);
    // Through the API: carol has her whole day's quota.
    const whole = await call(fn, 'POST', '/generate', {
      body: {prompt: 'all five', count: 5},
      headers: asCarol,
    });
    expect(whole.status).toBe(200);
    figures['stall-quota'] = {repairs: report, stores: await stores.expectInvariants()};
  }, 60_000);

  test('a stall during the idempotency key release: the failed job frees the key, a retry runs instead of 409', async () => {
    const proxy = await startGrpcStallProxy(firestore.host);
    try {
      const stores = scene('stall-key-release', {FIRESTORE_EMULATOR_HOST: proxy.host});
      const fn = await stores.start();
      const key = randomUUID();
      const keyHash = sha256(`carol\n${key}`);
      // Stall the key's release: the first call naming the key once the job has been recorded failed.
      let jobFailed = false;
      const held = proxy.holdNext(grpcCall => {
        if (grpcCall.method === 'Commit' && grpcCall.body.includes('/documents/jobs/')) {
          jobFailed ||= grpcCall.body.includes(firestoreStringValue('failed'));
          return false;
        }
        return jobFailed && grpcCall.body.includes(`/documents/${COLLECTIONS.idempotency}/${keyHash}`);
      });
      openai.injectFault({kind: 'server_error', status: 503});
      const request = {body: {prompt: 'fails upstream'}, headers: {...asCarol, 'idempotency-key': key}};
      const failed = await call(fn, 'POST', '/generate', request);
      expect([failed.status, failed.body.code]).toEqual([502, 'UPSTREAM_ERROR']);
      let stalled: HeldCall | undefined;
      void held.then(heldCall => (stalled = heldCall));
      const release = await waitFor('the stalled key release', () => stalled);

      // The release has not got through: the key still names the failed job, its lease running.
      const keyDoc = await stores.db.collection(COLLECTIONS.idempotency).doc(keyHash).get();
      const failedJob = (await stores.jobs()).find(job => job.id === keyDoc.get('job_id'));
      expect(failedJob?.status).toBe('failed');
      expect(keyDoc.get('lease_until').toDate().getTime()).toBeGreaterThan(Date.now());

      const retried = await call(fn, 'POST', '/generate', request);
      expect(retried.status).toBe(200);
      expect(retried.headers.get('idempotent-replayed')).toBeNull();
      expect(generations()).toBe(2);

      // The stall ends: the late release finds the key taken by the retry's job and leaves it.
      await release.release();
      const replayed = await call(fn, 'POST', '/generate', request);
      expect([replayed.status, replayed.body.job_id, replayed.headers.get('idempotent-replayed')]).toEqual([
        200,
        retried.body.job_id,
        'true',
      ]);
      expect(generations()).toBe(2);

      const {report} = await stores.reconcileLater({FIRESTORE_EMULATOR_HOST: firestore.host});
      expect(repairCount(report)).toBe(0);
      figures['stall-key-release'] = {repairs: report, stores: await stores.expectInvariants()};
    } finally {
      await proxy.close();
    }
  }, 60_000);
});
