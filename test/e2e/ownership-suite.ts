import {createHash, randomUUID} from 'node:crypto';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';
import {startFunction, useFunctionWithFakeOpenAI, type RunningFunction} from '../support/function-server';
import {OpenApiValidator} from '../support/openapi-validator';

const CAROL = 'carol-key-0123456789abcdef';
const BOB = 'bob-key-0123456789abcdef00';
const ROOT = 'root-key-0123456789abcdef0';

export interface OwnershipBackend {
  /** Environment selecting the stores under test. */
  env(): Record<string, string>;
  /** The owner the store recorded for a job, read from the store itself. */
  storedOwner(jobId: string): Promise<string | null | undefined>;
}

interface Answer {
  status: number;
  headers: Headers;
  body: any;
}

/** A JWT as Cloud Run passes it on after checking it: only its claims matter to the function. */
function idToken(claims: Record<string, unknown>): string {
  const part = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({alg: 'RS256', typ: 'JWT'})}.${part(claims)}.${Buffer.from('not checked here').toString('base64url')}`;
}

/**
 * Each job, image and key belongs to the API key that made it; over real
 * HTTP, against the given stores. Another caller's job is exactly as not
 * found as a missing one; an admin key sees everything.
 */
export function ownershipSuite(name: string, backend: OwnershipBackend): void {
  describe(`ownership: ${name}`, () => {
    const validator = new OpenApiValidator();
    let openai: FakeOpenAI;
    let fn: RunningFunction;
    /** The function's clock runs this far ahead of the real one (signed URLs expire by it). */
    let clockAheadMs = 0;

    beforeAll(async () => {
      openai = await startFakeOpenAI();
      fn = await startFunction(
        {
          OPENAI_API_KEY: 'sk-test-key',
          OPENAI_BASE_URL: openai.url,
          API_KEYS: `carol:${CAROL},bob:${BOB},root:${ROOT}:admin`,
          SIGNED_URL_TTL_SECONDS: '120',
          ...backend.env(),
        },
        {now: () => new Date(Date.now() + clockAheadMs)},
      );
    });
    afterAll(async () => {
      await fn.close();
      await openai.close();
    });

    async function call(
      key: string | null,
      method: string,
      path: string,
      init: RequestInit = {},
    ): Promise<Answer> {
      const url = `${fn.url}${path}`;
      const response = await fetch(url, {
        method,
        ...init,
        headers: {...(key ? {'x-api-key': key} : {}), ...(init.headers as Record<string, string>)},
      });
      const text = await response.text();
      const body =
        response.headers.get('content-type')?.startsWith('application/json') && text
          ? JSON.parse(text)
          : text;
      if (method !== 'HEAD') validator.check(method, url.split('?')[0]!, response.status, body);
      return {status: response.status, headers: response.headers, body};
    }

    const generate = (key: string, body: Record<string, unknown>, headers: Record<string, string> = {}) =>
      call(key, 'POST', '/generate', {
        headers: {'content-type': 'application/json', ...headers},
        body: JSON.stringify(body),
      });

    /** What a caller is told about an id: a missing id and another caller's give the same answer. */
    const told = (answer: Answer, id: string) => ({
      status: answer.status,
      code: answer.body?.code,
      error: typeof answer.body?.error === 'string' ? answer.body.error.replace(id, '<id>') : answer.body,
    });

    let carolJob: any;
    beforeAll(async () => {
      const made = await generate(CAROL, {prompt: "carol's lighthouse", count: 2, metadata: {who: 'carol'}});
      expect(made.status).toBe(200);
      carolJob = made.body;
    });

    test('the job records its key as owner', async () => {
      expect(carolJob.owner).toBe('carol');
      expect(await backend.storedOwner(carolJob.job_id)).toBe('carol');
    });

    test("bob cannot list carol's jobs", async () => {
      const mine = await generate(BOB, {prompt: "bob's boat", metadata: {who: 'bob'}});
      const listed = await call(BOB, 'GET', '/jobs?limit=100');
      const ids = listed.body.jobs.map((job: {job_id: string}) => job.job_id);
      expect(ids).toContain(mine.body.job_id);
      expect(ids).not.toContain(carolJob.job_id);
      expect(listed.body.jobs.every((job: {owner: string}) => job.owner === 'bob')).toBe(true);
      const filtered = await call(BOB, 'GET', '/jobs?metadata.who=carol');
      expect(filtered.body).toEqual({jobs: [], next_cursor: null});
    });

    test("every read and delete of carol's job and images is, for bob, a 404 exactly as for a missing id", async () => {
      const missing = randomUUID();
      const image = carolJob.images[0].id;
      const pairs: [string, string, string][] = [
        ['GET', `/jobs/${carolJob.job_id}`, `/jobs/${missing}`],
        ['DELETE', `/jobs/${carolJob.job_id}`, `/jobs/${missing}`],
        ['GET', `/images/${image}`, `/images/${missing}`],
        ['GET', `/images/${image}/url`, `/images/${missing}/url`],
        ['DELETE', `/images/${image}`, `/images/${missing}`],
      ];
      for (const [method, theirs, nobodys] of pairs) {
        const other = await call(BOB, method, theirs);
        const none = await call(BOB, method, nobodys);
        const id = theirs.split('/')[2]!;
        expect([method, theirs, told(other, id)]).toEqual([method, theirs, told(none, missing)]);
        expect(other.status).toBe(404);
      }
      const head = await call(BOB, 'HEAD', `/images/${image}`);
      expect(head.status).toBe(404);
      // Nothing of carol's went.
      const still = await call(CAROL, 'GET', `/jobs/${carolJob.job_id}`);
      expect(still.body.images.map((i: {id: string}) => i.id)).toEqual(
        carolJob.images.map((i: {id: string}) => i.id),
      );
    });

    test("bob replaying carol's Idempotency-Key gets his own job, and a different body no 422", async () => {
      const key = `shared-${randomUUID()}`;
      const body = {prompt: 'the same request', metadata: {case: 'idempotency'}};
      const first = await generate(CAROL, body, {'idempotency-key': key});
      expect(first.status).toBe(200);
      const replay = await generate(CAROL, body, {'idempotency-key': key});
      expect([replay.body.job_id, replay.headers.get('idempotent-replayed')]).toEqual([
        first.body.job_id,
        'true',
      ]);

      const same = await generate(BOB, body, {'idempotency-key': key});
      expect(same.status).toBe(200);
      expect(same.body.job_id).not.toBe(first.body.job_id);
      expect(same.body.owner).toBe('bob');
      expect(same.headers.get('idempotent-replayed')).toBeNull();

      const other = `other-${randomUUID()}`;
      expect((await generate(CAROL, body, {'idempotency-key': other})).status).toBe(200);
      const different = await generate(BOB, {...body, prompt: 'something else'}, {'idempotency-key': other});
      expect([different.status, different.body.owner]).toEqual([200, 'bob']);
    });

    test('the admin sees, reads and lists every job', async () => {
      const bobs = await generate(BOB, {prompt: 'for the admin to see', metadata: {who: 'bob'}});
      const listed = await call(ROOT, 'GET', '/jobs?limit=100');
      const ids = listed.body.jobs.map((job: {job_id: string}) => job.job_id);
      expect(ids).toEqual(expect.arrayContaining([carolJob.job_id, bobs.body.job_id]));
      expect((await call(ROOT, 'GET', `/jobs/${carolJob.job_id}`)).status).toBe(200);
      const image = await call(ROOT, 'GET', `/images/${carolJob.images[0].id}/url`);
      expect(image.status).toBe(200);
    });

    test('a proxy image URL carries its own credential: a plain fetch opens it; tampered or expired is 401', async () => {
      const {url, sha256} = carolJob.images[0];
      const signed = new URL(url);
      expect(signed.pathname).toBe(`/images/${carolJob.images[0].id}`);
      expect(signed.searchParams.get('expires')).toMatch(/^\d+$/);
      expect(signed.searchParams.get('signature')).toMatch(/^[0-9a-f]{64}$/);

      const plain = await fetch(url);
      expect(plain.status).toBe(200);
      expect(
        createHash('sha256')
          .update(Buffer.from(await plain.arrayBuffer()))
          .digest('hex'),
      ).toBe(sha256);

      const flipped = signed.searchParams.get('signature')!.replace(/^./, c => (c === '0' ? '1' : '0'));
      const tampered = new URL(url);
      tampered.searchParams.set('signature', flipped);
      const other = new URL(url);
      other.pathname = `/images/${carolJob.images[1].id}`;
      const later = new URL(url);
      later.searchParams.set('expires', String(Number(signed.searchParams.get('expires')) + 3600));
      const otherJob = new URL(url);
      otherJob.searchParams.set('job', randomUUID());
      for (const forged of [tampered, other, later, otherJob]) {
        const response = await fetch(forged);
        const body = (await response.json()) as {code: string};
        expect([forged.search, response.status, body.code]).toEqual([forged.search, 401, 'UNAUTHENTICATED']);
      }

      clockAheadMs = 121_000;
      try {
        const expired = await fetch(url);
        const body = (await expired.json()) as {code: string; error: string};
        expect([expired.status, body.code]).toEqual([401, 'UNAUTHENTICATED']);
        expect(body.error).toMatch(/expired/);
      } finally {
        clockAheadMs = 0;
      }
      // The signature is a credential: the access log keeps the URL without it.
      const logged = JSON.stringify(fn.logs);
      expect(logged).toContain(`/images/${carolJob.images[0].id}?job=${carolJob.job_id}&expires=`);
      for (const value of [signed.searchParams.get('signature')!, flipped])
        expect(logged).not.toContain(value);
    });
  });

  describe(`ownership behind IAM (no API keys): ${name}`, () => {
    const ctx = useFunctionWithFakeOpenAI(() => backend.env());

    test("the ID token's email is recorded as owner", async () => {
      const {fn} = ctx;
      const response = await fetch(`${fn.url}/generate`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          authorization: `Bearer ${idToken({email: 'dana@example.com', email_verified: true, aud: fn.url})}`,
        },
        body: JSON.stringify({prompt: 'made behind IAM'}),
      });
      const job = (await response.json()) as {job_id: string; owner: string};
      expect([response.status, job.owner]).toEqual([200, 'dana@example.com']);
      expect(await backend.storedOwner(job.job_id)).toBe('dana@example.com');
    });
  });
}
