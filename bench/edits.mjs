// `npm run bench:edits`: memory of concurrent image edits, on demand (never a test).
//
// The function runs as it is deployed (the Functions Framework CLI on dist/,
// local store), talking to the fake OpenAI server in its own process. A fresh,
// warmed process takes N concurrent edits, each with K inputs of about M MB
// (real PNG and JPEG files of random noise, made by sharp, so they are as
// large as their pixels), sent as multipart uploads or as base64 in JSON. The
// fake holds every upstream call for the latency given, so all edits are in
// flight together. Peak RSS (VmHWM, reset before the batch, and VmRSS sampled
// every 5 ms) is compared with the idle RSS of the same process, and with the
// bytes the edits carried. See bench/README.md.
//
//   node bench/edits.mjs                         # 8 edits x 4 inputs x 4 MB, multipart then JSON
//   node bench/edits.mjs --only=multipart --n=2  # two images per edit (one upstream call)
//   node bench/edits.mjs --stream                # streamed upstream: one call per image
//
// Options: --concurrency=8 --inputs=4 --input-mb=4 --n=1 --stream --latency-ms=1500
//          --only=multipart,json --no-build --node-options=FLAGS --json=FILE
//          --timeline (also print RSS every 100 ms through the batch)
//          --model=ID (dall-e-2, which cannot edit, measures reading the bodies alone)
//          --strict (exit 1 when the target is missed)
import {spawnSync} from 'node:child_process';
import {mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs';
import os from 'node:os';
import {join} from 'node:path';
import sharp from 'sharp';
import {
  freePort,
  memoryOf,
  nodeBin,
  resetPeakRss,
  root,
  sampleRss,
  sleep,
  spawnFunction,
  startService,
  stopAll,
} from './lib/processes.mjs';
import {mib, ms, pollUntil, ratio, request} from './lib/measure.mjs';
import {commandLineFlags} from './lib/flags.mjs';

const flags = commandLineFlags();
const number = (name, fallback) => {
  const value = Number(flags.get(name) ?? fallback);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`--${name} must be a positive number`);
  return value;
};
function deployNodeOptions() {
  const text = readFileSync(new URL('../env.yaml.example', import.meta.url), 'utf8');
  return /^NODE_OPTIONS:\s*"([^"]*)"/m.exec(text)?.[1] ?? '';
}

const config = {
  concurrency: number('concurrency', 8),
  inputs: number('inputs', 4),
  inputMb: number('input-mb', 4),
  n: number('n', 1),
  stream: flags.has('stream'),
  latencyMs: number('latency-ms', 1500),
  kinds: (flags.get('only') ?? 'multipart,json').split(',').map(kind => kind.trim()),
  build: !flags.has('no-build'),
  nodeOptions: flags.get('node-options') ?? deployNodeOptions(),
  json: flags.get('json'),
};
const TARGET = 512 * 1024 * 1024;
const API_KEY = 'sk-bench-key';
const MODEL = flags.get('model') ?? 'gpt-image-2.6-flare';

const started = performance.now();
const log = message =>
  console.error(`[edits ${((performance.now() - started) / 1000).toFixed(1)}s] ${message}`);
const tempRoot = mkdtempSync(join(os.tmpdir(), 'imagegen-bench-edits-'));
process.on('exit', () => {
  stopAll();
  rmSync(tempRoot, {recursive: true, force: true});
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(130));

/** Random noise as a real PNG or JPEG of about `bytes` (noise does not compress). */
async function noiseImage(format, bytes) {
  const side = Math.ceil(Math.sqrt(bytes / 3) / 16) * 16;
  const pixels = Buffer.alloc(side * side * 3);
  for (let i = 0; i < pixels.length; i += 4) pixels.writeUInt32LE((Math.random() * 0x100000000) >>> 0, i);
  const image = sharp(pixels, {raw: {width: side, height: side, channels: 3}});
  return format === 'png'
    ? image.png({compressionLevel: 0}).toBuffer()
    : image.jpeg({quality: 100, chromaSubsampling: '4:4:4'}).toBuffer();
}

async function startFunction(fake) {
  const env = {...process.env};
  for (const name of ['GCS_BUCKET', 'DATA_DIR', 'API_KEYS', 'MAX_UPLOAD_BYTES', 'NODE_OPTIONS'])
    delete env[name];
  Object.assign(env, {
    OPENAI_API_KEY: API_KEY,
    OPENAI_BASE_URL: fake.url,
    DATA_DIR: mkdtempSync(join(tempRoot, 'data-')),
    LOG_LEVEL: 'warn',
    METADATA_SERVER_DETECTION: 'none',
    NODE_ENV: 'production',
    UPSTREAM_MAX_RETRIES: '0',
    UPSTREAM_TIMEOUT_SECONDS: '120',
  });
  if (config.nodeOptions) env.NODE_OPTIONS = config.nodeOptions;
  const fn = spawnFunction({
    source: join(root, 'dist/index.js'),
    target: 'imageGen',
    env,
    port: await freePort(),
  });
  await pollUntil(() => request(`${fn.url}/health`, {useAgent: false}), {
    everyMs: 20,
    isDead: fn.exited,
  });
  return fn;
}

/** One edit of `inputs`, as multipart files or base64 JSON; resolves with its status and time. */
async function edit(fn, kind, inputs, tag) {
  const fields = {
    prompt: `a bench edit (${tag})`,
    model: MODEL,
    n: String(config.n),
    safety_identifier: tag,
    ...(config.stream ? {stream: 'true', partial_images: '0'} : {}),
  };
  let init;
  if (kind === 'multipart') {
    const form = new FormData();
    for (const [name, value] of Object.entries(fields)) form.append(name, value);
    inputs.forEach((input, i) =>
      form.append('image[]', new Blob([input.data], {type: input.type}), `in-${i}`),
    );
    init = {method: 'POST', body: form};
  } else {
    const body = {
      ...fields,
      n: config.n,
      ...(config.stream ? {stream: true, partial_images: 0} : {}),
      images: inputs.map(input => ({b64_json: input.data.toString('base64')})),
    };
    init = {method: 'POST', body: JSON.stringify(body), headers: {'content-type': 'application/json'}};
  }
  const begun = performance.now();
  const response = await fetch(`${fn.url}/edits`, init);
  const text = await response.text();
  return {
    status: response.status,
    ms: performance.now() - begun,
    error: response.ok ? null : text.slice(0, 300),
  };
}

async function measure(fake, kind, inputs) {
  const fn = await startFunction(fake);
  log(`${kind}: imageGen pid ${fn.pid}`);
  try {
    // Warm: the SDK, sharp-free header reads, the store, a first edit of each kind.
    const small = [{data: await noiseImage('png', 64 * 1024), type: 'image/png'}];
    await fake.call('setLatency', 0);
    for (let i = 0; i < 3; i++) await edit(fn, kind, small, `warm-${i}`);
    await fake.call('setLatency', config.latencyMs);
    await sleep(300);
    const idle = memoryOf(fn.pid).rss;
    const hwmReset = resetPeakRss(fn.pid);
    const sampler = sampleRss(fn.pid, 5);
    const timeline = [];
    const timelineStart = performance.now();
    const ticker = flags.has('timeline')
      ? setInterval(() => timeline.push([performance.now() - timelineStart, memoryOf(fn.pid).rss]), 100)
      : null;
    const wallStart = performance.now();
    const runs = await Promise.all(
      Array.from({length: config.concurrency}, (_, i) => edit(fn, kind, inputs, `${kind}-${i}`)),
    );
    const wallMs = performance.now() - wallStart;
    const {maxRss, samples} = sampler.stop();
    if (ticker) clearInterval(ticker);
    const {hwm} = memoryOf(fn.pid);
    const peak = hwmReset ? Math.max(hwm, maxRss) : maxRss;
    const carried = config.concurrency * inputs.reduce((sum, input) => sum + input.data.length, 0);
    const failed = runs.filter(run => run.status !== 200);
    return {
      kind,
      idle,
      peak,
      peakSource: hwmReset ? 'VmHWM and VmRSS samples' : 'VmRSS samples',
      samples,
      overIdle: peak - idle,
      carried,
      perEdit: (peak - idle) / config.concurrency,
      overIdlePerInputByte: (peak - idle) / carried,
      wallMs,
      errors: failed.map(run => `HTTP ${run.status} ${run.error}`),
      timeline,
    };
  } finally {
    await fn.stop();
    await fake.call('reset');
  }
}

if (config.build) {
  log('npm run build');
  const built = spawnSync('npm', ['run', 'build'], {cwd: root, stdio: 'inherit'});
  if (built.status !== 0) process.exit(1);
}
const fake = await startService('fake-openai', [`--latency-ms=${config.latencyMs}`, `--api-key=${API_KEY}`]);
log(`fake OpenAI on ${fake.url}`);

const inputs = [];
for (let i = 0; i < config.inputs; i++) {
  const format = i % 2 === 0 ? 'png' : 'jpeg';
  inputs.push({data: await noiseImage(format, config.inputMb * 1024 * 1024), type: `image/${format}`});
}
log(`inputs: ${inputs.map(input => `${input.type} ${(input.data.length / 1e6).toFixed(2)} MB`).join(', ')}`);

const figures = [];
for (const kind of config.kinds) figures.push(await measure(fake, kind, inputs));
await fake.close();

const machine = `${spawnSync('nproc', [], {encoding: 'utf8'}).stdout.trim()} cores, ${mib(os.totalmem())}, ${spawnSync(nodeBin, ['--version'], {encoding: 'utf8'}).stdout.trim()}`;
console.log(
  `\nMemory of ${config.concurrency} concurrent edits, each ${config.inputs} inputs of ~${config.inputMb} MB, ` +
    `n=${config.n}${config.stream ? ', streamed upstream' : ''}, upstream latency ${config.latencyMs} ms (${machine})`,
);
console.log(
  'body       idle RSS  peak RSS  peak-idle  per edit  inputs carried  (peak-idle)/inputs  peak/idle  batch     target',
);
let missed = false;
for (const f of figures) {
  const pass = f.peak < TARGET && f.errors.length === 0;
  missed ||= !pass;
  console.log(
    [
      f.kind.padEnd(9),
      mib(f.idle).padEnd(8),
      mib(f.peak).padEnd(8),
      mib(f.overIdle).padEnd(9),
      mib(f.perEdit).padEnd(8),
      mib(f.carried).padEnd(14),
      ratio(f.overIdlePerInputByte).padEnd(18),
      ratio(f.peak / f.idle).padEnd(9),
      ms(f.wallMs).padEnd(9),
      `< 512 MiB ${pass ? 'PASS' : 'FAIL'}`,
    ].join(' '),
  );
  for (const error of f.errors.slice(0, 3)) console.log(`  ${error}`);
  if (f.timeline.length > 0)
    console.log(
      `  RSS every 100 ms: ${f.timeline.map(([, rss]) => (rss / 1024 / 1024).toFixed(0)).join(' ')}`,
    );
}
if (config.json) writeFileSync(config.json, JSON.stringify({config, figures}, null, 2));
process.exit(missed && flags.has('strict') ? 1 : 0);
