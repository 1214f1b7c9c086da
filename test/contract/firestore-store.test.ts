import type {Firestore} from '@google-cloud/firestore';
import {describeWithFirestore, firestoreForTests, firestoreStore} from '../support/firestore';
import {metadataStoreContract} from './store-contract';

describeWithFirestore('Firestore (emulator)', () => {
  let db: Firestore;
  beforeAll(() => {
    db = firestoreForTests();
  });
  afterAll(() => db.terminate());

  metadataStoreContract('Firestore', () => firestoreStore(db));
});
