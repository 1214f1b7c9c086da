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
// The fake OpenAI server is timed from outside: every request to POST
// /v1/images/generations or /v1/images/edits is timed from its arrival to the
// moment the last byte of the answer was handed to the socket, so the bench can
// subtract exactly the time the upstream took. Each timing is tagged with the
// request's safety_identifier (or, failing that, its user), read from the body
// the fake recorded: the parsed JSON, or the text fields of a multipart edit.
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
const IMAGE_PATHS = new Set(['/v1/images/generations', '/v1/images/edits']);

/**
 * Per image request: path, arrival, answer flushed, latency applied, status,
 * body bytes written, the tag (kept under `user`, the name the bench reads),
 * and the fake's own first-partial and completed times for streams.
 */
let timings = [];
/** The running fake, so the hook can read the request it recorded (its parsed body). */
let fakeRef;
let currentLatency = Number(flags['latency-ms'] ?? 0);
/** Settings the bench made, re-applied after a reset (which restores the fake's options). */
let currentToday = null;
let currentPreviews = {};
let currentPartialInterval = null;

/** The effective end-user tag, as OpenAI picks it: a non-empty safety_identifier, else user. */
function tagOf(recorded) {
  const values = recorded?.bodyKind === 'multipart' ? recorded.body.fields : recorded?.body;
  if (typeof values !== 'object' || values === null) return null;
  for (const key of ['safety_identifier', 'user']) {
    if (typeof values[key] === 'string' && values[key] !== '') return values[key];
  }
  return null;
}

function instrumentHttpServers() {
  const originalEmit = http.Server.prototype.emit;
  http.Server.prototype.emit = function emit(event, req, res) {
    const path = event === 'request' ? req.url?.split('?')[0] : undefined;
    if (req?.method === 'POST' && IMAGE_PATHS.has(path)) {
      const entry = {
        path,
        start: now(),
        end: 0,
        latencyMs: currentLatency,
        status: 0,
        bytes: 0,
        user: null,
        firstPartialAt: null,
        completedAt: null,
      };
      // The fake records each request synchronously on arrival: this is its index.
      const index = fakeRef?.requests.length ?? -1;
      // Streams have no content-length: count the body bytes as they are written.
      for (const method of ['write', 'end']) {
        const original = res[method];
        res[method] = function counted(chunk, ...rest) {
          if (chunk !== undefined && chunk !== null && typeof chunk !== 'function') {
            entry.bytes += typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.length;
          }
          return original.call(this, chunk, ...rest);
        };
      }
      res.once('finish', () => {
        entry.end = now();
        entry.status = res.statusCode;
        const recorded = fakeRef?.requests[index];
        entry.user = tagOf(recorded);
        entry.firstPartialAt = recorded?.firstPartialAt ?? null;
        entry.completedAt = recorded?.completedAt ?? null;
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
      /** Spacing between stream events in ms, or null to split the latency evenly. */
      setPartialInterval(ms) {
        currentPartialInterval = ms === null ? null : Number(ms);
        fake.setPartialInterval(currentPartialInterval);
        return currentPartialInterval;
      },
      /** The day ('YYYY-MM-DD') the model lifecycle is judged on, or null for the real clock. */
      setToday(date) {
        fake.setToday(date);
        currentToday = date;
        return currentToday;
      },
      /** {gif?: boolean, svg?: boolean} */
      setPreviewAccess(access) {
        fake.setPreviewAccess(access);
        currentPreviews = {...currentPreviews, ...access};
        return currentPreviews;
      },
      reset() {
        fake.reset();
        fake.setLatency(currentLatency);
        fake.setPartialInterval(currentPartialInterval);
        fake.setToday(currentToday);
        fake.setPreviewAccess(currentPreviews);
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
