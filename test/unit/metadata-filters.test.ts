import {createServer, type Server} from 'node:http';
import type {AddressInfo} from 'node:net';
import {createApp} from '../../src/api/app';
import type {AppServices} from '../../src/api/route';
import {loadConfig} from '../../src/config';
import type {MetadataStore} from '../../src/core/ports';
import {createLogger} from '../../src/logger';
import {MemoryMetadataStore, MemoryObjectStore} from '../support/memory-stores';
import {ScriptedProvider} from '../support/scripted-provider';

/** GET /jobs filters the metadata store would refuse (Firestore reserves __name__) never reach it. */
describe('metadata filters are checked before any store is asked', () => {
  const calls: string[] = [];
  let server: Server;
  let url = '';

  beforeAll(async () => {
    const store = new MemoryMetadataStore();
    const metadata = new Proxy(store, {
      get(target, property, receiver) {
        const value: unknown = Reflect.get(target, property, receiver);
        if (typeof value !== 'function') return value;
        return (...args: unknown[]) => {
          calls.push(String(property));
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    }) as MetadataStore;
    const services: AppServices = {
      config: loadConfig({OPENAI_API_KEY: 'sk-test-key', GCS_BUCKET: 'filters-test', URL_MODE: 'proxy'}),
      logger: createLogger('silent'),
      provider: new ScriptedProvider(),
      objects: new MemoryObjectStore(),
      metadata,
      get generator(): never {
        throw new Error('not used');
      },
      reconcile: () => Promise.reject(new Error('not used')),
      now: () => new Date(),
      storeKinds: {storage: 'gcs', metadata: 'firestore'},
    };
    server = createServer(createApp(services));
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise(resolve => server.close(resolve)));
  beforeEach(() => calls.splice(0));

  test.each([
    'metadata.__x__=v',
    'metadata.__name__=v',
    'metadata.__a.b__=v',
    'metadata.=v',
    'metadata.a%2Fb=v',
  ])('GET /jobs?%s is 400 VALIDATION_ERROR without a store call', async query => {
    const response = await fetch(`${url}/jobs?${query}`);
    const body = (await response.json()) as {code: string};
    expect([response.status, body.code]).toEqual([400, 'VALIDATION_ERROR']);
    expect(calls).toEqual([]);
  });

  test('a filter on a key the schema takes reaches the store', async () => {
    const response = await fetch(`${url}/jobs?metadata.__x=v`);
    expect(response.status).toBe(200);
    expect(calls).toEqual(['listJobs']);
  });
});
