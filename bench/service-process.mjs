// Child process that runs one of the project's test servers for the bench, so
// its CPU work (encoding images, base64, hashing uploads) is not charged to the
// function under test or to the bench's own timers.
//
//   node bench/service-process.mjs fake-openai --latency-ms=500
//   node bench/service-process.mjs gcs --bucket=NAME
//
// It talks to the parent over IPC: it sends {type: 'ready', url} once
// listening, then answers {id, cmd, args} messages with {id, result | error}.
//
// The fake OpenAI server is instrumented from outside (its source is not ours
// to change): every request to POST /v1/images/generations is timed from its
// arrival to the moment the last byte of the answer was handed to the socket,
// so the bench can subtract exactly the time the upstream took.
import http from 'node:http';
import {registerTsHooks} from './ts-hooks.mjs';

registerTsHooks();

const kind = process.argv[2];
const flags = Object.fromEntries(
  process.argv.slice(3).map(arg => {
    const [key, value = 'true'] = arg.replace(/^--/, '').split('=');
    return [key, value];
  }),
);

const now = () => performance.timeOrigin + performance.now();

/** Per generation request: arrival, answer flushed, latency applied, status, bytes, `user` tag. */
let timings = [];
/** The running fake, so the hook can read the request it recorded (its parsed body). */
let fakeRef;
let currentLatency = Number(flags['latency-ms'] ?? 0);

function instrumentHttpServers() {
  const originalEmit = http.Server.prototype.emit;
  http.Server.prototype.emit = function emit(event, req, res) {
    if (event === 'request' && req.method === 'POST' && req.url?.startsWith('/v1/images/generations')) {
      const entry = {start: now(), end: 0, latencyMs: currentLatency, status: 0, bytes: 0, user: null};
      // The fake records each request synchronously on arrival: this is its index.
      const index = fakeRef?.requests.length ?? -1;
      res.once('finish', () => {
        entry.end = now();
        entry.status = res.statusCode;
        entry.bytes = Number(res.getHeader('content-length') ?? 0);
        const body = fakeRef?.requests[index]?.body;
        entry.user = typeof body?.user === 'string' ? body.user : null;
        timings.push(entry);
      });
    }
    return originalEmit.apply(this, arguments);
  };
}

async function startFakeOpenAI() {
  instrumentHttpServers();
  const {startFakeOpenAI} = await import('../test/support/fake-openai.ts');
  const fake = await startFakeOpenAI({apiKey: flags['api-key'] ?? 'sk-bench-key', latencyMs: currentLatency});
  fakeRef = fake;
  return {
    url: fake.url,
    commands: {
      setLatency(ms) {
        currentLatency = Number(ms);
        fake.setLatency(currentLatency);
        return currentLatency;
      },
      reset() {
        fake.reset();
        fake.setLatency(currentLatency);
        timings = [];
        return true;
      },
      /** Returns and forgets the timings recorded so far. */
      takeTimings() {
        const taken = timings;
        timings = [];
        return taken;
      },
      requestCount: () => fake.requests.length,
    },
    close: () => fake.close(),
  };
}

async function startGcs() {
  const {startGcsTestServer} = await import('../test/support/gcs-server.ts');
  const server = await startGcsTestServer({buckets: [flags.bucket ?? 'bench-bucket']});
  return {
    url: server.url,
    commands: {
      reset() {
        server.reset();
        return true;
      },
      count: prefix => server.listObjectNames(flags.bucket ?? 'bench-bucket', prefix).length,
      requestCount: () => server.requestCount,
    },
    close: () => server.close(),
  };
}

const service = kind === 'fake-openai' ? await startFakeOpenAI() : kind === 'gcs' ? await startGcs() : null;
if (!service) {
  console.error(`unknown service kind: ${kind}`);
  process.exit(2);
}

process.on('message', async message => {
  const {id, cmd, args = []} = message ?? {};
  try {
    if (cmd === 'close') {
      await service.close();
      process.send({id, result: true}, () => process.exit(0));
      return;
    }
    const command = service.commands[cmd];
    if (!command) throw new Error(`unknown command ${cmd}`);
    process.send({id, result: await command(...args)});
  } catch (error) {
    process.send({id, error: String(error?.stack ?? error)});
  }
});
// The parent going away (crash, Ctrl-C) ends this process too.
process.on('disconnect', () => process.exit(0));
process.send({type: 'ready', url: service.url, pid: process.pid});
