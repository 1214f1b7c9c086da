import {DatabaseSync} from 'node:sqlite';
import {join} from 'node:path';
import {DATABASE_FILE} from '../../src/adapters/local/sqlite-metadata-store';
import {describeWithFirestore, useGcpStores} from '../support/firestore';
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
  const stores = useGcpStores('own', ['ownership-e2e']);

  ownershipSuite('Cloud Storage + Firestore', {
    env: stores.env,
    async storedOwner(jobId) {
      const snapshot = await stores.db().collection('jobs').doc(jobId).get();
      return snapshot.exists ? (snapshot.get('owner') as string | null) : undefined;
    },
  });
});
