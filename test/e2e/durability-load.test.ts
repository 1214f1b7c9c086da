import {randomUUID} from 'node:crypto';
import {mkdirSync, mkdtempSync, rmSync, writeFileSync} from 'node:fs';
import {tmpdir} from 'node:os';
import {join} from 'node:path';
import {call, clockMovedBy, LATER_MS, LEASE_MS, UPSTREAM_TIMEOUT_SECONDS} from '../support/durability';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';
import {describeWithFirestore, useGcpStores} from '../support/firestore';
import {buildFunction, startFunctionProcess, type FunctionProcess} from '../support/function-process';
import {
  expectInvariants,
  gcpSnapshot,
  localSnapshot,
  tally,
  type StoresSnapshot,
} from '../support/invariants';

const TOTAL = 500;
const CONCURRENCY = 50;
const KILLS = 3;
/** A final failure of a request: the upstream call failed (injected), and the job with it. */
const TERMINAL = new Set(['UPSTREAM_ERROR', 'RATE_LIMIT_EXCEEDED']);

interface Outcome {
  key: string;
  status: number;
  code: string | null;
  jobId: string | null;
  imageIds: string[];
  replayed: boolean;
  attempts: number;
}

interface LoadMode {
  name: string;
  /** The function's environment for these stores (without the OpenAI part). */
  env: Record<string, string>;
  snapshot(): Promise<StoresSnapshot>;
}

/**
 * Load with crashes: 500 generations, 50 at a time, one upstream call in ten
 * failing (as test/e2e/load.test.ts injects), against a function process
 * killed with SIGKILL at random moments and started again on the same
 * stores. Each client sends its request with an Idempotency-Key and, as a
 * real caller does, sends it again after a lost connection, a 503 or a 409,
 * until it gets an answer that settles it. A restarted process stands for an
 * instance started later (its clock moved past the killed one's leases) and
 * runs the reconciler at once. At the end a last process reconciles
 * everything, the invariants are checked, and every key that succeeded is
 * sent once more: it must replay the job its caller got.
 */
async function runLoadWithKills(mode: LoadMode, openai: FakeOpenAI, outDir: string) {
  const env = (generation: number) => ({
    OPENAI_API_KEY: 'sk-test-key',
    OPENAI_BASE_URL: openai.url,
    UPSTREAM_MAX_RETRIES: '0',
    UPSTREAM_TIMEOUT_SECONDS: String(UPSTREAM_TIMEOUT_SECONDS),
    // The reconciler logs its repairs as warnings.
    LOG_LEVEL: 'warn',
    ...mode.env,
    ...(generation === 0 ? {} : clockMovedBy(generation * LATER_MS)),
  });
  let generation = 0;
  let current: FunctionProcess = await startFunctionProcess(outDir, env(generation));
  const processes = [current];
  const reconcilePasses = {ok: 0, failed: 0};
  const reconcile = async (fn: FunctionProcess, scope: 'recent' | 'full') => {
    const answer = await call(fn, 'POST', `/tasks/reconcile?scope=${scope}&limit=1000`);
    reconcilePasses[answer.status === 200 ? 'ok' : 'failed']++;
    return answer.status === 200;
  };
  /** Every repair any process's reconciler made (local mode also runs it at each start), by kind. */
  const repairs = () => {
    const byKind: Record<string, number> = {};
    for (const fn of processes) {
      for (const line of fn.output().split('\n')) {
        if (!line.startsWith('{') || !line.includes('"reconcile"')) continue;
        const {reconcile: report} = JSON.parse(line) as {reconcile: Record<string, string[]>};
        for (const [kind, list] of Object.entries(report)) byKind[kind] = (byKind[kind] ?? 0) + list.length;
      }
    }
    return {total: Object.values(byKind).reduce((sum, n) => sum + n, 0), ...byKind};
  };

  const requests = Array.from({length: TOTAL}, (_, i) => ({
    key: randomUUID(),
    body:
      i % 5 === 0
        ? {prompt: `crash load ${i}`, output_format: 'svg', count: 2}
        : {prompt: `crash load ${i}`, output_format: 'jpeg', output_compression: 20, count: 1 + (i % 3)},
  }));
  const outcomes: Outcome[] = [];
  const retries: Record<string, number> = {};
  const send = async (request: (typeof requests)[number]): Promise<Outcome> => {
    for (let attempts = 1; ; attempts++) {
      const answer = await call(current, 'POST', '/generate', {
        body: request.body,
        headers: {'idempotency-key': request.key},
      });
      const code: string | null = answer.status === 200 ? null : (answer.body?.code ?? null);
      if (answer.status === 200 || (code !== null && TERMINAL.has(code))) {
        return {
          key: request.key,
          status: answer.status,
          code,
          jobId: answer.body?.job_id ?? null,
          imageIds: (answer.body?.images ?? []).map((image: {id: string}) => image.id),
          replayed: answer.headers.get('idempotent-replayed') === 'true',
          attempts,
        };
      }
      const reason = answer.status === 0 ? 'connection lost' : `${answer.status} ${code}`;
      retries[reason] = (retries[reason] ?? 0) + 1;
      const retryAfter = Number(answer.headers.get('retry-after') ?? 0);
      await new Promise(resolve => setTimeout(resolve, Math.min(1000, Math.max(100, retryAfter * 1000))));
    }
  };

  // The kills come when this many requests have been settled: random moments, early, because Firestore
  // keeps what a killed instance's transactions had locked for 60 s. A retry of a key they touched waits
  // that long, and a claim that gave up meanwhile may still land and hold its key for a lease.
  const killAt = Array.from({length: KILLS}, () => Math.floor(TOTAL * (0.05 + Math.random() * 0.25))).sort(
    (a, b) => a - b,
  );
  const killedAfter = [...killAt];
  let killing = Promise.resolve();
  /** The passes run after each restart, beside the traffic (not waited for by it). */
  const passes: Promise<boolean>[] = [];
  let kills = 0;
  const maybeKill = () => {
    while (killAt.length > 0 && outcomes.length >= killAt[0]!) {
      killAt.shift();
      killing = killing.then(async () => {
        await current.kill();
        kills++;
        generation++;
        current = await startFunctionProcess(outDir, env(generation));
        processes.push(current);
        passes.push(reconcile(current, 'recent'));
      });
    }
  };

  const started = performance.now();
  let next = 0;
  try {
    await Promise.all(
      Array.from({length: CONCURRENCY}, async () => {
        while (next < requests.length) {
          outcomes.push(await send(requests[next++]!));
          maybeKill();
        }
      }),
    );
    await killing;
    const elapsedMs = performance.now() - started;
    await Promise.all(passes);

    // A last process, later again, reconciles everything; it may have to wait for Firestore to let go
    // of what transactions of a killed process held (their locks expire on their own).
    generation++;
    const last = await startFunctionProcess(outDir, env(generation));
    processes.push(last);
    let settledPass = false;
    for (let attempt = 0; attempt < 12 && !settledPass; attempt++) {
      settledPass = await reconcile(last, 'full');
      if (!settledPass) await new Promise(resolve => setTimeout(resolve, 5000));
    }
    expect(settledPass).toBe(true);
    const snapshot = await mode.snapshot();
    expectInvariants(snapshot, {now: new Date(Date.now() + generation * LATER_MS), leaseMs: LEASE_MS});

    // What the callers were told agrees with the stores.
    const ok = outcomes.filter(outcome => outcome.status === 200);
    const failed = outcomes.filter(outcome => outcome.status !== 200);
    expect(outcomes).toHaveLength(TOTAL);
    expect(failed.every(outcome => TERMINAL.has(outcome.code!))).toBe(true);
    const jobs = new Map(snapshot.jobs.map(job => [job.id, job]));
    const mismatched = ok.filter(outcome => {
      const job = jobs.get(outcome.jobId!);
      return (
        !job ||
        !['completed', 'partial'].includes(job.status) ||
        job.images.map(image => image.id).join() !== outcome.imageIds.join()
      );
    });
    expect(mismatched).toEqual([]);

    // Every key that succeeded replays the job its caller got, and OpenAI is not paid again.
    const paid = openai.requests.filter(r => r.path === '/v1/images/generations').length;
    const replays = await Promise.all(
      ok.map(async outcome => {
        const request = requests.find(candidate => candidate.key === outcome.key)!;
        const answer = await call(last, 'POST', '/generate', {
          body: request.body,
          headers: {'idempotency-key': request.key},
        });
        return [answer.status, answer.body?.job_id === outcome.jobId] as const;
      }),
    );
    expect(replays.filter(([status, same]) => status !== 200 || !same)).toEqual([]);
    expect(openai.requests.filter(r => r.path === '/v1/images/generations').length).toBe(paid);

    const figures = {
      mode: mode.name,
      requests: TOTAL,
      concurrency: CONCURRENCY,
      completed: ok.length,
      failed: failed.length,
      failed_by_code: failed.reduce<Record<string, number>>(
        (acc, outcome) => ({...acc, [outcome.code!]: (acc[outcome.code!] ?? 0) + 1}),
        {},
      ),
      kills,
      killed_after_settled: killedAfter,
      retries,
      answers_replayed: ok.filter(outcome => outcome.replayed).length,
      // Runs killed after storing everything whose key a retry took over before the reconciler
      // completed them: kept, but no caller was given them (their images were paid for twice).
      completed_jobs_no_answer_named: snapshot.jobs.filter(
        job => job.status !== 'failed' && !ok.some(outcome => outcome.jobId === job.id),
      ).length,
      upstream_calls: paid,
      reconciler_passes: reconcilePasses,
      repairs: repairs(),
      stores: tally(snapshot),
      elapsed_s: Number((elapsedMs / 1000).toFixed(2)),
    };
    mkdirSync(join(__dirname, '../../.test-results'), {recursive: true});
    writeFileSync(
      join(__dirname, `../../.test-results/durability-load-${mode.name}.json`),
      `${JSON.stringify(figures, null, 2)}\n`,
    );
    console.log(`durability load figures: ${JSON.stringify(figures)}`);
    return figures;
  } finally {
    await Promise.all(processes.map(fn => fn.kill()));
  }
}

describe('load with kill -9', () => {
  const outDir = join(__dirname, '../../.test-results', `dist-durability-load-${process.pid}`);
  let openai: FakeOpenAI;

  beforeAll(async () => {
    buildFunction(outDir);
    openai = await startFakeOpenAI({latencyMs: 50});
  }, 120_000);
  beforeEach(() => {
    openai.reset();
    openai.injectFault({kind: 'server_error', status: 503}, {probability: 0.05});
    openai.injectFault({kind: 'rate_limit', retryAfterSeconds: 1}, {probability: 0.05});
  });
  afterAll(async () => {
    await openai?.close();
    rmSync(outDir, {recursive: true, force: true});
  });

  describeWithFirestore('Cloud Storage + Firestore', () => {
    const bucket = 'imagegen-crash-load';
    const stores = useGcpStores('crash-load', [bucket]);

    test(`${TOTAL} generations, ${KILLS} kills`, async () => {
      const figures = await runLoadWithKills(
        {
          name: 'gcp',
          env: {...stores.env(), FIRESTORE_EMULATOR_HOST: process.env.FIRESTORE_EMULATOR_HOST!},
          snapshot: () => gcpSnapshot(stores.db(), stores.gcs(), bucket),
        },
        openai,
        outDir,
      );
      expect([figures.kills, figures.completed + figures.failed]).toEqual([KILLS, TOTAL]);
    }, 240_000);
  });

  describe('local disk + SQLite', () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'imagegen-crash-load-'));
    afterAll(() => rmSync(dataDir, {recursive: true, force: true}));

    test(`${TOTAL} generations, ${KILLS} kills`, async () => {
      const figures = await runLoadWithKills(
        {
          name: 'local',
          env: {DATA_DIR: dataDir, RECONCILE_INTERVAL_SECONDS: '0'},
          snapshot: async () => localSnapshot(dataDir),
        },
        openai,
        outDir,
      );
      expect([figures.kills, figures.completed + figures.failed]).toEqual([KILLS, TOTAL]);
    }, 240_000);
  });
});
