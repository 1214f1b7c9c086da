import {mkdtempSync, rmSync} from 'node:fs';
import {tmpdir} from 'node:os';
import {join} from 'node:path';
import {buildFunction, startFunctionProcess, type FunctionProcess} from '../support/function-process';
import {useFunctionWithFakeOpenAI} from '../support/function-server';
import {chunkFrame, errorOf, rawRequest, type RawResponse} from '../support/raw-http';
import {useTempDir} from '../support/temp-dir';

/** Requests the Functions Framework or Node would answer themselves, and what we answer instead. */
const CASES: [string, number, string, {head: string; body?: string}][] = [
  [
    'a malformed %-escape in the path',
    400,
    'BAD_REQUEST',
    {head: 'GET /jobs/%E0%A4%A HTTP/1.1\r\nHost: localhost'},
  ],
  ['a lone % in the path', 400, 'BAD_REQUEST', {head: 'GET /% HTTP/1.1\r\nHost: localhost'}],
  ['OPTIONS *', 404, 'NOT_FOUND', {head: 'OPTIONS * HTTP/1.1\r\nHost: localhost'}],
  ['/favicon.ico', 404, 'NOT_FOUND', {head: 'GET /favicon.ico HTTP/1.1\r\nHost: localhost'}],
  ['/robots.txt', 404, 'NOT_FOUND', {head: 'GET /robots.txt HTTP/1.1\r\nHost: localhost'}],
  [
    'headers over the size limit',
    431,
    'HEADERS_TOO_LARGE',
    {head: `GET /health HTTP/1.1\r\nHost: localhost\r\nX-Padding: ${'a'.repeat(20 * 1024)}`},
  ],
  [
    'a header line without a colon',
    400,
    'BAD_REQUEST',
    {head: 'GET /health HTTP/1.1\r\nHost: localhost\r\nNo colon here'},
  ],
  ['an unknown method', 400, 'BAD_REQUEST', {head: 'BREW /health HTTP/1.1\r\nHost: localhost'}],
  ['not HTTP at all', 400, 'BAD_REQUEST', {head: 'hello there'}],
  ['an HTTP/1.1 request without Host', 400, 'BAD_REQUEST', {head: 'GET /health HTTP/1.1'}],
  [
    'two Host headers',
    400,
    'BAD_REQUEST',
    {head: 'GET /health HTTP/1.1\r\nHost: localhost\r\nHost: evil.example.com'},
  ],
  [
    'a path that looks like another host',
    404,
    'NOT_FOUND',
    {head: 'GET //evil.example.com/health HTTP/1.1\r\nHost: localhost'},
  ],
  ['CONNECT', 405, 'METHOD_NOT_ALLOWED', {head: 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443'}],
  [
    'a Content-Length that is not a number',
    400,
    'BAD_REQUEST',
    {head: 'POST /generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: ten', body: '{}'},
  ],
  [
    'both Content-Length and chunked',
    400,
    'BAD_REQUEST',
    {
      head: 'POST /generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nTransfer-Encoding: chunked',
      body: '{}',
    },
  ],
  [
    'a chunked body with a bad chunk size',
    400,
    'BAD_REQUEST',
    {
      head: 'POST /generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked',
      body: `${chunkFrame('{"prompt":').toString()}zz\r\nbroken\r\n`,
    },
  ],
];

/** What a response says, and whether it has a trace of Express's page, a stack or a path on the machine. */
function answerOf(response: RawResponse) {
  return {
    ...errorOf(response),
    contentType: response.headers['content-type'],
    leaks: /<html|<pre|\bat [\w.<>]+ \(|\/node_modules\/|\/work\/|\/home\//i.test(response.body),
  };
}

const ours = (status: number, code: string) => ({
  status,
  code,
  contentType: 'application/json; charset=utf-8',
  leaks: false,
});

describe('every answer is our JSON error, whatever the framework or Node would have said', () => {
  const dataDir = useTempDir();
  const ctx = useFunctionWithFakeOpenAI(() => ({DATA_DIR: dataDir(), UPSTREAM_MAX_RETRIES: '0'}));

  test.each(CASES)('%s: %i %s', async (_case, status, code, request) => {
    expect(answerOf(await rawRequest(ctx.fn.url, request))).toMatchObject(ours(status, code));
  });

  test('a request refused before the function is logged with its code', async () => {
    await rawRequest(ctx.fn.url, {head: 'GET /% HTTP/1.1\r\nHost: localhost'});
    expect(ctx.fn.logs).toEqual(
      expect.arrayContaining([
        expect.objectContaining({code: 'BAD_REQUEST', httpRequest: expect.objectContaining({status: 400})}),
      ]),
    );
  });
});

describe('through the Functions Framework CLI, whatever NODE_ENV says', () => {
  const outDir = join(__dirname, '../../.test-results', `dist-protocol-${process.pid}`);
  const dataDir = mkdtempSync(join(tmpdir(), 'imagegen-protocol-'));
  beforeAll(() => buildFunction(outDir), 120_000);
  afterAll(() => {
    rmSync(outDir, {recursive: true, force: true});
    rmSync(dataDir, {recursive: true, force: true});
  });

  describe.each(['development', 'production'])('NODE_ENV=%s', nodeEnv => {
    let fn: FunctionProcess | undefined;
    beforeAll(async () => {
      fn = await startFunctionProcess(outDir, {
        NODE_ENV: nodeEnv,
        OPENAI_API_KEY: 'sk-test-key',
        DATA_DIR: dataDir,
      });
    }, 60_000);
    afterAll(() => fn?.stop());

    test.each(CASES)('%s: %i %s', async (_case, status, code, request) => {
      expect(answerOf(await rawRequest(fn!.url, request))).toMatchObject(ours(status, code));
    });
  });
});
