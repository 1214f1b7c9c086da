import {randomUUID} from 'node:crypto';
import {DatabaseSync} from 'node:sqlite';
import {join} from 'node:path';
import type {Firestore} from '@google-cloud/firestore';
import {DATABASE_FILE} from '../../src/adapters/local/sqlite-metadata-store';
import {describeWithFirestore, firestoreForTests} from '../support/firestore';
import {startGcsTestServer, type GcsTestServer} from '../support/gcs-server';
import {useTempDir} from '../support/temp-dir';
import {ownershipSuite} from './ownership-suite';

const dataDir = useTempDir();

ownershipSuite('local store', {
  env: () => ({DATA_DIR: dataDir()}),
  async storedOwner(jobId) {
    const db = new DatabaseSync(join(dataDir(), DATABASE_FILE), {readOnly: true});
    try {
      const row = db.prepare('SELECT record FROM jobs WHERE id = ?').get(jobId) as
        {record: string} | undefined;
      return row ? (JSON.parse(row.record) as {owner: string | null}).owner : undefined;
    } finally {
      db.close();
    }
  },
});

describeWithFirestore('Cloud Storage + Firestore', () => {
  const bucket = 'ownership-e2e';
  const projectId = `own-${randomUUID().slice(0, 8)}`;
  let gcs: GcsTestServer;
  let db: Firestore;
  beforeAll(async () => {
    gcs = await startGcsTestServer({buckets: [bucket]});
    db = firestoreForTests(projectId);
  });
  afterAll(async () => {
    await db.terminate();
    await gcs.close();
  });

  ownershipSuite('Cloud Storage + Firestore', {
    env: () => ({
      GCS_BUCKET: bucket,
      STORAGE_EMULATOR_HOST: gcs.url,
      GOOGLE_CLOUD_PROJECT: projectId,
      URL_MODE: 'proxy',
    }),
    async storedOwner(jobId) {
      const snapshot = await db.collection('jobs').doc(jobId).get();
      return snapshot.exists ? (snapshot.get('owner') as string | null) : undefined;
    },
  });
});
