import {createHash, randomUUID} from 'node:crypto';
import type {Firestore} from '@google-cloud/firestore';
import type {Storage} from '@google-cloud/storage';
import {startFakeOpenAI, type FakeOpenAI, type RecordedMultipartBody} from '../support/fake-openai';
import {describeWithFirestore, firestoreForTests} from '../support/firestore';
import {getJson, postJson, startFunction, type RunningFunction} from '../support/function-server';
import {startGcsTestServer, storageClientFor, type GcsTestServer} from '../support/gcs-server';
import {solidImage} from '../support/images';
import {OpenApiValidator} from '../support/openapi-validator';

const BUCKET = 'imagegen-edits-e2e';
const SOURCES = 'imagegen-edit-sources';
const ELSEWHERE = 'someone-elses-bucket';
const FIFTY_MB = 50 * 1024 * 1024;

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

describeWithFirestore('POST /edits, Cloud Storage + Firestore', () => {
  const validator = new OpenApiValidator();
  const projectId = `edits-${randomUUID().slice(0, 8)}`;
  let gcs: GcsTestServer;
  let storage: Storage;
  let db: Firestore;
  let openai: FakeOpenAI;
  let fn: RunningFunction;

  beforeAll(async () => {
    gcs = await startGcsTestServer({buckets: [BUCKET, SOURCES, ELSEWHERE]});
    storage = storageClientFor(gcs);
    db = firestoreForTests(projectId);
    openai = await startFakeOpenAI();
    fn = await startFunction({
      OPENAI_API_KEY: 'sk-test-key',
      OPENAI_BASE_URL: openai.url,
      UPSTREAM_MAX_RETRIES: '0',
      GCS_BUCKET: BUCKET,
      EDIT_SOURCE_BUCKETS: SOURCES,
      STORAGE_EMULATOR_HOST: gcs.url,
      GOOGLE_CLOUD_PROJECT: projectId,
      URL_MODE: 'proxy',
    });
  });
  afterAll(async () => {
    await fn.close();
    await openai.close();
    await db.terminate();
    await gcs.close();
  });
  beforeEach(() => {
    openai.reset();
    gcs.clearFaults();
  });

  async function edit(body: object | FormData) {
    const url = `${fn.url}/edits`;
    const response =
      body instanceof FormData
        ? await fetch(url, {method: 'POST', body})
        : await fetch(url, {
            method: 'POST',
            body: JSON.stringify(body),
            headers: {'content-type': 'application/json'},
          });
    const json = (await response.json()) as any;
    validator.check('POST', url, response.status, json);
    return {status: response.status, body: json};
  }

  const editCalls = () => openai.requests.filter(r => r.path === '/v1/images/edits');
  const sentFiles = () => (editCalls()[0]!.body as RecordedMultipartBody).files;

  async function put(bucket: string, path: string, data: Buffer): Promise<string> {
    await storage.bucket(bucket).file(path).save(data, {resumable: false});
    return `gs://${bucket}/${path}`;
  }

  /** The job's stored records and objects agree with its answer; each image is served. */
  async function expectStored(job: {job_id: string; images: {id: string; sha256: string}[]}) {
    const record = (await db.collection('jobs').doc(job.job_id).get()).data();
    expect(record).toMatchObject({status: 'completed', source: 'edit'});
    expect(gcs.listObjectNames(BUCKET, `images/${job.job_id}/`)).toHaveLength(job.images.length);
    for (const image of job.images) {
      expect((await db.collection('images').doc(image.id).get()).exists).toBe(true);
      const served = await fetch(`${fn.url}/images/${image.id}`);
      expect(served.status).toBe(200);
      expect(sha256(Buffer.from(await served.arrayBuffer()))).toBe(image.sha256);
    }
    return record!;
  }

  test('an image the function made, edited by its id, is a new stored job served by GET /images/:id', async () => {
    const made = await postJson(`${fn.url}/generate`, {prompt: 'a harbour'});
    const original = made.body.images[0];
    const edited = await edit({prompt: 'add gulls', images: [{image_id: original.id}]});
    expect(edited.status).toBe(200);
    expect(edited.body.source_images).toEqual([
      {role: 'image', image_id: original.id, gcs_uri: null, sha256: original.sha256},
    ]);
    expect(sentFiles()[0]!.sha256).toBe(original.sha256);
    const record = await expectStored(edited.body);
    expect(record.source_images).toEqual(edited.body.source_images);
  });

  test('the same from an upload', async () => {
    const photo = await solidImage('png', 80, 60);
    const form = new FormData();
    form.append('prompt', 'add a kite');
    form.append('image', new Blob([photo], {type: 'image/png'}), 'kite.png');
    const edited = await edit(form);
    expect(edited.status).toBe(200);
    expect(edited.body.source_images[0].sha256).toBe(sha256(photo));
    await expectStored(edited.body);
  });

  test("the same from gs:// objects in the function's bucket and in an EDIT_SOURCE_BUCKETS bucket", async () => {
    const own = await solidImage('png', 64, 64);
    const shared = await solidImage('jpeg', 64, 64);
    const mask = await solidImage('png', 64, 64, {alpha: true});
    const ownUri = await put(BUCKET, 'uploads/own.png', own);
    const sharedUri = await put(SOURCES, 'catalogue/shared.jpg', shared);
    const maskUri = await put(SOURCES, 'catalogue/mask.png', mask);
    const edited = await edit({
      prompt: 'blend them',
      images: [{gcs_uri: ownUri}, {gcs_uri: sharedUri}],
      mask: {gcs_uri: maskUri},
    });
    expect(edited.status).toBe(200);
    expect(edited.body.source_images).toEqual([
      {role: 'image', image_id: null, gcs_uri: ownUri, sha256: sha256(own)},
      {role: 'image', image_id: null, gcs_uri: sharedUri, sha256: sha256(shared)},
      {role: 'mask', image_id: null, gcs_uri: maskUri, sha256: sha256(mask)},
    ]);
    expect(
      sentFiles()
        .map(file => file.sha256)
        .sort(),
    ).toEqual([own, shared, mask].map(sha256).sort());
    await expectStored(edited.body);
  });

  test('a gs:// object elsewhere is 400, a missing one 404, one over 50 MB 400: nothing is paid', async () => {
    const elsewhere = await put(ELSEWHERE, 'a.png', await solidImage('png'));
    const refusedElsewhere = await edit({prompt: 'x', images: [{gcs_uri: elsewhere}]});
    expect([refusedElsewhere.status, refusedElsewhere.body.details.fields]).toEqual([
      400,
      [
        {
          field: 'images[0]',
          message: `bucket '${ELSEWHERE}' is not one this function may read (its own, or EDIT_SOURCE_BUCKETS)`,
        },
      ],
    ]);
    const missing = await edit({prompt: 'x', images: [{gcs_uri: `gs://${SOURCES}/none.png`}]});
    expect([missing.status, missing.body.code]).toEqual([404, 'IMAGE_NOT_FOUND']);

    const png = await solidImage('png');
    const huge = Buffer.concat([png, Buffer.alloc(FIFTY_MB + 1 - png.length)]);
    const ownHuge = await put(BUCKET, 'uploads/huge.png', huge);
    const sharedHuge = await put(SOURCES, 'huge.png', huge);
    const tooLarge = await edit({prompt: 'x', images: [{gcs_uri: ownHuge}, {gcs_uri: sharedHuge}]});
    expect([tooLarge.status, tooLarge.body.details.fields]).toEqual([
      400,
      [
        {field: 'images[0]', message: `is not under the limit of ${FIFTY_MB} bytes`},
        {field: 'images[1]', message: `is not under the limit of ${FIFTY_MB} bytes`},
      ],
    ]);
    expect(editCalls()).toHaveLength(0);
  });

  test('a source that cannot be read is a STORAGE_ERROR before anything is paid', async () => {
    const uri = await put(BUCKET, 'uploads/flaky.png', await solidImage('png'));
    gcs.injectFault({op: 'download', status: 500, objectNameMatches: /flaky/}, {probability: 1});
    const failed = await edit({prompt: 'x', images: [{gcs_uri: uri}]});
    expect([failed.status, failed.body.code]).toEqual([503, 'STORAGE_ERROR']);
    expect(editCalls()).toHaveLength(0);
  });

  test('a storage fault half-way: every object removed, the job recorded failed', async () => {
    const imagesBefore = (await db.collection('images').get()).size;
    gcs.injectFault({op: 'upload', status: 403, objectNameMatches: /^images\/.*\/001-/}, {probability: 1});
    const form = new FormData();
    form.append('prompt', 'three');
    form.append('n', '3');
    form.append('metadata[case]', 'edit-upload-fails');
    form.append('image', new Blob([await solidImage('png')]), 'a.png');
    const failed = await edit(form);
    gcs.clearFaults();
    expect([failed.status, failed.body.code]).toEqual([503, 'STORAGE_ERROR']);
    expect(editCalls()).toHaveLength(1);
    const jobs = await db.collection('jobs').where('metadata.case', '==', 'edit-upload-fails').get();
    expect(jobs.docs.map(doc => doc.data())).toEqual([
      expect.objectContaining({status: 'failed', source: 'edit', images: []}),
    ]);
    expect(gcs.listObjectNames(BUCKET, `images/${jobs.docs[0]!.id}/`)).toEqual([]);
    expect((await db.collection('images').get()).size).toBe(imagesBefore);
  });

  test('an upstream fault: nothing stored, the job recorded failed and listed as a failed edit', async () => {
    openai.injectFault({kind: 'server_error', status: 503});
    const failed = await edit({
      prompt: 'x',
      images: [{b64_json: (await solidImage('png')).toString('base64')}],
      metadata: {case: 'edit-upstream-fails'},
    });
    expect([failed.status, failed.body.code]).toEqual([502, 'UPSTREAM_ERROR']);
    const listed = await getJson(
      `${fn.url}/jobs?source=edit&status=failed&metadata.case=edit-upstream-fails`,
    );
    expect(listed.body.jobs).toEqual([
      expect.objectContaining({
        status: 'failed',
        source: 'edit',
        error: expect.objectContaining({code: 'UPSTREAM_ERROR'}),
      }),
    ]);
    expect(gcs.listObjectNames(BUCKET, `images/${listed.body.jobs[0].job_id}/`)).toEqual([]);
  });
});
