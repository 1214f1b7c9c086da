import {createHash, randomUUID} from 'node:crypto';
import {mkdirSync, writeFileSync} from 'node:fs';
import {join} from 'node:path';
import type {Firestore} from '@google-cloud/firestore';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';
import {startGcsTestServer, type GcsTestServer} from '../support/gcs-server';
import {describeWithFirestore, firestoreForTests} from '../support/firestore';
import {getJson, startFunction, type RunningFunction} from '../support/function-server';

const TOTAL = 500;
const CONCURRENCY = 50;
const BUCKET = 'imagegen-load';

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/**
 * Bounded load on loopback: 500 generations, 50 at a time, with one upstream
 * call in ten failing. Afterwards every answered job must be whole (objects
 * and records, matching hashes) and every failure must have left nothing.
 */
describeWithFirestore('load with upstream faults (Cloud Storage + Firestore)', () => {
  let openai: FakeOpenAI;
  let gcs: GcsTestServer;
  let db: Firestore;
  let fn: RunningFunction;
  const projectId = `load-${randomUUID().slice(0, 8)}`;

  beforeAll(async () => {
    openai = await startFakeOpenAI({latencyMs: 50});
    gcs = await startGcsTestServer({buckets: [BUCKET]});
    db = firestoreForTests(projectId);
    fn = await startFunction({
      OPENAI_API_KEY: 'sk-test-key',
      OPENAI_BASE_URL: openai.url,
      UPSTREAM_MAX_RETRIES: '0',
      GCS_BUCKET: BUCKET,
      STORAGE_EMULATOR_HOST: gcs.url,
      GOOGLE_CLOUD_PROJECT: projectId,
      URL_MODE: 'proxy',
      LOG_LEVEL: 'error',
    });
    openai.injectFault({kind: 'server_error', status: 503}, {probability: 0.05});
    openai.injectFault({kind: 'rate_limit', retryAfterSeconds: 1}, {probability: 0.05});
  });
  afterAll(async () => {
    await fn.close();
    await openai.close();
    await gcs.close();
    await db.terminate();
  });

  test(`${TOTAL} generations at concurrency ${CONCURRENCY}`, async () => {
    const requests = Array.from({length: TOTAL}, (_, i) =>
      i % 5 === 0
        ? // SVG is made one image per call: two parallel calls.
          {prompt: `load ${i}`, output_format: 'svg', count: 2}
        : // Small JPEGs keep 500 requests quick on two cores.
          {prompt: `load ${i}`, output_format: 'jpeg', output_compression: 20, count: 1 + (i % 3)},
    );
    const results: {status: number; ms: number; body: any}[] = [];
    const started = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({length: CONCURRENCY}, async () => {
        while (next < requests.length) {
          const request = requests[next++]!;
          const t0 = performance.now();
          const response = await fetch(`${fn.url}/generate`, {
            method: 'POST',
            headers: {'content-type': 'application/json'},
            body: JSON.stringify(request),
          });
          results.push({status: response.status, ms: performance.now() - t0, body: await response.json()});
        }
      }),
    );
    const elapsedMs = performance.now() - started;

    const ok = results.filter(r => r.status === 200);
    const failed = results.filter(r => r.status !== 200);
    expect(results).toHaveLength(TOTAL);
    expect(failed.every(r => ['UPSTREAM_ERROR', 'RATE_LIMIT_EXCEEDED'].includes(r.body.code))).toBe(true);
    expect(failed.length).toBeGreaterThan(0);

    // Every answered job is whole: each object is there with the recorded hash, and both records exist.
    const imageIds: string[] = [];
    for (const {body} of ok) {
      for (const image of body.images) {
        imageIds.push(image.id);
        const extension = image.content_type === 'image/svg+xml' ? 'svg' : 'jpg';
        const object = gcs.getObject(
          BUCKET,
          `images/${body.job_id}/${String(body.images.indexOf(image)).padStart(3, '0')}-${image.id}.${extension}`,
        );
        expect(object && createHash('sha256').update(object.data).digest('hex')).toBe(image.sha256);
      }
    }
    const jobDocs = await db.collection('jobs').get();
    const imageDocs = await db.collection('images').get();
    // Every request left one job: finished when answered, failed (with no images) when not.
    expect(jobDocs.size).toBe(TOTAL);
    const byStatus = (status: string) => jobDocs.docs.filter(doc => doc.get('status') === status);
    expect(byStatus('completed').length + byStatus('partial').length).toBe(ok.length);
    expect(byStatus('failed').every(doc => doc.get('images').length === 0)).toBe(true);
    expect(byStatus('running')).toHaveLength(0);
    expect(new Set(imageDocs.docs.map(doc => doc.id))).toEqual(new Set(imageIds));
    // Every failure left nothing: no object beyond the answered jobs' images.
    expect(gcs.listObjectNames(BUCKET)).toHaveLength(imageIds.length);

    const ready = await getJson(`${fn.url}/ready`);
    expect(ready.status).toBe(200);

    const latencies = results.map(r => r.ms).sort((a, b) => a - b);
    const figures = {
      requests: TOTAL,
      concurrency: CONCURRENCY,
      completed: ok.length,
      failed: failed.length,
      failed_by_code: failed.reduce<Record<string, number>>(
        (acc, r) => ({...acc, [r.body.code]: (acc[r.body.code] ?? 0) + 1}),
        {},
      ),
      images_stored: imageIds.length,
      elapsed_s: Number((elapsedMs / 1000).toFixed(2)),
      requests_per_s: Number((TOTAL / (elapsedMs / 1000)).toFixed(1)),
      latency_ms: {
        p50: Math.round(percentile(latencies, 50)),
        p95: Math.round(percentile(latencies, 95)),
        p99: Math.round(percentile(latencies, 99)),
      },
    };
    mkdirSync(join(__dirname, '../../.test-results'), {recursive: true});
    writeFileSync(join(__dirname, '../../.test-results/load.json'), `${JSON.stringify(figures, null, 2)}\n`);
    console.log(`load figures: ${JSON.stringify(figures)}`);
  }, 240_000);
});
