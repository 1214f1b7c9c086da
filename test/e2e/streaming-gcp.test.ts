import {randomUUID} from 'node:crypto';
import {startGcsTestServer, type GcsTestServer} from '../support/gcs-server';
import {describeWithFirestore} from '../support/firestore';
import {streamingSuite} from './streaming-suite';

const BUCKET = 'imagegen-e2e-stream';

describeWithFirestore('Cloud Storage + Firestore mode', () => {
  let gcs: GcsTestServer;
  const projectId = `e2e-stream-${randomUUID().slice(0, 8)}`;

  beforeAll(async () => {
    gcs = await startGcsTestServer({buckets: [BUCKET]});
  });
  afterAll(async () => {
    await gcs.close();
  });

  streamingSuite('Cloud Storage + Firestore', {
    env: () => ({
      GCS_BUCKET: BUCKET,
      STORAGE_EMULATOR_HOST: gcs.url,
      GOOGLE_CLOUD_PROJECT: projectId,
      URL_MODE: 'proxy',
    }),
    objectPaths: async () => gcs.listObjectNames(BUCKET),
  });
});
