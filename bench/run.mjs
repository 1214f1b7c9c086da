// `npm run bench`: performance of the imageGen function over real HTTP.
//
// Starts the fake OpenAI server and the GCS test server in their own processes,
// the Firestore emulator when gcloud is there, and the function itself through
// the real Functions Framework CLI; then measures, in one run:
//   1. fan-out: count=4 vs count=1 of SVG output (one image per upstream call)
//   2. concurrency: 64 and 256 concurrent generations vs one
//   3. overhead per image vs an in-process floor (local store and GCS)
//   4. peak RSS with 64 generations of 1536x1024 in flight
//   5. cold start vs an empty Functions Framework function
//   6. streaming: the first partial image at the caller vs at the fake, at 1 and 64 streams
// and prints a table of the figures and a PASS/FAIL summary. See bench/README.md.
//
// Options (flag or environment variable):
//   --latency-ms=N           BENCH_LATENCY_MS           upstream latency for 1, 2, 4, 5 (500)
//   --overhead-latency-ms=N  BENCH_OVERHEAD_LATENCY_MS  upstream latency for 3 (100)
//   --samples=N              BENCH_SAMPLES              overhead samples per size and store (40)
//   --reps=N                 BENCH_REPS                 sequential repetitions for baselines (5)
//   --cold-reps=N            BENCH_COLD_REPS            cold starts per variant (3)
//   --stream-samples=N       BENCH_STREAM_SAMPLES       sequential streams for 6 (20)
//   --no-gcs                                            skip GCS + Firestore
//   --no-build                                          use dist/ as it is
//   --cpu-prof=DIR                                      write V8 CPU profiles of the function processes
//   --node-options=FLAGS                                NODE_OPTIONS for the function processes instead of
//                                                       the deploy's (env.yaml.example); "" for none
//   --json=FILE                                         also write every figure as JSON
//   --only=1,3,...                                      run only these measurements (default: all six)
//   --strict                                            exit 1 when a target is missed (default: only on errors)
import {spawnSync} from 'node:child_process';
import {createHash, randomUUID} from 'node:crypto';
import {mkdirSync, mkdtempSync, promises as fsp, readFileSync, rmSync, writeFileSync} from 'node:fs';
import os from 'node:os';
import {join} from 'node:path';
import {
  cpuMsOf,
  freePort,
  groupCpuMs,
  hasGcloud,
  memoryOf,
  nodeBin,
  resetPeakRss,
  root,
  sampleRss,
  sleep,
  spawnFunction,
  startFirestoreEmulator,
  startService,
  stopAll,
} from './lib/processes.mjs';
import {max, median, mib, ms, percentile, pollUntil, ratio, request, streamRequest} from './lib/measure.mjs';
import {commandLineFlags} from './lib/flags.mjs';

// ---------------------------------------------------------------------------
// Options

const flags = commandLineFlags();
function option(flag, envName, fallback) {
  const raw = flags.get(flag) ?? process.env[envName];
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${flag} must be a non-negative number, got ${raw}`);
  return n;
}
/** NODE_OPTIONS as env.yaml.example deploys the function with. */
function deployNodeOptions() {
  const text = readFileSync(new URL('../env.yaml.example', import.meta.url), 'utf8');
  return /^NODE_OPTIONS:\s*"([^"]*)"/m.exec(text)?.[1] ?? '';
}

const config = {
  latencyMs: option('latency-ms', 'BENCH_LATENCY_MS', 500),
  overheadLatencyMs: option('overhead-latency-ms', 'BENCH_OVERHEAD_LATENCY_MS', 100),
  samples: Math.max(5, option('samples', 'BENCH_SAMPLES', 40)),
  reps: Math.max(3, option('reps', 'BENCH_REPS', 5)),
  coldReps: Math.max(1, option('cold-reps', 'BENCH_COLD_REPS', 3)),
  streamSamples: Math.max(5, option('stream-samples', 'BENCH_STREAM_SAMPLES', 20)),
  gcs: !flags.has('no-gcs'),
  build: !flags.has('no-build'),
  cpuProfDir: flags.get('cpu-prof'),
  // The function runs with the deploy's NODE_OPTIONS unless told otherwise.
  nodeOptions: flags.get('node-options') ?? deployNodeOptions(),
  json: flags.get('json'),
  only: new Set((flags.get('only') ?? '1,2,3,4,5,6').split(',').map(x => x.trim())),
};
const runs = id => config.only.has(String(id));

const BUCKET = 'bench-bucket';
const PROJECT = 'bench-project';
const API_KEY = 'sk-bench-key';
const OVERHEAD_SIZES = ['1024x1024', '1536x1024'];
/** A current model that makes the standard sizes; the fake's images do not depend on the model. */
const MODEL = 'gpt-image-2.6-flare';
/** The smallest answers a current model gives: no size below 1024x1024 is taken any more. */
const SMALL = {output_format: 'jpeg', output_compression: 20};
const benchStarted = performance.now();
const log = message =>
  console.error(`[bench ${((performance.now() - benchStarted) / 1000).toFixed(1)}s] ${message}`);

// ---------------------------------------------------------------------------
// Shared state

let fake; // fake OpenAI (child process)
let gcs; // GCS test server (child process)
let firestoreHost; // host:port of the Firestore emulator, when there is one
let emulatorPgid; // its process group (gcloud + java), when the bench started it
const tempRoot = mkdtempSync(join(os.tmpdir(), 'imagegen-bench-'));
const results = {config, machine: {}, figures: {}, targets: [], errors: []};
// The bench's own Google clients (floor, Firestore reference) must not probe a metadata server.
process.env.METADATA_SERVER_DETECTION = 'none';

process.on('exit', () => {
  stopAll();
  rmSync(tempRoot, {recursive: true, force: true});
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(130));

function machineInfo() {
  const nproc =
    spawnSync('nproc', [], {encoding: 'utf8'}).stdout?.trim() || String(os.availableParallelism());
  const nodeVersion = spawnSync(nodeBin, ['--version'], {encoding: 'utf8'}).stdout.trim();
  return {
    nproc: Number(nproc),
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memTotal: os.totalmem(),
    node: nodeVersion,
    kernel: `${os.type()} ${os.release()}`,
  };
}

function functionEnv(mode, extra = {}) {
  const env = {...process.env};
  for (const name of [
    'GCS_BUCKET',
    'DATA_DIR',
    'FIRESTORE_EMULATOR_HOST',
    'STORAGE_EMULATOR_HOST',
    'GOOGLE_CLOUD_PROJECT',
    'GCLOUD_PROJECT',
    'FIRESTORE_DATABASE',
    'URL_MODE',
    'PUBLIC_BASE_URL',
    'OPENAI_API',
    'OPENAI_ORGANIZATION',
    'OPENAI_ORG_ID',
    'OPENAI_PROJECT',
    'DEFAULT_MODEL',
    'NODE_OPTIONS',
    'MAX_BODY_BYTES',
    'LOG_PROMPTS',
  ]) {
    delete env[name];
  }
  Object.assign(env, {
    OPENAI_API_KEY: API_KEY,
    OPENAI_BASE_URL: fake.url,
    LOG_LEVEL: 'warn',
    METADATA_SERVER_DETECTION: 'none',
    NODE_ENV: 'production',
    // A retry would hide a failure inside a longer latency: fail visibly instead.
    UPSTREAM_MAX_RETRIES: '0',
  });
  if (mode === 'local') {
    env.DATA_DIR = mkdtempSync(join(tempRoot, 'data-'));
  } else {
    Object.assign(env, {
      GCS_BUCKET: BUCKET,
      STORAGE_EMULATOR_HOST: gcs.url,
      FIRESTORE_EMULATOR_HOST: firestoreHost,
      GOOGLE_CLOUD_PROJECT: PROJECT,
      // Signed URLs need a service account to sign with; public URLs are built locally.
      URL_MODE: 'public',
    });
  }
  const nodeOptions = [
    config.nodeOptions,
    config.cpuProfDir && `--cpu-prof --cpu-prof-dir=${config.cpuProfDir}`,
  ].filter(Boolean);
  if (nodeOptions.length > 0) env.NODE_OPTIONS = nodeOptions.join(' ');
  return {...env, ...extra};
}

/** Runs `body` against a fresh function process (and an emptied GCS test server), then stops it. */
async function withFunction(mode, body) {
  if (mode === 'gcs') await gcs.call('reset');
  const fn = await startImageGen(mode);
  log(`imageGen (${mode}) pid ${fn.pid} on ${fn.url}`);
  try {
    return await body(fn);
  } finally {
    await fn.stop();
    await fake.call('reset');
  }
}

async function startImageGen(mode) {
  const port = await freePort();
  const fn = spawnFunction({
    source: join(root, 'dist/index.js'),
    target: 'imageGen',
    env: functionEnv(mode),
    port,
  });
  fn.mode = mode;
  await pollUntil(() => request(`${fn.url}/health`, {useAgent: false}), {
    everyMs: 20,
    timeoutMs: 60_000,
    isDead: fn.exited,
  }).catch(error => {
    throw new Error(`imageGen (${mode}) did not become healthy: ${error.message}\n${fn.output()}`);
  });
  return fn;
}

// ---------------------------------------------------------------------------
// Generations and their upstream time

let tagCounter = 0;

/**
 * POSTs one generation. The `user` field carries a unique tag that the fake
 * records with the upstream call(s), so the upstream time of this very request
 * can be subtracted later (see upstreamByTag).
 */
async function generate(fn, params, tagPrefix, useAgent) {
  const tag = `${tagPrefix}-${++tagCounter}`;
  const response = await request(`${fn.url}/generate`, {
    method: 'POST',
    body: {prompt: `a bench image (${tag})`, ...params, safety_identifier: tag},
    ...(useAgent === undefined ? {} : {useAgent}),
  });
  if (response.status !== 200)
    results.errors.push(`${tagPrefix}: HTTP ${response.status} ${response.text.slice(0, 300)}`);
  return {tag, status: response.status, ms: response.ms};
}

/** tag -> {span: first arrival to last answer at the fake, calls, service: per call} */
async function upstreamByTag() {
  const byTag = new Map();
  for (const t of await fake.call('takeTimings')) {
    if (!t.user) continue;
    const entry = byTag.get(t.user) ?? {start: Infinity, end: -Infinity, calls: 0, service: []};
    entry.start = Math.min(entry.start, t.start);
    entry.end = Math.max(entry.end, t.end);
    entry.calls++;
    entry.service.push(t.end - t.start);
    byTag.set(t.user, entry);
  }
  for (const entry of byTag.values()) entry.span = entry.end - entry.start;
  return byTag;
}

/** Client time minus the upstream time of the same request: what the function itself took. */
function inFunction(runs, upstream) {
  return runs.filter(r => r.status === 200 && upstream.has(r.tag)).map(r => r.ms - upstream.get(r.tag).span);
}

/** CPU time used so far by each process involved, in ms. */
function cpuSnapshot(fn) {
  return {
    fn: cpuMsOf(fn.pid),
    fake: cpuMsOf(fake.pid),
    storage: (gcs ? cpuMsOf(gcs.pid) : 0) + (emulatorPgid ? groupCpuMs(emulatorPgid) : 0),
    bench: process.cpuUsage(),
  };
}

/** CPU ms per request between two snapshots, per process. */
function cpuPerRequest(before, after, requests) {
  const bench = process.cpuUsage(before.bench);
  return {
    fn: (after.fn - before.fn) / requests,
    fake: (after.fake - before.fake) / requests,
    storage: (after.storage - before.storage) / requests,
    bench: (bench.user + bench.system) / 1000 / requests,
  };
}

async function sequential(fn, params, tagPrefix, count) {
  const runs = [];
  for (let i = 0; i < count; i++) runs.push(await generate(fn, params, tagPrefix));
  return runs;
}

async function batch(fn, params, tagPrefix, count) {
  const started = performance.now();
  const runs = await Promise.all(Array.from({length: count}, () => generate(fn, params, tagPrefix)));
  return {runs, wallMs: performance.now() - started};
}

/** Fills the fake's pools of encoded noise images so no measured call pays for sharp. */
async function warmFake() {
  await fake.call('setLatency', 0);
  const specs = [
    {model: MODEL, size: '1024x1024', n: 3},
    {model: MODEL, size: '1536x1024', n: 3},
    {model: MODEL, size: '1024x1024', n: 3, ...SMALL},
    {model: MODEL, size: '1024x1024', n: 1, output_format: 'svg'},
  ];
  await Promise.all(specs.map(spec => fakeImagesBase64(spec)));
  await fake.call('setLatency', config.latencyMs);
  await fake.call('reset');
}

/** Asks the fake directly (not through the function) for images; returns their base64. */
async function fakeImagesBase64(body) {
  const response = await request(`${fake.url}/images/generations`, {
    method: 'POST',
    headers: {authorization: `Bearer ${API_KEY}`},
    body: {prompt: 'bench', ...body},
  });
  if (response.status !== 200)
    throw new Error(`fake answered ${response.status}: ${response.text.slice(0, 300)}`);
  return JSON.parse(response.text).data.map(item => item.b64_json);
}

// ---------------------------------------------------------------------------
// 1. Fan-out

async function measureFanOut(fn) {
  log('1. fan-out: SVG count=4 vs count=1');
  const params = {model: MODEL, size: '1024x1024', output_format: 'svg'};
  await sequential(fn, {...params, count: 4}, 'warm', 1);
  await upstreamByTag();
  const one = [];
  const four = [];
  for (let i = 0; i < config.reps; i++) {
    one.push(await generate(fn, {...params, count: 1}, 'fan1'));
    four.push(await generate(fn, {...params, count: 4}, 'fan4'));
  }
  const upstream = await upstreamByTag();
  const fourUpstream = four.filter(r => upstream.has(r.tag)).map(r => upstream.get(r.tag));
  const figure = {
    count1: median(one.map(r => r.ms)),
    count4: median(four.map(r => r.ms)),
    count4Calls: median(fourUpstream.map(u => u.calls)),
    count4UpstreamSpan: median(fourUpstream.map(u => u.span)),
    count1InFunction: median(inFunction(one, upstream)),
    count4InFunction: median(inFunction(four, upstream)),
    errors: [...one, ...four].filter(r => r.status !== 200).length,
  };
  figure.ratio = figure.count4 / figure.count1;
  results.figures.fanOut = figure;
  target(
    '1',
    'Fan-out: count=4 / count=1 (SVG, one image per call)',
    figure.ratio,
    1.2,
    ratio,
    figure.errors,
  );
}

// ---------------------------------------------------------------------------
// 2. Concurrency

async function measureConcurrency(fn, label, params, sizes = [64, 256], withTarget = true) {
  log(`2. concurrency (${label}): 1 vs ${sizes.join(', ')}`);
  await sequential(fn, params, 'warm', 3);
  await upstreamByTag();
  const cpuBefore = cpuSnapshot(fn);
  const single = await sequential(fn, params, 'single', config.reps);
  const singleCpu = cpuPerRequest(cpuBefore, cpuSnapshot(fn), config.reps);
  const singleUpstream = await upstreamByTag();
  const figure = {
    params,
    single: median(single.map(r => r.ms)),
    singleInFunction: median(inFunction(single, singleUpstream)),
    singleCpu,
    batches: [],
  };
  for (const n of sizes) {
    const rounds = n <= 64 ? 2 : 1;
    const walls = [];
    const inside = [];
    const service = [];
    let errors = 0;
    const rssBefore = memoryOf(fn.pid).rss;
    resetPeakRss(fn.pid);
    const roundSampler = sampleRss(fn.pid);
    const cpuBefore = cpuSnapshot(fn);
    for (let round = 0; round < rounds; round++) {
      const {runs, wallMs} = await batch(fn, params, `c${n}`, n);
      const upstream = await upstreamByTag();
      walls.push(wallMs);
      inside.push(...inFunction(runs, upstream));
      for (const u of upstream.values()) service.push(...u.service);
      errors += runs.filter(r => r.status !== 200).length;
    }
    const cpu = cpuPerRequest(cpuBefore, cpuSnapshot(fn), n * rounds);
    const peak = Math.max(roundSampler.stop().maxRss, memoryOf(fn.pid).hwm);
    const wall = median(walls);
    figure.batches.push({
      n,
      rounds,
      wall,
      ratio: wall / figure.single,
      inFunctionP50: percentile(inside, 50),
      inFunctionP99: percentile(inside, 99),
      upstreamServiceP50: percentile(service, 50),
      upstreamServiceMax: max(service),
      rssBefore,
      peakRss: peak,
      cpu,
      errors,
    });
    if (withTarget && n === 64) {
      target('2', `Concurrency: 64 concurrent / 1 (${label})`, wall / figure.single, 1.5, ratio, errors);
    }
  }
  (results.figures.concurrency ??= []).push({label, ...figure});
}

// ---------------------------------------------------------------------------
// 3. Overhead per image, and its in-process floor

async function measureOverhead(fn, storeLabel) {
  log(`3. overhead per image (${storeLabel}), ${config.samples} samples per size`);
  await fake.call('setLatency', config.overheadLatencyMs);
  const rows = [];
  for (const size of OVERHEAD_SIZES) {
    const params = {model: MODEL, size};
    await sequential(fn, params, 'warm', 3);
    await upstreamByTag();
    const cpuBefore = cpuSnapshot(fn);
    const runs = await sequential(fn, params, `ovh-${storeLabel}-${size}`, config.samples);
    const cpu = cpuPerRequest(cpuBefore, cpuSnapshot(fn), config.samples);
    const upstream = await upstreamByTag();
    const inside = inFunction(runs, upstream);
    rows.push({
      size,
      p50: percentile(inside, 50),
      p99: percentile(inside, 99),
      totalP50: percentile(
        runs.map(r => r.ms),
        50,
      ),
      upstreamP50: percentile(
        [...upstream.values()].map(u => u.span),
        50,
      ),
      errors: runs.filter(r => r.status !== 200).length,
      samples: inside.length,
      cpu,
    });
  }
  await fake.call('setLatency', config.latencyMs);
  return rows;
}

/** The fake's whole response body for one image, as bytes. */
async function fakeResponseBody(body) {
  const response = await request(`${fake.url}/images/generations`, {
    method: 'POST',
    headers: {authorization: `Bearer ${API_KEY}`},
    body: {prompt: 'bench', ...body},
    raw: true,
  });
  if (response.status !== 200) throw new Error(`fake answered ${response.status}`);
  return response.body;
}

/**
 * Not part of the floor: what reading the upstream answer as JSON costs (bytes
 * to text, text to objects), which any client of the JSON API pays before the
 * floor's first step.
 */
function jsonStepTimes(body) {
  const times = [];
  for (let i = -3; i < config.samples; i++) {
    const started = performance.now();
    const parsed = JSON.parse(body.toString('utf8'));
    if (typeof parsed.data[0].b64_json !== 'string') throw new Error('no b64_json');
    if (i >= 0) times.push(performance.now() - started);
  }
  return times;
}

function hashAndDecode(b64) {
  const data = Buffer.from(b64, 'base64');
  const sha256 = createHash('sha256').update(data).digest('hex');
  return {data, sha256};
}

async function floorLocal(size, b64) {
  const dir = mkdtempSync(join(tempRoot, 'floor-'));
  const times = [];
  for (let i = -3; i < config.samples; i++) {
    const started = performance.now();
    const {data} = hashAndDecode(b64);
    await fsp.writeFile(join(dir, `${i + 3}-${size}.png`), data);
    if (i >= 0) times.push(performance.now() - started);
  }
  rmSync(dir, {recursive: true, force: true});
  return times;
}

async function floorGcs(size, b64, bucket) {
  const times = [];
  for (let i = -3; i < config.samples; i++) {
    const started = performance.now();
    const {data, sha256} = hashAndDecode(b64);
    // The same request the function's GcsObjectStore.put makes.
    await bucket.file(`floor/${size}/${randomUUID()}.png`).save(data, {
      resumable: false,
      contentType: 'image/png',
      metadata: {
        contentType: 'image/png',
        cacheControl: 'public, max-age=31536000, immutable',
        metadata: {sha256},
      },
      preconditionOpts: {ifGenerationMatch: 0},
    });
    if (i >= 0) times.push(performance.now() - started);
  }
  return times;
}

/** Not part of the floor: one Firestore batch (job + image) like saveJob, to show where GCS-mode time goes. */
async function firestoreCommitTimes(db) {
  const times = [];
  for (let i = -3; i < config.samples; i++) {
    const jobId = randomUUID();
    const imageId = randomUUID();
    const image = {
      id: imageId,
      job_id: jobId,
      index: 0,
      object_path: `images/${jobId}/000-${imageId}.png`,
      bytes: 1,
    };
    const started = performance.now();
    const b = db.batch();
    b.create(db.collection('bench-jobs').doc(jobId), {
      id: jobId,
      images: [image],
      created_at: new Date().toISOString(),
    });
    b.create(db.collection('bench-images').doc(imageId), image);
    await b.commit();
    if (i >= 0) times.push(performance.now() - started);
  }
  return times;
}

async function measureFloors(kind) {
  log(`3. floor (${kind}), in-process`);
  await fake.call('setLatency', 0);
  const floors = [];
  let storage;
  let db;
  if (kind === 'gcs') {
    const {Storage} = await import('@google-cloud/storage');
    storage = new Storage({apiEndpoint: gcs.url, projectId: PROJECT});
    process.env.FIRESTORE_EMULATOR_HOST = firestoreHost;
    const {Firestore} = await import('@google-cloud/firestore');
    db = new Firestore({projectId: PROJECT, ignoreUndefinedProperties: true});
  }
  for (const size of OVERHEAD_SIZES) {
    const body = await fakeResponseBody({model: MODEL, size});
    const b64 = JSON.parse(body.toString('utf8')).data[0].b64_json;
    const cpuBefore = process.cpuUsage();
    const times =
      kind === 'local' ? await floorLocal(size, b64) : await floorGcs(size, b64, storage.bucket(BUCKET));
    const cpu = process.cpuUsage(cpuBefore);
    const json = jsonStepTimes(body);
    const row = {
      size,
      bytes: Buffer.byteLength(b64, 'base64'),
      responseBytes: body.length,
      p50: percentile(times, 50),
      p99: percentile(times, 99),
      // This process's CPU only (not the GCS test server's), warm-up rounds included.
      cpuMs: (cpu.user + cpu.system) / 1000 / (config.samples + 3),
      jsonP50: percentile(json, 50),
    };
    if (db) {
      const commits = await firestoreCommitTimes(db);
      row.firestoreP50 = percentile(commits, 50);
      row.firestoreP99 = percentile(commits, 99);
    }
    floors.push(row);
  }
  await db?.terminate();
  await fake.call('setLatency', config.latencyMs);
  await fake.call('reset');
  return floors;
}

function recordOverhead(storeLabel, rows, floors) {
  const combined = rows.map(row => {
    const floor = floors.find(f => f.size === row.size);
    return {...row, floor};
  });
  (results.figures.overhead ??= {})[storeLabel] = combined;
  for (const row of combined) {
    for (const p of ['p50', 'p99']) {
      target(
        '3',
        `Overhead/image ${storeLabel} ${row.size} ${p}: ${ms(row[p])} vs floor ${ms(row.floor[p])}`,
        row[p] / row.floor[p],
        2,
        ratio,
        row.errors,
      );
    }
  }
}

// ---------------------------------------------------------------------------
// 4. Memory

async function measureMemory(mode) {
  log(`4. memory (${mode}): 64 x 1536x1024 in flight`);
  if (mode === 'gcs') await gcs.call('reset');
  const fn = await startImageGen(mode);
  try {
    const params = {model: MODEL, size: '1536x1024'};
    await sequential(fn, params, 'warm', 3);
    await upstreamByTag();
    await sleep(200);
    const idle = memoryOf(fn.pid).rss;
    const hwmReset = resetPeakRss(fn.pid);
    const sampler = sampleRss(fn.pid, 5);
    const {runs, wallMs} = await batch(fn, params, `mem-${mode}`, 64);
    const {maxRss, samples} = sampler.stop();
    const {hwm} = memoryOf(fn.pid);
    const upstream = await upstreamByTag();
    const figure = {
      mode,
      idleRss: idle,
      peakRss: hwmReset ? Math.max(hwm, maxRss) : maxRss,
      peakSource: hwmReset ? 'VmHWM (reset before the batch) and VmRSS samples' : 'VmRSS samples',
      rssSamples: samples,
      wallMs,
      inFunctionP50: percentile(inFunction(runs, upstream), 50),
      errors: runs.filter(r => r.status !== 200).length,
    };
    (results.figures.memory ??= []).push(figure);
    target(
      '4',
      `Peak RSS, 64 x 1536x1024 in flight (${mode})`,
      figure.peakRss,
      256 * 1024 * 1024,
      mib,
      figure.errors,
    );
  } finally {
    await fn.stop();
  }
}

// ---------------------------------------------------------------------------
// 5. Cold start

/** A fresh process of `variant`: imagegen-local, imagegen-gcs, or the empty function. */
async function spawnColdVariant(variant) {
  const isEmpty = variant.startsWith('empty');
  return spawnFunction({
    source: isEmpty ? join(root, 'bench/empty-function.js') : join(root, 'dist/index.js'),
    target: isEmpty ? 'empty' : 'imageGen',
    env: functionEnv(variant.endsWith('gcs') ? 'gcs' : 'local'),
    port: await freePort(),
  });
}

async function coldStart(variant, path = '/health') {
  const fn = await spawnColdVariant(variant);
  try {
    const health = await pollUntil(() => request(`${fn.url}${path}`, {useAgent: false}), {
      everyMs: 2,
      timeoutMs: 60_000,
      isDead: fn.exited,
    });
    return health.at - fn.startedAt;
  } finally {
    await fn.stop();
  }
}

async function coldGeneration(variant) {
  const fn = await spawnColdVariant(variant);
  try {
    const deadline = performance.now() + 60_000;
    for (;;) {
      if (fn.exited()) throw new Error(`${variant} exited:\n${fn.output()}`);
      try {
        const run = await generate(fn, {model: MODEL, size: '1024x1024'}, `cold-${variant}`, false);
        if (run.status !== 200) throw new Error(`${variant}: first generation answered ${run.status}`);
        const at = performance.now();
        const upstream = (await upstreamByTag()).get(run.tag);
        const total = at - fn.startedAt;
        return {total, excludingUpstream: total - (upstream?.span ?? 0)};
      } catch (error) {
        if (!['ECONNREFUSED', 'ECONNRESET'].includes(error?.code)) throw error;
      }
      if (performance.now() > deadline) throw new Error(`${variant}: no answer in 60 s`);
      await sleep(2);
    }
  } finally {
    await fn.stop();
  }
}

/** What the first request of a cold instance pays for: require() of each dependency, each in a fresh process. */
const MODULES = [
  '@google-cloud/functions-framework',
  'zod',
  'pino',
  'image-size',
  'openai',
  '@google-cloud/storage',
  '@google-cloud/firestore',
  './dist/index.js',
];

function requireTime(name) {
  const script = `const t = performance.now(); require(${JSON.stringify(name)}); process.stdout.write(String(performance.now() - t));`;
  const child = spawnSync(nodeBin, ['-e', script], {
    cwd: root,
    encoding: 'utf8',
    env: {...process.env, NODE_ENV: 'production'},
  });
  if (child.status !== 0) throw new Error(`require(${name}) failed: ${child.stderr.slice(0, 500)}`);
  return Number(child.stdout);
}

function measureModuleLoad() {
  log('5. require() time of each dependency, fresh process each');
  const figure = {};
  for (const name of MODULES) {
    figure[name] = median(Array.from({length: config.coldReps}, () => requireTime(name)));
  }
  results.figures.moduleLoad = figure;
}

async function measureColdStart() {
  const variants = ['imagegen-local', 'empty', ...(firestoreHost && gcs ? ['imagegen-gcs'] : [])];
  log(`5. cold start: ${variants.join(', ')} x ${config.coldReps}`);
  await fake.call('reset');
  const health = Object.fromEntries(variants.map(v => [v, []]));
  const ready = Object.fromEntries(variants.map(v => [v, []]));
  const gen = Object.fromEntries(variants.map(v => [v, []]));
  // Interleaved, so a slow moment of the machine does not hit one variant only.
  for (let rep = 0; rep < config.coldReps; rep++) {
    for (const v of variants) health[v].push(await coldStart(v));
    // Readiness calls both stores, so it loads their clients: shown for reference.
    for (const v of variants) ready[v].push(await coldStart(v, '/ready'));
    for (const v of variants) gen[v].push(await coldGeneration(v));
  }
  const figure = {};
  for (const v of variants) {
    figure[v] = {
      health: median(health[v]),
      healthAll: health[v],
      ready: median(ready[v]),
      generation: median(gen[v].map(g => g.total)),
      generationExcludingUpstream: median(gen[v].map(g => g.excludingUpstream)),
    };
  }
  results.figures.coldStart = figure;
  const empty = figure.empty;
  for (const v of variants.filter(name => name !== 'empty')) {
    target(
      '5',
      `Cold start to first /health 200 (${v}) vs empty`,
      figure[v].health / empty.health,
      1.5,
      ratio,
    );
    target(
      '5',
      `Cold start to first generation, upstream excluded (${v}) vs empty`,
      figure[v].generationExcludingUpstream / empty.generationExcludingUpstream,
      1.5,
      ratio,
    );
  }
}

// ---------------------------------------------------------------------------
// 6. Streaming: the first partial image

/**
 * One streamed generation (one image, partial images on), tagged like
 * `generate` so the fake's own times for its upstream call can be matched.
 */
async function streamOnce(fn, params, tagPrefix) {
  const tag = `${tagPrefix}-${++tagCounter}`;
  const response = await streamRequest(`${fn.url}/generate`, {
    body: {prompt: `a bench stream (${tag})`, ...params, safety_identifier: tag},
  });
  if (response.status !== 200 || !response.firstAt['job.completed'])
    results.errors.push(
      `${tagPrefix}: HTTP ${response.status} ${JSON.stringify(response.counts)} ${response.text.slice(0, 300)}`,
    );
  return {tag, ...response};
}

/**
 * Per stream, side by side: the caller's time to its first image.partial
 * (from sending the request) and the fake's (from the request's arrival to
 * handing its first partial to the socket). What the function adds is the
 * caller's arrival time minus the fake's hand-off time: both are read on
 * performance.timeOrigin + performance.now(), comparable across processes.
 */
function firstPartialFigures(runs, timings) {
  const upstream = new Map(timings.filter(t => t.user && t.firstPartialAt).map(t => [t.user, t]));
  const caller = [];
  const atFake = [];
  const added = [];
  const ratios = [];
  /** Per stream, for the JSON: when its call reached the fake (from the first) and what was added. */
  const raw = [];
  const firstArrival = Math.min(...timings.map(t => t.start));
  for (const run of runs) {
    const at = run.firstAt['image.partial'];
    const call = upstream.get(run.tag);
    if (at === undefined || !call) continue;
    caller.push(at - run.sentAt);
    atFake.push(call.firstPartialAt - call.start);
    added.push(at - call.firstPartialAt);
    ratios.push((at - run.sentAt) / (call.firstPartialAt - call.start));
    raw.push({arrivedMs: call.start - firstArrival, addedMs: at - call.firstPartialAt});
  }
  const p = (values, q) => percentile(values, q);
  return {
    samples: added.length,
    callerP50: p(caller, 50),
    callerP99: p(caller, 99),
    fakeP50: p(atFake, 50),
    fakeP99: p(atFake, 99),
    addedP50: p(added, 50),
    addedP99: p(added, 99),
    ratioP50: p(ratios, 50),
    ratioP99: p(ratios, 99),
    errors: runs.filter(run => run.status !== 200 || !run.firstAt['job.completed']).length,
    raw,
  };
}

async function measureStreaming(fn) {
  log('6. streaming: first partial image at the caller vs at the fake, 1 and 64 streams');
  const params = {model: MODEL, size: '1024x1024', stream: true, partial_images: 2};
  // Fills the fake's pools (partial images included) and warms the function's stream path.
  await Promise.all(Array.from({length: 8}, () => streamOnce(fn, params, 'warm')));
  await fake.call('takeTimings');
  const single = [];
  for (let i = 0; i < config.streamSamples; i++) single.push(await streamOnce(fn, params, 's1'));
  const singleFigure = firstPartialFigures(single, await fake.call('takeTimings'));
  const concurrent = [];
  const concurrentTimings = [];
  for (let round = 0; round < 2; round++) {
    concurrent.push(...(await Promise.all(Array.from({length: 64}, () => streamOnce(fn, params, 's64')))));
    concurrentTimings.push(...(await fake.call('takeTimings')));
  }
  const concurrentFigure = firstPartialFigures(concurrent, concurrentTimings);
  results.figures.streaming = {
    params,
    single: singleFigure,
    concurrent64: concurrentFigure,
    // Other processes on the machine show in the tail; the 1-minute load average says how many.
    loadAverage: os.loadavg()[0],
  };
  target(
    '6a',
    'Streaming: first partial, added at the caller, p50 (64 streams)',
    concurrentFigure.addedP50,
    20,
    ms,
    concurrentFigure.errors,
  );
  target(
    '6b',
    'Streaming: first partial, added at the caller, p99 (64 streams)',
    concurrentFigure.addedP99,
    50,
    ms,
    concurrentFigure.errors,
  );
}

// ---------------------------------------------------------------------------
// Report

function target(id, name, value, limit, format, errors = 0) {
  const pass = Number.isFinite(value) && value < limit && errors === 0;
  results.targets.push({
    id,
    name,
    value,
    limit,
    shown: format(value),
    limitShown: format(limit),
    pass,
    errors,
  });
}

function table(headers, rows) {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map(r => String(r[i]).length)));
  const line = cells =>
    cells
      .map((c, i) => String(c).padEnd(widths[i]))
      .join('  ')
      .trimEnd();
  return [line(headers), line(widths.map(w => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

function report() {
  const f = results.figures;
  const m = results.machine;
  const out = [];
  out.push('');
  out.push(
    `imagegen bench — ${m.nproc} cores (${m.cpuModel}), ${mib(m.memTotal)} RAM, node ${m.node}, ${m.kernel}`,
  );
  out.push(
    `upstream latency ${config.latencyMs} ms (overhead phase ${config.overheadLatencyMs} ms); ` +
      `${config.samples} overhead samples; ${config.reps} reps; ${config.coldReps} cold starts per variant`,
  );
  out.push(`function processes run with NODE_OPTIONS="${config.nodeOptions}"`);
  out.push('');

  if (f.fanOut) {
    const x = f.fanOut;
    out.push(`1. Fan-out (${MODEL}, SVG output: one image per call, sequential, medians)`);
    out.push(
      table(
        ['request', 'client latency', 'upstream calls', 'upstream span', 'in function', 'ratio'],
        [
          ['count=1', ms(x.count1), '1', '', ms(x.count1InFunction), ''],
          [
            'count=4',
            ms(x.count4),
            String(x.count4Calls),
            ms(x.count4UpstreamSpan),
            ms(x.count4InFunction),
            ratio(x.ratio),
          ],
        ],
      ),
    );
    out.push('');
  }
  for (const c of f.concurrency ?? []) {
    out.push(`2. Concurrency — ${c.label} (one function process; batch = first sent to last answered)`);
    const storage = c.label.includes('GCS');
    const cpuCells = cpu => [ms(cpu.fn), ms(cpu.fake), ...(storage ? [ms(cpu.storage)] : [])];
    const rows = [
      [
        '1 (sequential median)',
        ms(c.single),
        '',
        ms(c.singleInFunction),
        '',
        '',
        '',
        ...cpuCells(c.singleCpu),
        '',
        '',
        '',
      ],
    ];
    for (const b of c.batches) {
      rows.push([
        `${b.n} concurrent${b.rounds > 1 ? ` (median of ${b.rounds})` : ''}`,
        ms(b.wall),
        ratio(b.ratio),
        ms(b.inFunctionP50),
        ms(b.inFunctionP99),
        ms(b.upstreamServiceP50),
        ms(b.upstreamServiceMax),
        ...cpuCells(b.cpu),
        mib(b.rssBefore),
        mib(b.peakRss),
        String(b.errors),
      ]);
    }
    out.push(
      table(
        [
          'requests',
          'latency',
          'ratio',
          'in fn p50',
          'in fn p99',
          'upstream p50',
          'upstream max',
          'fn CPU/req',
          'fake CPU/req',
          ...(storage ? ['GCS+Firestore CPU/req'] : []),
          'RSS before',
          'peak RSS',
          'errors',
        ],
        rows,
      ),
    );
    out.push('');
  }
  if (f.overhead) {
    out.push('3. Overhead per image = client latency − upstream time of the same request (sequential)');
    const rows = [];
    for (const [store, list] of Object.entries(f.overhead)) {
      for (const r of list) {
        rows.push([
          store,
          r.size,
          `${(r.floor.bytes / 1024 / 1024).toFixed(2)} MB`,
          ms(r.p50),
          ms(r.p99),
          ms(r.floor.p50),
          ms(r.floor.p99),
          ratio(r.p50 / r.floor.p50),
          ratio(r.p99 / r.floor.p99),
          ms(r.cpu.fn),
          ms(r.floor.cpuMs),
          ms(r.floor.jsonP50),
          r.floor.firestoreP50 === undefined
            ? ''
            : `${ms(r.floor.firestoreP50)} / ${ms(r.floor.firestoreP99)}`,
        ]);
      }
    }
    out.push(
      table(
        [
          'store',
          'size',
          'PNG',
          'fn p50',
          'fn p99',
          'floor p50',
          'floor p99',
          'p50 ratio',
          'p99 ratio',
          'fn CPU/img',
          'floor CPU/img',
          'JSON parse p50*',
          'Firestore commit p50/p99*',
        ],
        rows,
      ),
    );
    out.push(
      '   floor: decode the same base64, sha256, write the bytes (local: one file; gcs: one upload, same client call)',
    );
    out.push(
      '   * not in the floor, measured in-process for reference: JSON.parse of the same upstream answer; one Firestore batch (job + image)',
    );
    out.push(
      '   CPU/img: user+system CPU of the function process (all threads, 10 ms ticks) / of the bench process during the floor',
    );
    out.push('');
  }
  if (f.memory) {
    out.push(`4. Memory — 64 x ${MODEL} 1536x1024 PNG in flight on a fresh, warmed process`);
    out.push(
      table(
        ['store', 'idle RSS', 'peak RSS', 'batch latency', 'in fn p50', 'errors', 'peak from'],
        f.memory.map(x => [
          x.mode,
          mib(x.idleRss),
          mib(x.peakRss),
          ms(x.wallMs),
          ms(x.inFunctionP50),
          String(x.errors),
          x.peakSource,
        ]),
      ),
    );
    out.push('');
  }
  if (f.coldStart) {
    out.push(`5. Cold start — spawn to first answer, median of ${config.coldReps}`);
    out.push(
      table(
        ['function', '/health 200', '/ready 200', 'first generation', 'first generation − upstream'],
        Object.entries(f.coldStart).map(([v, x]) => [
          v,
          ms(x.health),
          ms(x.ready),
          ms(x.generation),
          ms(x.generationExcludingUpstream),
        ]),
      ),
    );
    out.push('');
  }
  if (f.moduleLoad) {
    out.push(
      `   require() time in a fresh process (median of ${config.coldReps}): ` +
        Object.entries(f.moduleLoad)
          .map(([name, t]) => `${name} ${ms(t)}`)
          .join(', '),
    );
    out.push('');
  }
  if (f.streaming) {
    const x = f.streaming;
    out.push(
      `6. Streaming — first image.partial, ${MODEL} ${x.params.size} PNG, partial_images ${x.params.partial_images}, local store`,
    );
    out.push(
      table(
        [
          'streams',
          'samples',
          'caller p50',
          'caller p99',
          'fake p50',
          'fake p99',
          'added p50',
          'added p99',
          'ratio p50',
          'ratio p99',
          'errors',
        ],
        [
          ['1 (sequential)', x.single],
          ['64 concurrent (2 rounds)', x.concurrent64],
        ].map(([label, y]) => [
          label,
          String(y.samples),
          ms(y.callerP50),
          ms(y.callerP99),
          ms(y.fakeP50),
          ms(y.fakeP99),
          ms(y.addedP50),
          ms(y.addedP99),
          ratio(y.ratioP50),
          ratio(y.ratioP99),
          String(y.errors),
        ]),
      ),
    );
    out.push(
      '   caller: request sent → first image.partial parsed; fake: request arrived → first partial handed to its socket;',
    );
    out.push(
      '   added: caller arrival − fake hand-off, per stream (then p50/p99); ratio: caller time / fake time, per stream',
    );
    out.push(`   1-minute load average at the end: ${x.loadAverage.toFixed(2)} (on ${m.nproc} cores)`);
    out.push('');
  }
  out.push('Summary');
  out.push(
    table(
      ['#', 'target', 'measured', 'limit', 'result'],
      [...results.targets]
        .sort((a, b) => a.id.localeCompare(b.id))
        .map(t => [
          t.id,
          t.name,
          t.shown,
          `< ${t.limitShown}`,
          `${t.pass ? 'PASS' : 'FAIL'}${t.errors ? ` (${t.errors} errors)` : ''}`,
        ]),
    ),
  );
  const failed = results.targets.filter(t => !t.pass).length;
  out.push('');
  out.push(
    `${results.targets.length - failed} of ${results.targets.length} targets met; bench took ${((performance.now() - benchStarted) / 1000).toFixed(0)} s`,
  );
  if (results.errors.length) {
    out.push(`${results.errors.length} failed requests; first: ${results.errors[0]}`);
  }
  console.log(out.join('\n'));
}

// ---------------------------------------------------------------------------

async function main() {
  results.machine = machineInfo();
  if (config.cpuProfDir) mkdirSync(config.cpuProfDir, {recursive: true});

  // The Firestore emulator (java) takes a while: start it first, use it last.
  let emulator;
  let emulatorStart;
  if (config.gcs && [2, 3, 4, 5].some(runs)) {
    if (process.env.FIRESTORE_EMULATOR_HOST) {
      firestoreHost = process.env.FIRESTORE_EMULATOR_HOST;
    } else if (await hasGcloud()) {
      emulatorStart = startFirestoreEmulator().then(
        e => {
          emulator = e;
          firestoreHost = e.host;
          emulatorPgid = e.pgid;
        },
        error =>
          log(`Firestore emulator failed to start, GCS figures skipped: ${error.message.slice(0, 500)}`),
      );
    } else {
      log('gcloud not found: GCS + Firestore figures skipped');
    }
  }

  if (config.build) {
    log('npm run build');
    const build = spawnSync('npm', ['run', 'build'], {cwd: root, stdio: ['ignore', 'inherit', 'inherit']});
    if (build.status !== 0) throw new Error('npm run build failed');
  }

  [fake, gcs] = await Promise.all([
    startService('fake-openai', [`--latency-ms=${config.latencyMs}`, `--api-key=${API_KEY}`]),
    // The GCS test server is optional: without it the GCS rows are left out.
    config.gcs
      ? startService('gcs', [`--bucket=${BUCKET}`]).catch(error => {
          log(`GCS test server failed to start, GCS figures skipped: ${error.message.slice(0, 500)}`);
          return undefined;
        })
      : undefined,
  ]);
  log(`fake OpenAI ${fake.url}${gcs ? `, GCS test server ${gcs.url}` : ''}`);
  await warmFake();

  // Each group of measurements gets a fresh, warmed function process, so one
  // phase's heap (a 256-request batch leaves ~1 GB behind) does not skew the next.
  // Sequential measurements (3, then 1) come first, before any big batch.
  if (runs(3) || runs(1)) {
    await withFunction('local', async fn => {
      if (runs(3)) {
        const rows = await measureOverhead(fn, 'local');
        recordOverhead('local', rows, await measureFloors('local'));
      }
      if (runs(1)) await measureFanOut(fn);
    });
  }
  if (runs(2)) {
    await withFunction('local', fn =>
      measureConcurrency(fn, `${MODEL} 1024x1024 PNG, local store`, {
        model: MODEL,
        size: '1024x1024',
      }),
    );
    await withFunction('local', fn =>
      measureConcurrency(fn, `${MODEL} 1024x1024 JPEG at 20 (small payload), local store`, {
        model: MODEL,
        size: '1024x1024',
        ...SMALL,
      }),
    );
  }
  if (runs(4)) await measureMemory('local');
  if (runs(6)) await withFunction('local', fn => measureStreaming(fn));

  // GCS test server + Firestore emulator: 3 and 4, and 2 at 64 for reference.
  await emulatorStart;
  if (firestoreHost && gcs) {
    if (runs(3)) {
      await withFunction('gcs', async fn => {
        const rows = await measureOverhead(fn, 'gcs');
        recordOverhead('gcs', rows, await measureFloors('gcs'));
      });
    }
    if (runs(2)) {
      await withFunction('gcs', fn =>
        measureConcurrency(
          fn,
          `${MODEL} 1024x1024 PNG, GCS + Firestore`,
          {model: MODEL, size: '1024x1024'},
          [64],
          false,
        ),
      );
    }
    if (runs(4)) await measureMemory('gcs');
  }

  // 5. Cold start.
  if (runs(5)) {
    await measureColdStart();
    measureModuleLoad();
  }

  await fake.close();
  await gcs?.close();
  await emulator?.stop();
  report();
  if (config.json) writeFileSync(config.json, `${JSON.stringify(results, null, 2)}\n`);
  if (flags.has('strict') && results.targets.some(t => !t.pass)) process.exitCode = 1;
}

main().catch(error => {
  console.error(error?.stack ?? error);
  try {
    if (results.targets.length) report();
  } catch {
    // the error above is the one that matters
  }
  process.exitCode = 1;
});
