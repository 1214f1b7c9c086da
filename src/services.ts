import type {Config} from './config';
import {OpenAIImageProvider} from './adapters/openai-provider';
import {LocalImageStore} from './adapters/local-image-store';
import {LocalMetadataStore} from './adapters/local-metadata-store';
import {GcsImageStore} from './adapters/gcs-image-store';
import {FirestoreMetadataStore} from './adapters/firestore-metadata-store';
import {withDeadlines} from './adapters/deadline';
import type {ImageProvider, ImageStore, MetadataStore} from './ports';
import {Limiter} from './usecases/limiter';

export interface Services {
  provider: ImageProvider;
  images: ImageStore;
  metadata: MetadataStore;
  decodeSlots: Limiter;
}

/**
 * Chooses the adapters once, from validated config. The Google Cloud clients
 * are loaded only in GCP mode.
 */
export function createServices(config: Config): Services {
  const provider = new OpenAIImageProvider(config.openai);
  const decodeSlots = new Limiter(config.maxConcurrentDecodes);
  if (config.storage.kind === 'local') {
    return {
      provider,
      images: new LocalImageStore(config.storage.dataDir),
      metadata: new LocalMetadataStore(config.storage.dataDir),
      decodeSlots,
    };
  }
  const {bucket, projectId, firestoreDatabase, storageEndpoint} = config.storage;
  // Required here rather than at the top: local mode never pays for loading them.
  const {Storage} = require('@google-cloud/storage') as typeof import('@google-cloud/storage');
  const firestore = require('@google-cloud/firestore') as typeof import('@google-cloud/firestore');
  const storageOptions = {
    ...(projectId ? {projectId} : {}),
    ...(storageEndpoint ? {apiEndpoint: storageEndpoint} : {}),
  };
  const storage = new Storage(storageOptions);
  const readStorage = new Storage({...storageOptions, retryOptions: {autoRetry: false}});
  const db = new firestore.Firestore({
    ...(projectId ? {projectId} : {}),
    databaseId: firestoreDatabase,
    ignoreUndefinedProperties: true,
  });
  return {
    provider,
    images: new GcsImageStore(storage.bucket(bucket), {
      readBucket: readStorage.bucket(bucket),
      // In public mode PUBLIC_BASE_URL names where objects are served from (a CDN, say).
      ...(config.urls.mode === 'public' && config.publicBaseUrl ? {publicBaseUrl: config.publicBaseUrl} : {}),
    }),
    metadata: withDeadlines(new FirestoreMetadataStore(db, firestore.FieldPath), config.metadataTimeoutMs),
    decodeSlots,
  };
}
