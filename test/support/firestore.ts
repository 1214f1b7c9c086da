import {randomUUID} from 'node:crypto';
import {FieldPath, Firestore} from '@google-cloud/firestore';
import {FirestoreMetadataStore} from '../../src/adapters/firestore/metadata-store';
import {startGcsTestServer, type GcsTestServer} from './gcs-server';

/** Firestore suites need the emulator; test/run.mjs starts one and sets this. */
export const firestoreEmulatorHost = process.env.FIRESTORE_EMULATOR_HOST;

/** `describe` when the emulator is there, `describe.skip` (loudly) when it is not. */
export const describeWithFirestore: jest.Describe = firestoreEmulatorHost
  ? describe
  : (() => {
      console.warn('FIRESTORE_EMULATOR_HOST is not set: skipping Firestore suites (run `npm test`)');
      return describe.skip;
    })();

/**
 * A client on its own emulator project, so suites running in parallel never
 * see each other's documents.
 */
export function firestoreForTests(projectId = `test-${randomUUID().slice(0, 8)}`): Firestore {
  return new Firestore({projectId, ignoreUndefinedProperties: true});
}

export function firestoreStore(db: Firestore): FirestoreMetadataStore {
  return new FirestoreMetadataStore(db, FieldPath);
}

/**
 * A Cloud Storage test server and an emulator project of their own for one
 * describe block: started before its tests, closed after them.
 */
export function useGcpStores(prefix: string, buckets: [string, ...string[]]) {
  const projectId = `${prefix}-${randomUUID().slice(0, 8)}`;
  let gcs: GcsTestServer | undefined;
  let db: Firestore | undefined;
  beforeAll(async () => {
    gcs = await startGcsTestServer({buckets});
    db = firestoreForTests(projectId);
  });
  afterAll(async () => {
    await db?.terminate();
    await gcs?.close();
  });
  return {
    projectId,
    gcs: () => gcs!,
    db: () => db!,
    /** The function's environment on these stores, with proxy image URLs. */
    env: (): Record<string, string> => ({
      GCS_BUCKET: buckets[0],
      STORAGE_EMULATOR_HOST: gcs!.url,
      GOOGLE_CLOUD_PROJECT: projectId,
      URL_MODE: 'proxy',
    }),
  };
}
