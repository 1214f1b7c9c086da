import {randomUUID} from 'node:crypto';
import {useFunctionWithFakeOpenAI} from '../support/function-server';
import {OpenApiValidator} from '../support/openapi-validator';

export interface Backend {
  /** Environment selecting the stores under test. */
  env(): Record<string, string>;
  /** Every stored object path. */
  objectPaths(): Promise<string[]>;
}

/**
 * Images and jobs as resources, over real HTTP, checked against the OpenAPI
 * document. Run once per storage backend.
 */
export function resourceSuite(name: string, backend: Backend): void {
  describe(`resources: ${name}`, () => {
    const ctx = useFunctionWithFakeOpenAI(() => backend.env());
    const validator = new OpenApiValidator();

    async function call(
      method: string,
      path: string,
      body?: unknown,
    ): Promise<{status: number; headers: Headers; body: any}> {
      const url = `${ctx.fn.url}${path}`;
      const response = await fetch(url, {
        method,
        ...(body === undefined
          ? {}
          : {headers: {'content-type': 'application/json'}, body: JSON.stringify(body)}),
      });
      const text = await response.text();
      const parsed =
        text && response.headers.get('content-type')?.startsWith('application/json')
          ? JSON.parse(text)
          : text;
      validator.check(method, url, response.status, parsed);
      return {status: response.status, headers: response.headers, body: parsed};
    }

    async function generate(body: Record<string, unknown>) {
      const result = await call('POST', '/generate', body);
      expect(result.status).toBe(200);
      return result.body;
    }

    test('GET /jobs/:id returns the job as generated', async () => {
      const job = await generate({prompt: 'a job to read', count: 2, metadata: {case: 'read'}});
      const read = await call('GET', `/jobs/${job.job_id}`);
      expect(read.status).toBe(200);
      expect(read.body).toMatchObject({
        job_id: job.job_id,
        status: 'completed',
        prompt: 'a job to read',
        metadata: {case: 'read'},
        parameters: {
          count: 2,
          requested_model: 'gpt-image-2.6-sunburst',
          model: 'gpt-image-2.6-sunburst',
          size: '1024x1024',
        },
      });
      expect(read.body.images.map((i: {id: string; sha256: string}) => [i.id, i.sha256])).toEqual(
        job.images.map((i: {id: string; sha256: string}) => [i.id, i.sha256]),
      );
    });

    test.each([randomUUID(), 'not-a-uuid'])('GET /jobs/%s of a missing job is JOB_NOT_FOUND', async id => {
      const {status, body} = await call('GET', `/jobs/${id}`);
      expect([status, body.code]).toEqual([404, 'JOB_NOT_FOUND']);
    });

    test('GET /jobs pages newest first with an opaque cursor, and filters', async () => {
      const tag = randomUUID();
      const made: string[] = [];
      for (let i = 0; i < 5; i++) made.push((await generate({prompt: `page ${i}`, metadata: {tag}})).job_id);
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const query: string = `/jobs?limit=2&metadata.tag=${tag}${cursor ? `&cursor=${cursor}` : ''}`;
        const page = await call('GET', query);
        expect(page.status).toBe(200);
        expect(page.body.jobs.length).toBeLessThanOrEqual(2);
        seen.push(...page.body.jobs.map((job: {job_id: string}) => job.job_id));
        cursor = page.body.next_cursor;
        pages++;
      } while (cursor && pages < 10);
      expect(pages).toBe(3);
      expect(new Set(seen)).toEqual(new Set(made));
      const created = await Promise.all(
        seen.map(async id => (await call('GET', `/jobs/${id}`)).body.created_at as string),
      );
      expect([...created].sort().reverse()).toEqual(created);

      const completed = await call('GET', `/jobs?status=completed&limit=100&metadata.tag=${tag}`);
      expect(completed.body.jobs).toHaveLength(5);
      const none = await call('GET', `/jobs?metadata.tag=${randomUUID()}`);
      expect(none.body).toEqual({jobs: [], next_cursor: null});
    });

    test.each([
      ['limit=0', 'limit'],
      ['limit=101', 'limit'],
      ['limit=ten', 'limit'],
      ['cursor=bogus', 'cursor'],
      ['status=paused', 'status'],
      ['color=red', 'color'],
      ['metadata.a=1&metadata.b=2', 'metadata'],
    ])('GET /jobs?%s is a VALIDATION_ERROR naming %s', async (query, field) => {
      const {status, body} = await call('GET', `/jobs?${query}`);
      expect([status, body.code]).toEqual([400, 'VALIDATION_ERROR']);
      expect(body.error).toMatch(new RegExp(`^${field}`));
    });

    test('DELETE /images/:id removes the object and the record and updates the job', async () => {
      const job = await generate({prompt: 'delete one', count: 2});
      const [first, second] = job.images;
      const before = await backend.objectPaths();
      const deleted = await call('DELETE', `/images/${first.id}`);
      expect(deleted.status).toBe(200);
      expect(deleted.body).toEqual({status: 'deleted', job_id: job.job_id, image_ids: [first.id]});
      const after = await backend.objectPaths();
      expect(before.length - after.length).toBe(1);
      expect(after.some(path => path.includes(first.id))).toBe(false);
      expect((await call('GET', `/images/${first.id}`)).status).toBe(404);
      const again = await call('DELETE', `/images/${first.id}`);
      expect([again.status, again.body.code]).toEqual([404, 'IMAGE_NOT_FOUND']);
      const updated = await call('GET', `/jobs/${job.job_id}`);
      expect(updated.body.images.map((i: {id: string}) => i.id)).toEqual([second.id]);
      expect(updated.body.image_url).toBe(updated.body.images[0].url);
    });

    test('DELETE /jobs/:id removes the job and all its images', async () => {
      const job = await generate({prompt: 'delete all', count: 3});
      const deleted = await call('DELETE', `/jobs/${job.job_id}`);
      expect(deleted.body).toEqual({
        status: 'deleted',
        job_id: job.job_id,
        image_ids: job.images.map((i: {id: string}) => i.id),
      });
      expect((await call('GET', `/jobs/${job.job_id}`)).status).toBe(404);
      for (const image of job.images) expect((await call('GET', `/images/${image.id}`)).status).toBe(404);
      const paths = await backend.objectPaths();
      expect(paths.filter(path => path.includes(job.job_id))).toEqual([]);
      expect((await call('DELETE', `/jobs/${job.job_id}`)).body.code).toBe('JOB_NOT_FOUND');
    });

    test('GET /images/:id/url gives a URL that serves the image', async () => {
      const job = await generate({prompt: 'url please'});
      const {status, body} = await call('GET', `/images/${job.images[0].id}/url`);
      expect(status).toBe(200);
      expect(body.id).toBe(job.images[0].id);
      const served = await fetch(body.url);
      expect(served.status).toBe(200);
      expect(Buffer.from(await served.arrayBuffer()).length).toBe(job.images[0].bytes);
    });

    test('GET /openapi.json is an OpenAPI 3.1 document naming every route and error code', async () => {
      const {status, body} = await call('GET', '/openapi.json');
      expect(status).toBe(200);
      expect(body.openapi).toBe('3.1.0');
      expect(Object.keys(body.paths).sort()).toEqual([
        '/',
        '/edits',
        '/generate',
        '/health',
        '/images/edits',
        '/images/{id}',
        '/images/{id}/url',
        '/jobs',
        '/jobs/{id}',
        '/models',
        '/openapi.json',
        '/ready',
        '/tasks/reconcile',
      ]);
      // Every reference resolves to a named component.
      expect(JSON.stringify(body)).not.toMatch(/__shared|\$defs/);
      expect(Object.keys(body['x-error-codes'])).toEqual(
        expect.arrayContaining([
          'VALIDATION_ERROR',
          'IMAGE_NOT_FOUND',
          'JOB_NOT_FOUND',
          'NOT_FOUND',
          'METHOD_NOT_ALLOWED',
        ]),
      );
    });

    test('GET /models gives each model its status for the day, its replacement and its rules', async () => {
      const {status, body} = await call('GET', '/models');
      expect(status).toBe(200);
      expect(body.default_model).toBe('gpt-image-2.6-sunburst');
      const byId = new Map(body.models.map((model: {id: string}) => [model.id, model]));
      for (const model of body.models as {status: string; shutdown_date: string | null}[]) {
        const expected =
          model.shutdown_date === null
            ? 'active'
            : body.date >= model.shutdown_date
              ? 'retired'
              : 'deprecated';
        expect(model.status).toBe(expected);
      }
      expect(byId.get('dall-e-3')).toMatchObject({
        status: 'retired',
        shutdown_date: '2026-05-12',
        replacement: 'gpt-image-2.5-sunburst',
        rules: {
          sizes: ['1024x1024', '1792x1024', '1024x1792'],
          qualities: ['standard', 'hd'],
          styles: ['vivid', 'natural'],
        },
      });
      expect(byId.get('gpt-image-2.5-flare')).toMatchObject({
        status: 'active',
        replacement: null,
        default: false,
        rules: {
          qualities: ['low', 'medium', 'high', 'xhigh', 'max', 'auto'],
          custom_sizes: {
            multiple: 16,
            max_edge: 3840,
            max_pixels: 8294400,
            min_pixels: 655360,
            max_aspect_ratio: 3,
          },
          output_formats: ['png', 'jpeg', 'webp', 'gif', 'svg'],
          markup: true,
        },
      });
      expect(byId.get('gpt-image-2.6-sunburst')).toMatchObject({default: true, rules: {custom_sizes: null}});
    });

    test('unknown routes and wrong methods are documented errors', async () => {
      const missing = await fetch(`${ctx.fn.url}/jobs/a/b/c`);
      expect([missing.status, ((await missing.json()) as {code: string}).code]).toEqual([404, 'NOT_FOUND']);
      const wrong = await fetch(`${ctx.fn.url}/jobs/${randomUUID()}`, {method: 'POST'});
      expect(wrong.status).toBe(405);
      expect(wrong.headers.get('allow')).toBe('GET, DELETE');
    });

    test('every response in this suite matched the document', () => {
      expect(validator.checked.length).toBeGreaterThan(20);
    });
  });
}
