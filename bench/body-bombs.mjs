// `npm run bench:bodies`: what oversized and compressed bodies cost the function.
//
// Starts the compiled function through the real Functions Framework CLI (as
// bench/run.mjs does) and sends, one at a time, over a raw TCP connection:
//   1. a gzip bomb: a JSON body that inflates to --gzip-mib MiB (1 GiB by
//      default), under 1 MiB on the wire;
//   2. a plain body of --plain-mib MiB with its Content-Length;
//   3. the same plain body chunked, with no Content-Length and no Content-Type.
// For each it samples the function's RSS from /proc (VmRSS every 5 ms, and
// the kernel's VmHWM peak after resetting it), and prints the answer, the
// peak RSS, the peak over the idle RSS, how much of the body was sent before
// the answer came, and PASS or FAIL against the target (peak RSS under 150 MiB).
// It is run on demand only, never as part of the tests.
//
// Options:
//   --gzip-mib=N     size of the inflated gzip bomb (1024)
//   --plain-mib=N    size of the plain bodies (1024)
//   --source=FILE    the compiled function to run (dist/index.js); e.g. another build to compare
//   --no-build       use dist/ as it is
//   --strict         exit 1 when the target is missed
import {spawnSync} from 'node:child_process';
import {mkdtempSync, readFileSync, rmSync} from 'node:fs';
import {connect} from 'node:net';
import os from 'node:os';
import {join, resolve} from 'node:path';
import {createGzip} from 'node:zlib';
import {freePort, memoryOf, resetPeakRss, root, sampleRss, spawnFunction, stopAll} from './lib/processes.mjs';
import {mib, pollUntil, ratio, request} from './lib/measure.mjs';
import {commandLineFlags} from './lib/flags.mjs';

const flags = commandLineFlags();
const MIB = 1024 * 1024;
const config = {
  gzipBytes: Number(flags.get('gzip-mib') ?? 1024) * MIB,
  plainBytes: Number(flags.get('plain-mib') ?? 1024) * MIB,
  source: resolve(flags.get('source') ?? join(root, 'dist/index.js')),
  build: !flags.has('no-build') && !flags.has('source'),
  strict: flags.has('strict'),
};
const TARGET_PEAK_BYTES = 150 * MIB;
const JSON_HEAD = Buffer.from('{"prompt":"a bomb","pad":"');
const JSON_TAIL = Buffer.from('"}');

/** Bytes in KiB under a MiB, in MiB above. */
const size = bytes => (bytes < MIB ? `${(bytes / 1024).toFixed(0)} KiB` : mib(bytes));

const log = message => console.error(`[bench:bodies] ${message}`);

/** NODE_OPTIONS as env.yaml.example deploys the function with. */
function deployNodeOptions() {
  const text = readFileSync(join(root, 'env.yaml.example'), 'utf8');
  return /^NODE_OPTIONS:\s*"([^"]*)"/m.exec(text)?.[1] ?? '';
}

/** A JSON body that inflates to `bytes`: a generate request padded with spaces, gzipped as a stream. */
async function gzipBomb(bytes) {
  const [head, tail] = [JSON_HEAD, JSON_TAIL];
  const gzip = createGzip({level: 9});
  const parts = [];
  gzip.on('data', chunk => parts.push(chunk));
  const done = new Promise((resolveDone, reject) => {
    gzip.on('end', resolveDone);
    gzip.on('error', reject);
  });
  const block = Buffer.alloc(MIB, 0x20);
  gzip.write(head);
  let left = bytes - head.length - tail.length;
  while (left > 0) {
    const piece = left >= block.length ? block : block.subarray(0, left);
    left -= piece.length;
    if (!gzip.write(piece)) await new Promise(resolveDrain => gzip.once('drain', resolveDrain));
  }
  gzip.end(tail);
  await done;
  return Buffer.concat(parts);
}

/**
 * Sends a request over a fresh connection, writing the body with backpressure
 * while reading the answer, and stops sending once the answer is whole.
 * Resolves with the status, the error code, the body bytes written by then,
 * and the time to the answer.
 */
function send(url, head, body) {
  const {hostname, port} = new URL(url);
  return new Promise(resolveSend => {
    const started = performance.now();
    const socket = connect(Number(port), hostname);
    let received = Buffer.alloc(0);
    let sent = 0;
    let finished = false;
    const finish = outcome => {
      if (finished) return;
      finished = true;
      socket.destroy();
      resolveSend({...outcome, sent, ms: performance.now() - started});
    };
    socket.on('data', chunk => {
      received = Buffer.concat([received, chunk]);
      let text = received.toString('latin1');
      while (/^HTTP\/1\.1 1\d\d /.test(text) && text.includes('\r\n\r\n')) {
        text = text.slice(text.indexOf('\r\n\r\n') + 4);
      }
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) return;
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(text.slice(0, end))?.[1] ?? NaN);
      if (text.length < end + 4 + length) return;
      const status = Number(text.slice(9, 12));
      let code = '';
      try {
        code = JSON.parse(text.slice(end + 4, end + 4 + length)).code ?? '';
      } catch {
        code = '(not JSON)';
      }
      finish({status, code});
    });
    socket.on('error', error => finish({status: 0, code: `connection ${error.code ?? error.message}`}));
    socket.on('close', () => finish({status: 0, code: 'connection closed without an answer'}));
    socket.on('connect', async () => {
      socket.write(`${head}\r\n\r\n`);
      for await (const chunk of body) {
        if (finished) return;
        sent += chunk.length;
        if (!socket.write(chunk)) await new Promise(resolveDrain => socket.once('drain', resolveDrain));
      }
    });
  });
}

/** A generate request padded with spaces to `total` bytes, in 64 KiB chunks, optionally in chunked framing. */
async function* paddedJson(total, chunked) {
  const frame = piece =>
    chunked
      ? Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')])
      : piece;
  yield frame(JSON_HEAD);
  const block = Buffer.alloc(64 * 1024, 0x20);
  for (let left = total - JSON_HEAD.length - JSON_TAIL.length; left > 0; left -= block.length) {
    yield frame(left >= block.length ? block : block.subarray(0, left));
  }
  yield frame(JSON_TAIL);
  if (chunked) yield Buffer.from('0\r\n\r\n');
}

async function* once(buffer) {
  for (let at = 0; at < buffer.length; at += 64 * 1024) yield buffer.subarray(at, at + 64 * 1024);
}

async function measure(fn, {name, head, body, bodyBytes, inflatedBytes}) {
  const chunks = body();
  const idle = memoryOf(fn.pid).rss;
  const hwmReset = resetPeakRss(fn.pid);
  const sampler = sampleRss(fn.pid, 5);
  let answer;
  let sampled;
  try {
    answer = await send(fn.url, head, chunks);
    // Let whatever the function does after answering (discarding the rest) show in the samples.
    await new Promise(resolveWait => setTimeout(resolveWait, 500));
  } finally {
    sampled = sampler.stop();
  }
  const {maxRss, samples} = sampled;
  const {hwm} = memoryOf(fn.pid);
  const peak = hwmReset ? Math.max(hwm, maxRss) : maxRss;
  const health = await request(`${fn.url}/health`, {useAgent: false}).catch(error => ({status: error.code}));
  log(`${name}: ${answer.status} ${answer.code}, peak ${mib(peak)} over ${samples} samples`);
  return {name, ...answer, bodyBytes, inflatedBytes, idle, peak, hwmReset, healthAfter: health.status};
}

async function main() {
  if (config.build) {
    log('npm run build');
    const build = spawnSync('npm', ['run', 'build'], {cwd: root, stdio: ['ignore', 'inherit', 'inherit']});
    if (build.status !== 0) throw new Error('npm run build failed');
  }
  log(`building a gzip bomb of ${mib(config.gzipBytes)}`);
  const bomb = await gzipBomb(config.gzipBytes);
  log(`gzip bomb: ${bomb.length} bytes on the wire (${ratio(config.gzipBytes / bomb.length)} inflation)`);

  const nodeOptions = deployNodeOptions();
  const post = lines => ['POST /generate HTTP/1.1', 'Host: localhost', ...lines].join('\r\n');
  const cases = [
    {
      name: 'gzip bomb',
      head: post([
        'Content-Type: application/json',
        'Content-Encoding: gzip',
        `Content-Length: ${bomb.length}`,
      ]),
      body: () => once(bomb),
      bodyBytes: bomb.length,
      inflatedBytes: config.gzipBytes,
    },
    {
      name: 'plain, Content-Length',
      head: post(['Content-Type: application/json', `Content-Length: ${config.plainBytes}`]),
      body: () => paddedJson(config.plainBytes, false),
      bodyBytes: config.plainBytes,
      inflatedBytes: config.plainBytes,
    },
    {
      name: 'plain, chunked, no type',
      head: post(['Transfer-Encoding: chunked']),
      body: () => paddedJson(config.plainBytes, true),
      bodyBytes: config.plainBytes,
      inflatedBytes: config.plainBytes,
    },
  ];
  const results = [];
  // Each body gets a fresh process, so what one leaves behind does not count against the next.
  for (const item of cases) results.push(await withFreshFunction(nodeOptions, fn => measure(fn, item)));

  const rows = results.map(r => ({
    body: r.name,
    'on the wire': size(r.bodyBytes),
    inflated: size(r.inflatedBytes),
    answer: `${r.status} ${r.code}`,
    'sent before answer': size(r.sent),
    'answer in': `${r.ms.toFixed(0)} ms`,
    'idle RSS': mib(r.idle),
    'peak RSS': mib(r.peak),
    'peak / idle': ratio(r.peak / r.idle),
    'peak / target': ratio(r.peak / TARGET_PEAK_BYTES),
    'health after': r.healthAfter,
    target: r.status === 413 && r.peak < TARGET_PEAK_BYTES ? 'PASS' : 'FAIL',
  }));
  console.log(
    `\nimageGen ${config.source.replace(root, '')}, NODE_OPTIONS=${nodeOptions || '(none)'}; ` +
      `target: 413 and peak RSS < ${mib(TARGET_PEAK_BYTES)}\n`,
  );
  console.table(rows);
  if (!results.every(r => r.hwmReset))
    console.log('(VmHWM could not be reset: peaks are the 5 ms samples only)');
  if (rows.some(row => row.target === 'FAIL') && config.strict) process.exitCode = 1;
}

/** Starts the function, warms it, runs `body` against it, and stops it. */
async function withFreshFunction(nodeOptions, body) {
  const dataDir = mkdtempSync(join(os.tmpdir(), 'imagegen-bench-bodies-'));
  const env = {
    PATH: process.env.PATH ?? '',
    NODE_ENV: 'production',
    LOG_LEVEL: 'warn',
    METADATA_SERVER_DETECTION: 'none',
    OPENAI_API_KEY: 'sk-bench-never-used',
    // Nothing may reach OpenAI: a closed port makes any call fail loudly.
    OPENAI_BASE_URL: `http://127.0.0.1:${await freePort()}/v1`,
    UPSTREAM_MAX_RETRIES: '0',
    DATA_DIR: dataDir,
    ...(nodeOptions ? {NODE_OPTIONS: nodeOptions} : {}),
  };
  const fn = spawnFunction({source: config.source, target: 'imageGen', env, port: await freePort()});
  try {
    await pollUntil(() => request(`${fn.url}/health`, {useAgent: false}), {everyMs: 20, isDead: fn.exited});
    // Warm: the first body read loads what reading one takes.
    await request(`${fn.url}/generate`, {method: 'POST', body: '[]', useAgent: false});
    await new Promise(resolveWait => setTimeout(resolveWait, 300));
    return await body(fn);
  } finally {
    await fn.stop();
    rmSync(dataDir, {recursive: true, force: true});
  }
}

main()
  .catch(error => {
    console.error(error);
    process.exitCode = 1;
  })
  .finally(stopAll);
