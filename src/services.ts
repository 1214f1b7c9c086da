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
  /** Built on first use: in GCP mode that loads the Google Cloud clients. */
  readonly images: ImageStore;
  readonly metadata: MetadataStore;
  decodeSlots: Limiter;
  /** What the stores are, known without building them. */
  storeKinds: {storage: string; metadata: string};
  /**
   * Builds the stores now if they are not built yet, and makes one cheap call
   * to each (what /ready does). A generation calls it once its upstream
   * request is on the wire, so a new instance loads the Google Cloud clients,
   * their API descriptions and their connections while OpenAI works, not
   * before the call or after the answer.
   */
  prepareStores(): void;
}

interface Stores {
  images: ImageStore;
  metadata: MetadataStore;
}

/** Chooses the adapters once, from validated config. */
export function createServices(config: Config): Services {
  let stores: Stores | undefined;
  const getStores = () => (stores ??= createStores(config));
  return {
    provider: new OpenAIImageProvider(config.openai),
    decodeSlots: new Limiter(config.maxConcurrentDecodes),
    storeKinds:
      config.storage.kind === 'local'
        ? {storage: LocalImageStore.kind, metadata: LocalMetadataStore.kind}
        : {storage: GcsImageStore.kind, metadata: FirestoreMetadataStore.kind},
    get images() {
      return getStores().images;
    },
    get metadata() {
      return getStores().metadata;
    },
    prepareStores: () => {
      if (stores) return;
      try {
        const {images, metadata} = getStores();
        // Failures are left to the requests that use the stores, which report them.
        void Promise.allSettled([images.list('health-check/'), metadata.ping()]);
      } catch {
        // Not now, then: the request that uses a store reports the error.
      }
    },
  };
}

function createStores(config: Config): Stores {
  if (config.storage.kind === 'local') {
    return {
      images: new LocalImageStore(config.storage.dataDir),
      metadata: new LocalMetadataStore(config.storage.dataDir),
    };
  }
  const {bucket, projectId, firestoreDatabase, storageEndpoint} = config.storage;
  // Required here rather than at the top: local mode never loads them, and
  // GCP mode loads them only when a request needs a store.
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
    images: new GcsImageStore(storage.bucket(bucket), {
      readBucket: readStorage.bucket(bucket),
      // In public mode PUBLIC_BASE_URL names where objects are served from (a CDN, say).
      ...(config.urls.mode === 'public' && config.publicBaseUrl ? {publicBaseUrl: config.publicBaseUrl} : {}),
    }),
    metadata: withDeadlines(new FirestoreMetadataStore(db, firestore.FieldPath), config.metadataTimeoutMs),
  };
}
