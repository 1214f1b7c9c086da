import type {DestinationStream} from 'pino';
import type {AppServices} from './api/route';
import {secretValues, type Config} from './config';
import type {ForeignObjects, MetadataStore, ObjectStore} from './core/ports';
import {IdempotentGenerator} from './core/usecases/idempotency';
import {withDeadlines} from './adapters/deadline';
import {FIRESTORE_DEADLINES, FirestoreMetadataStore} from './adapters/firestore/metadata-store';
import {GCS_DEADLINES, GcsForeignObjects, GcsObjectStore} from './adapters/gcs/object-store';
import {HeaderImageCodec} from './adapters/imaging/image-codec';
import {LocalObjectStore} from './adapters/local/object-store';
import {SqliteMetadataStore} from './adapters/local/sqlite-metadata-store';
import {OpenAIImageProvider} from './adapters/openai/provider';
import {createLogger, type Logger} from './logger';
import {reconcile, type ReconcileReport} from './core/usecases/reconcile';

interface Stores {
  objects: ObjectStore;
  metadata: MetadataStore;
  /** Other buckets' objects (edit sources); none in local mode. */
  foreign?: ForeignObjects;
}

/**
 * The composition root: the one place that builds dependencies, once per
 * instance. Cheap parts are built now; the stores (which in GCP mode load the
 * Google Cloud clients) and what depends on them, on first use.
 */
export interface ServiceOptions {
  logDestination?: DestinationStream;
  /** The clock (tests move it across model shutdown dates). */
  now?: () => Date;
}

export function createServices(config: Config, options: ServiceOptions = {}): AppServices {
  const now = options.now ?? (() => new Date());
  let stores: Stores | undefined;
  const getStores = () => (stores ??= createStores(config));
  const codec = new HeaderImageCodec();

  /**
   * Once a generation's request is on the wire, a new instance loads what
   * handling its answer needs and makes one cheap call to each store (what
   * /ready does): the Google Cloud clients, their API descriptions and
   * connections are ready when OpenAI answers, not loaded after.
   */
  const whileWaiting = () => {
    codec.load();
    if (stores) return;
    try {
      const {objects, metadata} = getStores();
      // Failures are left to the requests that use the stores, which report them.
      void Promise.allSettled([objects.list('health-check/'), metadata.ping()]);
    } catch {
      // Not now, then: the request that uses a store reports the error.
    }
  };

  const provider = new OpenAIImageProvider({...config.openai, whileWaiting, secrets: secretValues(config)});
  let generator: IdempotentGenerator | undefined;
  const logger = createLogger(config.log.level, options.logDestination, secretValues(config));

  const runReconciler = async (scope: 'recent' | 'full', limit: number): Promise<ReconcileReport> => {
    const report = await reconcile(
      {...getStores(), now},
      {leaseMs: config.idempotency.leaseMs, limit, scope},
    );
    const {unrepaired, ...repaired} = report;
    const repairs = Object.values(repaired).reduce((sum, list) => sum + list.length, 0);
    const level = unrepaired.length > 0 ? 'error' : repairs > 0 ? 'warn' : 'info';
    logger[level](
      {reconcile: report, repairs, unrepaired: unrepaired.length},
      `reconciler: ${repairs} repairs, ${unrepaired.length} left for the next pass`,
    );
    return report;
  };
  if (config.storage.kind === 'local')
    scheduleLocalReconciler(config, logger, () => runReconciler('recent', 100));

  return {
    config,
    now,
    logger,
    reconcile: ({scope, limit}) => runReconciler(scope, limit),
    provider,
    storeKinds:
      config.storage.kind === 'local'
        ? {storage: 'local', metadata: 'local'}
        : {storage: 'gcs', metadata: 'firestore'},
    get objects() {
      return getStores().objects;
    },
    get metadata() {
      return getStores().metadata;
    },
    get generator() {
      return (generator ??= new IdempotentGenerator(
        {
          provider,
          codec,
          now,
          get objects() {
            return getStores().objects;
          },
          get metadata() {
            return getStores().metadata;
          },
          get foreign() {
            return getStores().foreign;
          },
          ownBucket: config.storage.kind === 'gcp' ? config.storage.bucket : null,
          sourceBuckets: config.editSourceBuckets,
        },
        config.idempotency,
      ));
    },
  };
}

/**
 * Locally nothing else runs the reconciler: it runs once at start and then
 * every RECONCILE_INTERVAL_SECONDS, never holding the process open.
 */
function scheduleLocalReconciler(config: Config, logger: Logger, run: () => Promise<unknown>): void {
  const pass = () => {
    run().catch(error => logger.error({err: error}, 'reconciler pass failed'));
  };
  setImmediate(pass).unref();
  if (config.reconcileIntervalMs > 0) setInterval(pass, config.reconcileIntervalMs).unref();
}

function createStores(config: Config): Stores {
  if (config.storage.kind === 'local') {
    return {
      objects: new LocalObjectStore(config.storage.dataDir),
      metadata: new SqliteMetadataStore(config.storage.dataDir),
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
    objects: withDeadlines<ObjectStore>(
      new GcsObjectStore(storage.bucket(bucket), {
        readBucket: readStorage.bucket(bucket),
        // In public mode PUBLIC_BASE_URL names where objects are served from (a CDN, say).
        ...(config.urls.mode === 'public' && config.publicBaseUrl
          ? {publicBaseUrl: config.publicBaseUrl}
          : {}),
      }),
      config.storageTimeoutMs,
      GCS_DEADLINES,
    ),
    metadata: withDeadlines<MetadataStore>(
      new FirestoreMetadataStore(db, firestore.FieldPath),
      config.metadataTimeoutMs,
      FIRESTORE_DEADLINES,
    ),
    foreign: new GcsForeignObjects(readStorage),
  };
}
