import {randomUUID} from 'node:crypto';
import type {AddressInfo} from 'node:net';
import type {Server} from 'node:http';
import {Writable} from 'node:stream';
import * as functions from '@google-cloud/functions-framework';
import {getTestServer} from '@google-cloud/functions-framework/testing';
import {createImageGenHandler} from '../../src/index';
import {startFakeOpenAI, type FakeOpenAI} from './fake-openai';

export interface RunningFunction {
  /** Base URL, e.g. http://127.0.0.1:PORT */
  url: string;
  /** Every log line the function wrote, parsed. */
  logs: Record<string, unknown>[];
  close(): Promise<void>;
}

/**
 * Serves the function through the Functions Framework's own Express server
 * (body parsing, routing, its error handling) on a real port, with the given
 * environment instead of process.env.
 */
export async function startFunction(
  env: Record<string, string | undefined>,
  options: {now?: () => Date} = {},
): Promise<RunningFunction> {
  const logs: Record<string, unknown>[] = [];
  const logDestination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) logs.push(JSON.parse(line));
      done();
    },
  });
  const name = `imageGen_${randomUUID().replace(/-/g, '')}`;
  functions.http(name, createImageGenHandler({LOG_LEVEL: 'info', ...env}, {logDestination, ...options}));
  const server: Server = getTestServer(name);
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve));
  const {port} = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    logs,
    close: () =>
      new Promise<void>(resolve => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export interface JsonResponse<T = any> {
  status: number;
  headers: Headers;
  body: T;
}

export async function postJson<T = any>(
  url: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<JsonResponse<T>> {
  const response = await fetch(url, {
    method: 'POST',
    headers: {'content-type': 'application/json', ...headers},
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return {status: response.status, headers: response.headers, body: (await response.json()) as T};
}

export async function getJson<T = any>(url: string, init: RequestInit = {}): Promise<JsonResponse<T>> {
  const response = await fetch(url, init);
  return {status: response.status, headers: response.headers, body: (await response.json()) as T};
}

/**
 * The usual e2e setup: a fake OpenAI server and the function wired to it,
 * started once for the suite, with the fake's requests and faults reset
 * before each test.
 */
export function useFunctionWithFakeOpenAI(env: () => Record<string, string>): {
  readonly fn: RunningFunction;
  readonly openai: FakeOpenAI;
} {
  let openai: FakeOpenAI | undefined;
  let fn: RunningFunction | undefined;
  beforeAll(async () => {
    openai = await startFakeOpenAI();
    fn = await startFunction({OPENAI_API_KEY: 'sk-test-key', OPENAI_BASE_URL: openai.url, ...env()});
  });
  afterAll(async () => {
    await fn?.close();
    await openai?.close();
  });
  beforeEach(() => openai?.reset());
  return {
    get fn() {
      if (!fn) throw new Error('the function starts in beforeAll');
      return fn;
    },
    get openai() {
      if (!openai) throw new Error('the fake starts in beforeAll');
      return openai;
    },
  };
}
