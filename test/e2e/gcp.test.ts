import {createHash} from 'node:crypto';
import {startFakeOpenAI} from '../support/fake-openai';
import {describeWithFirestore, useGcpStores} from '../support/firestore';
import {getJson, postJson, startFunction, useFunctionWithFakeOpenAI} from '../support/function-server';
import {resourceSuite} from './resources-suite';

const BUCKET = 'imagegen-e2e';

describeWithFirestore('Cloud Storage + Firestore mode', () => {
  const stores = useGcpStores('e2e', [BUCKET]);
  const gcpEnv = (extra: Record<string, string> = {}) => ({...stores.env(), ...extra});

  describe('generate', () => {
    const ctx = useFunctionWithFakeOpenAI(() => ({UPSTREAM_MAX_RETRIES: '0', ...gcpEnv()}));
    beforeEach(() => stores.gcs().clearFaults());

    test('the legacy payload stores the object and both records', async () => {
      const {status, body} = await postJson(`${ctx.fn.url}/`, {
        input: {body: {prompt_image: 'Image of a sunset over mountains'}},
      });
      expect(status).toBe(200);
      const image = body.images[0];
      const objectPath = `images/${body.job_id}/000-${image.id}.png`;
      expect(image.gcs_uri).toBe(`gs://${BUCKET}/${objectPath}`);
      const object = stores.gcs().getObject(BUCKET, objectPath);
      expect(object?.contentType).toBe('image/png');
      // Enough to rebuild the image record from the object alone (the reconciler does).
      expect(object?.metadata).toEqual({
        sha256: image.sha256,
        job_id: body.job_id,
        image_id: image.id,
        index: '0',
        model: 'gpt-image-2.6-sunburst',
        width: '1024',
        height: '1024',
      });
      expect(createHash('sha256').update(object!.data).digest('hex')).toBe(image.sha256);

      const job = (await stores.db().collection('jobs').doc(body.job_id).get()).data();
      expect(job).toMatchObject({
        id: body.job_id,
        status: 'completed',
        prompt: 'Image of a sunset over mountains',
        source: 'legacy',
      });
      expect(job?.images[0].object_path).toBe(objectPath);
      const record = (await stores.db().collection('images').doc(image.id).get()).data();
      expect(record).toMatchObject({
        id: image.id,
        job_id: body.job_id,
        sha256: image.sha256,
        object_path: objectPath,
      });

      const served = await fetch(body.image_url);
      expect(
        createHash('sha256')
          .update(Buffer.from(await served.arrayBuffer()))
          .digest('hex'),
      ).toBe(image.sha256);
    });

    test('ready reports Cloud Storage and Firestore', async () => {
      const {status, body} = await getJson(`${ctx.fn.url}/ready`);
      expect(status).toBe(200);
      expect([body.storage, body.metadata]).toEqual([
        {kind: 'gcs', ok: true},
        {kind: 'firestore', ok: true},
      ]);
    });

    test('a storage failure on one image fails the job: every object removed, the job recorded failed', async () => {
      const before = stores.gcs().listObjectNames(BUCKET).length;
      const imagesBefore = (await stores.db().collection('images').get()).size;
      stores.gcs().injectFault({op: 'upload', status: 403, objectNameMatches: /\/001-/}, {probability: 1});
      const {status, body} = await postJson(`${ctx.fn.url}/generate`, {
        prompt: 'three',
        count: 3,
        metadata: {case: 'upload-fails'},
      });
      stores.gcs().clearFaults();
      expect([status, body.code]).toEqual([503, 'STORAGE_ERROR']);
      expect(stores.gcs().listObjectNames(BUCKET)).toHaveLength(before);
      expect((await stores.db().collection('images').get()).size).toBe(imagesBefore);
      const jobs = await stores.db().collection('jobs').where('metadata.case', '==', 'upload-fails').get();
      expect(jobs.docs.map(doc => doc.data())).toEqual([
        expect.objectContaining({
          status: 'failed',
          images: [],
          error: {code: 'STORAGE_ERROR', message: body.error},
        }),
      ]);
    });

    test('with allow_partial a failed call is reported and the rest is kept', async () => {
      ctx.openai.injectFault({kind: 'content_policy'});
      const {status, body} = await postJson(`${ctx.fn.url}/generate`, {
        prompt: 'parts',
        count: 3,
        output_format: 'svg',
        allow_partial: true,
      });
      expect(status).toBe(200);
      expect(body.status).toBe('partial');
      expect(body.images).toHaveLength(2);
      expect(body.failures).toEqual([
        {
          first_index: expect.any(Number),
          count: 1,
          code: 'CONTENT_POLICY_VIOLATION',
          error: expect.any(String),
        },
      ]);
      const names = stores.gcs().listObjectNames(BUCKET, `images/${body.job_id}/`);
      expect(names).toHaveLength(2);
      const failedIndex = body.failures[0].first_index;
      expect(names.some(name => name.includes(`/00${failedIndex}-`))).toBe(false);
    });

    test('a delete that fails half-way leaves every listed image whole, and a retry finishes it', async () => {
      const {body} = await postJson(`${ctx.fn.url}/generate`, {
        prompt: 'delete under faults',
        count: 3,
      });
      const jobId = body.job_id;
      // The second image's object cannot be deleted.
      stores.gcs().injectFault({op: 'delete', status: 403, objectNameMatches: /\/001-/}, {probability: 1});
      const failed = await fetch(`${ctx.fn.url}/jobs/${jobId}`, {method: 'DELETE'});
      expect(failed.status).toBe(503);
      stores.gcs().clearFaults();
      const after = await getJson(`${ctx.fn.url}/jobs/${jobId}`);
      const listed: {id: string}[] = after.body.images;
      const objects = stores.gcs().listObjectNames(BUCKET, `images/${jobId}/`);
      // Every listed image has its object, and every object is listed: nothing half-deleted.
      const objectIds = objects.map(name => /\/\d{3}-(.+)\.png$/.exec(name)![1]);
      expect(listed.map(image => image.id).sort()).toEqual(objectIds.sort());
      expect(listed.length).toBe(2);
      for (const image of listed)
        expect((await stores.db().collection('images').doc(image.id).get()).exists).toBe(true);
      expect((await stores.db().collection('images').doc(body.images[0].id).get()).exists).toBe(false);

      const retried = await fetch(`${ctx.fn.url}/jobs/${jobId}`, {method: 'DELETE'});
      expect(retried.status).toBe(200);
      expect(stores.gcs().listObjectNames(BUCKET, `images/${jobId}/`)).toEqual([]);
      expect((await stores.db().collection('jobs').doc(jobId).get()).exists).toBe(false);
    });

    test('an image whose object cannot be deleted keeps its record', async () => {
      const {body} = await postJson(`${ctx.fn.url}/generate`, {
        prompt: 'keep me',
      });
      const image = body.images[0];
      stores.gcs().injectFault({op: 'delete', status: 503}, {probability: 1});
      const failed = await fetch(`${ctx.fn.url}/images/${image.id}`, {method: 'DELETE'});
      stores.gcs().clearFaults();
      expect(failed.status).toBe(503);
      expect((await fetch(`${ctx.fn.url}/images/${image.id}`)).status).toBe(200);
      expect((await fetch(`${ctx.fn.url}/images/${image.id}`, {method: 'DELETE'})).status).toBe(200);
      expect(stores.gcs().listObjectNames(BUCKET, `images/${body.job_id}/`)).toEqual([]);
    });

    test('an unreachable bucket makes ready say so; health stays 200', async () => {
      const broken = await startFunction({
        OPENAI_API_KEY: 'sk-test-key',
        ...gcpEnv({GCS_BUCKET: 'no-such-bucket'}),
      });
      try {
        stores.gcs().injectFault({op: 'list', status: 500}, {probability: 1});
        const {status, body} = await getJson(`${broken.url}/ready`);
        expect(status).toBe(503);
        expect(body).toMatchObject({
          status: 'unavailable',
          storage: {kind: 'gcs', ok: false},
          metadata: {ok: true},
        });
        // Liveness does not depend on a store: the instance itself is fine.
        expect((await getJson(`${broken.url}/health`)).body).toMatchObject({
          status: 'healthy',
          storage: {kind: 'gcs'},
        });
      } finally {
        stores.gcs().clearFaults();
        await broken.close();
      }
    });
  });

  test.each([
    [{}, `https://storage.googleapis.com/${BUCKET}/`],
    [{PUBLIC_BASE_URL: 'https://cdn.example.com/img/'}, 'https://cdn.example.com/img/'],
  ])('URL_MODE=public with %j gives object URLs under %s', async (extra, base) => {
    const openai = await startFakeOpenAI();
    const fn = await startFunction({
      OPENAI_API_KEY: 'sk-test-key',
      OPENAI_BASE_URL: openai.url,
      ...gcpEnv({URL_MODE: 'public', ...extra}),
    });
    try {
      const {body} = await postJson(`${fn.url}/generate`, {
        prompt: 'public',
      });
      const image = body.images[0];
      expect(image.url).toBe(`${base}images/${body.job_id}/000-${image.id}.png`);
      expect(image.url_expires_at).toBeNull();
      expect(image.gcs_uri).toBe(`gs://${BUCKET}/images/${body.job_id}/000-${image.id}.png`);
    } finally {
      await fn.close();
      await openai.close();
    }
  });

  resourceSuite('Cloud Storage + Firestore', {
    env: () => gcpEnv(),
    objectPaths: async () => stores.gcs().listObjectNames(BUCKET),
  });
});
