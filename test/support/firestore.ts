import {randomUUID} from 'node:crypto';
import {FieldPath, Firestore} from '@google-cloud/firestore';
import {FirestoreMetadataStore} from '../../src/adapters/firestore/metadata-store';

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
