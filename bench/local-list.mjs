// `node bench/local-list.mjs`: GET /jobs on the local store (SQLite), 10,000 jobs against 100.
//
// Builds the function (tsc, as `npm run build`), fills a fresh DATA_DIR per data set through the
// built SqliteMetadataStore (createJob then completeJob, as a run writes), serves it with the real
// Functions Framework CLI, and measures over real HTTP, in one run:
//   A. sequential GET /jobs?limit=20 (first page, a metadata filter, a page deep in the list):
//      latency p50 / p99 and the function's peak RSS, 10,000 jobs against 100, as ratios
//   B. 20 concurrent GET /jobs?limit=20 over 150 jobs (and over 10,000): batch wall time, peak RSS
//   C. the store's listJobs alone, in this process, for reference
// Run on demand only; never part of the tests. See bench/README.md.
//
// Options:
//   --samples=N   sequential requests per kind and data set (default 400)
//   --rounds=N    rounds of the concurrent batch (default 5)
//   --no-build    use dist/ as it is
//   --json=FILE   also write every figure as JSON
import {spawnSync} from 'node:child_process';
import {randomUUID} from 'node:crypto';
import {mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs';
import {createRequire} from 'node:module';
import os from 'node:os';
import {join} from 'node:path';
import {
  freePort,
  memoryOf,
  nodeBin,
  resetPeakRss,
  root,
  sampleRss,
  spawnFunction,
  stopAll,
} from './lib/processes.mjs';
import {agent, median, mib, ms, percentile, pollUntil, ratio, request} from './lib/measure.mjs';
import {commandLineFlags} from './lib/flags.mjs';

const flags = commandLineFlags();
const config = {
  samples: Math.max(20, Number(flags.get('samples') ?? 400)),
  rounds: Math.max(1, Number(flags.get('rounds') ?? 5)),
  build: !flags.has('no-build'),
  json: flags.get('json'),
};
const SMALL = 100;
const LARGE = 10_000;
const CONCURRENT_JOBS = 150;
const CONCURRENCY = 20;
const TARGET = 2;

const started = performance.now();
const log = message =>
  console.error(`[bench ${((performance.now() - started) / 1000).toFixed(1)}s] ${message}`);
const tempRoot = mkdtempSync(join(os.tmpdir(), 'imagegen-list-bench-'));
process.on('exit', () => {
  stopAll();
  rmSync(tempRoot, {recursive: true, force: true});
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(130));

// ---------------------------------------------------------------------------
// Build and data

function build() {
  if (!config.build) return;
  log('building dist/ (tsc -p tsconfig.build.json)');
  const tsc = join(root, 'node_modules/typescript/bin/tsc');
  const result = spawnSync(nodeBin, [tsc, '-p', 'tsconfig.build.json'], {cwd: root, encoding: 'utf8'});
  // Type errors elsewhere in src do not stop tsc from emitting; a missing output does.
  if (result.status !== 0) {
    const errors = result.stdout.split('\n').filter(line => line.includes('error TS'));
    log(`tsc reported ${errors.length} type errors (emitted anyway); GET /jobs is what is measured`);
  }
}

const requireBuilt = createRequire(join(root, 'dist/'));

/** A finished job as a generation of 4 images writes it, about 3 KB of JSON. */
function jobRecord(index, createdAt) {
  const id = randomUUID();
  const status = index % 20 === 0 ? 'failed' : index % 20 === 1 ? 'partial' : 'completed';
  const imageCount = status === 'failed' ? 0 : status === 'partial' ? 3 : 4;
  const images = Array.from({length: imageCount}, (_, i) => {
    const imageId = randomUUID();
    return {
      id: imageId,
      job_id: id,
      index: i,
      object_path: `images/${id}/${String(i).padStart(3, '0')}-${imageId}.png`,
      content_type: 'image/png',
      bytes: 2_100_000 + i,
      sha256: 'ab'.repeat(32),
      width: 1024,
      height: 1024,
      model: 'gpt-image-2.6-flare',
      size: '1024x1024',
      revised_prompt: `a lighthouse on a cliff at dusk, in watercolour, variation ${i}`,
      created_at: createdAt,
    };
  });
  return {
    id,
    status,
    owner: null,
    prompt: `a lighthouse on a cliff at dusk, in watercolour (${index})`,
    source: 'generate',
    parameters: {
      count: 4,
      requested_model: 'gpt-image-2.6-flare',
      model: 'gpt-image-2.6-flare',
      size: '1024x1024',
      quality: 'high',
      style: null,
      background: null,
      output_format: 'png',
      output_compression: null,
      moderation: null,
      complexity: null,
      safety_identifier: null,
      frame_count: null,
      frame_duration_ms: null,
      svg: null,
      allow_partial: true,
    },
    metadata: {team: `team-${index % 10}`, order: String(index)},
    usage: {total_tokens: 4200, input_tokens: 40, output_tokens: 4160},
    images,
    failures: status === 'partial' ? [{first_index: 3, count: 1, code: 'UPSTREAM_ERROR', error: 'boom'}] : [],
    warnings: [],
    error: status === 'failed' ? {code: 'UPSTREAM_ERROR', message: 'boom'} : null,
    lease_until: null,
    created_at: createdAt,
    updated_at: createdAt,
    completed_at: createdAt,
    upstream_ms: 12_000,
  };
}

/** A fresh DATA_DIR holding `count` jobs, one a minute, written as runs write them. */
async function seed(count) {
  const {SqliteMetadataStore} = requireBuilt('./adapters/local/sqlite-metadata-store.js');
  const dataDir = mkdtempSync(join(tempRoot, `data-${count}-`));
  const store = new SqliteMetadataStore(dataDir);
  const base = Date.parse('2030-01-01T00:00:00.000Z');
  const seedStarted = performance.now();
  for (let i = 0; i < count; i++) {
    const createdAt = new Date(base + i * 60_000).toISOString();
    const job = jobRecord(i, createdAt);
    await store.createJob({
      ...job,
      status: 'running',
      usage: null,
      images: [],
      failures: [],
      error: null,
      lease_until: new Date(base + i * 60_000 + 360_000).toISOString(),
      completed_at: null,
      upstream_ms: 0,
    });
    if (job.status === 'failed') await store.failJob(job.id, job.error, createdAt);
    else await store.completeJob(job);
  }
  await store.close();
  log(`seeded ${count} jobs in ${ms(performance.now() - seedStarted)}`);
  return dataDir;
}

// ---------------------------------------------------------------------------
// The function

/** NODE_OPTIONS as env.yaml.example deploys the function with (as bench/run.mjs does). */
function deployNodeOptions() {
  const text = readFileSync(join(root, 'env.yaml.example'), 'utf8');
  return /^NODE_OPTIONS:\s*"([^"]*)"/m.exec(text)?.[1] ?? '';
}

async function startFunction(dataDir) {
  const env = {...process.env};
  for (const name of ['GCS_BUCKET', 'API_KEYS', 'NODE_OPTIONS', 'FIRESTORE_EMULATOR_HOST']) delete env[name];
  Object.assign(env, {
    DATA_DIR: dataDir,
    OPENAI_API_KEY: 'sk-bench-key',
    LOG_LEVEL: 'warn',
    NODE_ENV: 'production',
    METADATA_SERVER_DETECTION: 'none',
  });
  const nodeOptions = deployNodeOptions();
  if (nodeOptions) env.NODE_OPTIONS = nodeOptions;
  const port = await freePort();
  const fn = spawnFunction({source: join(root, 'dist/index.js'), target: 'imageGen', env, port});
  await pollUntil(() => request(`${fn.url}/health`, {useAgent: false}), {
    everyMs: 20,
    timeoutMs: 60_000,
    isDead: fn.exited,
  }).catch(error => {
    throw new Error(`imageGen did not become healthy: ${error.message}\n${fn.output()}`);
  });
  return fn;
}

async function getPage(fn, query) {
  const response = await request(`${fn.url}/jobs?${query}`);
  if (response.status !== 200) throw new Error(`GET /jobs?${query}: ${response.status} ${response.text}`);
  return {ms: response.ms, body: JSON.parse(response.text)};
}

/** The cursor of the page in the middle of the list, found by walking every page. */
async function middleCursor(fn) {
  const cursors = [];
  let cursor;
  do {
    const page = await getPage(fn, `limit=20${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    cursor = page.body.next_cursor;
    if (cursor) cursors.push(cursor);
  } while (cursor);
  return cursors[Math.floor(cursors.length / 2)];
}

// ---------------------------------------------------------------------------
// A. Sequential lists

async function sequentialLists(count, dataDir) {
  // Found by another process: the measured one serves the same requests before measuring at
  // every size (walking 500 pages first would grow its heap and skew the RSS comparison).
  const scout = await startFunction(dataDir);
  const deep = await middleCursor(scout).finally(() => scout.stop());
  const fn = await startFunction(dataDir);
  try {
    const kinds = {
      first: 'limit=20',
      label: 'limit=20&metadata.team=team-3',
      deep: `limit=20&cursor=${encodeURIComponent(deep)}`,
    };
    for (const query of Object.values(kinds)) for (let i = 0; i < 20; i++) await getPage(fn, query);
    const idleRss = memoryOf(fn.pid).rss;
    resetPeakRss(fn.pid);
    const sampler = sampleRss(fn.pid);
    const times = {first: [], label: [], deep: []};
    // Interleaved, so drift over the run touches every kind alike.
    for (let i = 0; i < config.samples; i++) {
      for (const [kind, query] of Object.entries(kinds)) times[kind].push((await getPage(fn, query)).ms);
    }
    const peakRss = Math.max(sampler.stop().maxRss, memoryOf(fn.pid).hwm);
    const summary = Object.fromEntries(
      Object.entries(times).map(([kind, values]) => [
        kind,
        {p50: percentile(values, 50), p99: percentile(values, 99)},
      ]),
    );
    return {count, idleRss, peakRss, ...summary};
  } finally {
    await fn.stop();
  }
}

// ---------------------------------------------------------------------------
// B. Concurrent lists

async function concurrentLists(count, dataDir) {
  const fn = await startFunction(dataDir);
  try {
    for (let i = 0; i < 20; i++) await getPage(fn, 'limit=20');
    const idleRss = memoryOf(fn.pid).rss;
    resetPeakRss(fn.pid);
    const sampler = sampleRss(fn.pid);
    const walls = [];
    const latencies = [];
    for (let round = 0; round < config.rounds; round++) {
      const batchStarted = performance.now();
      const pages = await Promise.all(Array.from({length: CONCURRENCY}, () => getPage(fn, 'limit=20')));
      walls.push(performance.now() - batchStarted);
      latencies.push(...pages.map(page => page.ms));
    }
    const peakRss = Math.max(sampler.stop().maxRss, memoryOf(fn.pid).hwm);
    return {
      count,
      concurrency: CONCURRENCY,
      rounds: config.rounds,
      wallP50: median(walls),
      wallMax: Math.max(...walls),
      latencyP99: percentile(latencies, 99),
      idleRss,
      peakRss,
    };
  } finally {
    await fn.stop();
  }
}

// ---------------------------------------------------------------------------
// C. The store alone

/** Both data sets in turn, call by call, so drift touches both alike. */
async function storeAlone(dataDirs) {
  const {SqliteMetadataStore} = requireBuilt('./adapters/local/sqlite-metadata-store.js');
  const stores = dataDirs.map(dir => new SqliteMetadataStore(dir));
  const times = stores.map(() => []);
  const samples = config.samples * 5;
  for (let i = -100; i < samples; i++) {
    for (const [n, store] of stores.entries()) {
      const t = performance.now();
      const page = await store.listJobs({limit: 20});
      // What the view does with a page: the records become one JSON body.
      JSON.stringify(page.jobs);
      if (i >= 0) times[n].push(performance.now() - t);
    }
  }
  await Promise.all(stores.map(store => store.close()));
  return times.map(values => ({samples, p50: percentile(values, 50), p99: percentile(values, 99)}));
}

// ---------------------------------------------------------------------------

function report(results) {
  const [small, large] = results.sequential;
  const rows = [
    ['measure', `${SMALL} jobs`, `${LARGE} jobs`, 'ratio', 'target'],
    ...['first', 'label', 'deep'].flatMap(kind =>
      ['p50', 'p99'].map(p => {
        const value = large[kind][p] / small[kind][p];
        const name = {
          first: 'GET /jobs?limit=20',
          label: '  with metadata.team=…',
          deep: '  a page mid-list',
        }[kind];
        return [`${name} ${p}`, ms(small[kind][p]), ms(large[kind][p]), ratio(value), verdict(kind, value)];
      }),
    ),
    [
      'peak RSS while listing',
      mib(small.peakRss),
      mib(large.peakRss),
      ratio(large.peakRss / small.peakRss),
      verdict('first', large.peakRss / small.peakRss),
    ],
    [
      'idle RSS after warm-up',
      mib(small.idleRss),
      mib(large.idleRss),
      ratio(large.idleRss / small.idleRss),
      '',
    ],
  ];
  const out = [
    '',
    `A. Sequential GET /jobs over HTTP, ${config.samples} samples per kind (Node ${process.versions.node}, ${os.availableParallelism()} CPUs)`,
    table(rows),
    '',
    `B. ${CONCURRENCY} concurrent GET /jobs?limit=20, ${config.rounds} rounds`,
    table([
      ['jobs', 'batch wall p50', 'batch wall max', 'request p99', 'idle RSS', 'peak RSS'],
      ...results.concurrent.map(r => [
        String(r.count),
        ms(r.wallP50),
        ms(r.wallMax),
        ms(r.latencyP99),
        mib(r.idleRss),
        mib(r.peakRss),
      ]),
    ]),
    '',
    `C. The store alone: listJobs({limit: 20}) + JSON.stringify of the page, in-process, ${results.store[0].samples} samples`,
    table([
      ['jobs', 'p50', 'p99'],
      ...results.store.map(r => [String(r.count), ms(r.p50), ms(r.p99)]),
      [
        'ratio',
        ratio(results.store[1].p50 / results.store[0].p50),
        ratio(results.store[1].p99 / results.store[0].p99),
      ],
    ]),
  ];
  console.log(out.join('\n'));
}

/** Only the first page is held to the target; the other kinds are shown for reference. */
function verdict(kind, value) {
  if (kind !== 'first') return '';
  return value < TARGET ? `< ${TARGET}x PASS` : `< ${TARGET}x FAIL`;
}

function table(rows) {
  const widths = rows[0].map((_, col) => Math.max(...rows.map(row => String(row[col]).length)));
  return rows.map(row => row.map((cell, col) => String(cell).padEnd(widths[col])).join('  ')).join('\n');
}

build();
const results = {config, sequential: [], concurrent: [], store: []};
const dataDirs = new Map();
for (const count of [SMALL, CONCURRENT_JOBS, LARGE]) dataDirs.set(count, await seed(count));
for (const count of [SMALL, LARGE]) {
  log(`A. sequential lists over ${count} jobs`);
  results.sequential.push(await sequentialLists(count, dataDirs.get(count)));
}
for (const count of [CONCURRENT_JOBS, LARGE]) {
  log(`B. ${CONCURRENCY} concurrent lists over ${count} jobs`);
  results.concurrent.push(await concurrentLists(count, dataDirs.get(count)));
}
log('C. the store alone');
results.store = (await storeAlone([dataDirs.get(SMALL), dataDirs.get(LARGE)])).map((figures, n) => ({
  count: [SMALL, LARGE][n],
  ...figures,
}));
agent.destroy();
report(results);
if (config.json) writeFileSync(config.json, JSON.stringify(results, null, 2));
