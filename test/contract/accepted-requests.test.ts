import {randomUUID} from 'node:crypto';
import type {Firestore} from '@google-cloud/firestore';
import fc from 'fast-check';
import {HeaderImageCodec} from '../../src/adapters/imaging/image-codec';
import {SqliteMetadataStore} from '../../src/adapters/local/sqlite-metadata-store';
import {ModelCatalogue} from '../../src/core/catalogue';
import {isAppError} from '../../src/core/errors';
import {
  parseEditBody,
  parseGenerateBody,
  planGeneration,
  type GenerateCommand,
} from '../../src/core/generation';
import {MODEL_CATALOGUE} from '../../src/core/models';
import type {MetadataStore} from '../../src/core/ports';
import {resolveEditInputs} from '../../src/core/usecases/edit-inputs';
import {generateImages} from '../../src/core/usecases/generate';
import {describeWithFirestore, firestoreForTests, firestoreStore} from '../support/firestore';
import {MemoryObjectStore} from '../support/memory-stores';
import {ScriptedProvider, tinyPng} from '../support/scripted-provider';
import {useTempDir} from '../support/temp-dir';

const catalogue = new ModelCatalogue();

/** The command the API makes of a body that reached it as JSON, or null when the API refuses the body. */
function accepted(body: unknown, parse = parseGenerateBody): GenerateCommand | null {
  try {
    return planGeneration(parse(JSON.parse(JSON.stringify(body))), {
      catalogue,
      defaultModel: 'gpt-image-2.6-sunburst',
      retiredModels: 'replace',
      day: '2026-12-02',
    });
  } catch (error) {
    if (isAppError(error)) return null;
    throw error;
  }
}

/** Text of every kind a caller may send: any code point, lone surrogates, CJK, emoji sequences. */
const cjk = fc.string({unit: fc.integer({min: 0x4e00, max: 0x9fff}).map(code => String.fromCodePoint(code))});
const anyText = (maxLength: number) =>
  fc.oneof(
    fc.string({maxLength, unit: 'binary'}),
    fc.string({maxLength, unit: 'grapheme'}),
    cjk.map(text => text.slice(0, maxLength)),
  );

/**
 * Metadata keys of every shape the schema takes (dots, dashes, leading or
 * trailing underscores) and some it must not (Firestore's reserved __name__).
 */
const metadataKey = fc.oneof(
  fc.stringMatching(/^[A-Za-z0-9_.-]{1,64}$/),
  fc.constantFrom('.', '..', '-', '_', '__x', 'x__', '__', '___', 'a.b', 'a..b', '__proto', 'id', 'owner'),
  fc.constantFrom('__x__', '__name__', '__a.b__', '___x___'),
);

/** One of a model's allowed values; nothing (the field left out) when it has none. */
const oneOf = <T>(values: readonly T[]): fc.Arbitrary<T | undefined> =>
  values.length > 0 ? fc.constantFrom(...values) : fc.constant(undefined);

/** Bodies the API accepts, for every model, with every optional field the model takes. */
const acceptedBody = fc.constantFrom(...MODEL_CATALOGUE).chain(({id: model, rules}) =>
  fc.record(
    {
      prompt: anyText(400).filter(text => text.trim().length > 0),
      model: fc.constant(model),
      count: fc.integer({min: 1, max: 10}),
      size: oneOf(rules.sizes),
      quality: oneOf(rules.qualities),
      background: oneOf(rules.backgrounds),
      output_format: oneOf(rules.outputFormats),
      moderation: oneOf(rules.moderation ? ['low', 'auto'] : []),
      safety_identifier: anyText(256).filter(text => text.length > 0),
      metadata: fc.dictionary(metadataKey, anyText(512), {maxKeys: 20}),
      allow_partial: fc.boolean(),
      idempotency_key: fc.stringMatching(/^[\x21-\x7e]{1,255}$/),
    },
    {requiredKeys: ['prompt', 'model']},
  ),
);

const OWN_BUCKET = 'own-bucket';
const INPUT_PNG = tinyPng(16, 16, 7).toString('base64');

/**
 * Edit bodies the API accepts, for every model that edits: 1-16 inputs,
 * uploaded or named by gs:// URIs of any text Cloud Storage takes as a name.
 */
const acceptedEditBody = fc
  .constantFrom(...MODEL_CATALOGUE.filter(({rules}) => rules.edits))
  .chain(({id: model}) =>
    fc.record(
      {
        prompt: anyText(400).filter(text => text.trim().length > 0),
        model: fc.constant(model),
        count: fc.integer({min: 1, max: 10}),
        images: fc.array(
          fc.oneof(
            fc.constant({b64_json: INPUT_PNG}),
            anyText(1024)
              // What gs://bucket/path takes as a path; the function's own images/ are read by record.
              .filter(path => /^.{1,1024}$/.test(path) && !path.startsWith('images/'))
              .map(path => ({gcs_uri: `gs://${OWN_BUCKET}/${path}`})),
          ),
          {minLength: 1, maxLength: 16},
        ),
        safety_identifier: anyText(256).filter(text => text.length > 0),
        metadata: fc.dictionary(metadataKey, anyText(512), {maxKeys: 20}),
      },
      {requiredKeys: ['prompt', 'model', 'images']},
    ),
  );

/** Who owns a job: an API key's name, or an IAM caller's email, or nobody. */
const owner = fc.oneof(fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/), fc.emailAddress(), fc.constant(null));

/** A body at every limit at once: the longest prompt, in three-byte characters, ten images, full metadata. */
const LARGEST_BODY = {
  prompt: '山'.repeat(31_999) + '川',
  count: 10,
  model: 'gpt-image-2.6-sunburst',
  safety_identifier: '識'.repeat(256),
  metadata: Object.fromEntries(
    Array.from({length: 20}, (_, i) => [`key-${i}.${'k'.repeat(50)}`, '値'.repeat(512)]),
  ),
};

/**
 * Runs the generate use case for `command` on `store` (createJob, then
 * completeJob) and checks the store gives back exactly what it was given.
 */
async function roundTrip(
  store: MetadataStore,
  command: GenerateCommand,
  jobOwner: string | null,
): Promise<void> {
  const deps = {
    provider: new ScriptedProvider(),
    objects: new MemoryObjectStore(),
    metadata: store,
    codec: new HeaderImageCodec(),
    ownBucket: null,
    sourceBuckets: [],
  };
  const objects = deps.objects;
  let inputs;
  if (command.edit) {
    // The sources the body names exist, as the caller said.
    for (const ref of command.edit.images) {
      if (ref.kind === 'gcs_uri') {
        await objects.put(ref.path, tinyPng(16, 16, 7), {contentType: 'image/png', metadata: {}});
      }
    }
    inputs = await resolveEditInputs(
      {...deps, ownBucket: OWN_BUCKET},
      {kind: 'iam', email: jobOwner},
      command.edit,
    );
  }
  const job = await generateImages(deps, command, {
    jobId: randomUUID(),
    owner: jobOwner,
    leaseMs: 360_000,
    ...(inputs ? {inputs} : {}),
  });
  expect(job.status).toBe('completed');
  expect(job.images).toHaveLength(command.count);
  expect(await store.getJob(job.id)).toEqual(job);
  for (const image of job.images) expect(await store.getImage(image.id)).toEqual(image);
}

function acceptedRequestsSuite(name: string, store: () => MetadataStore, numRuns: number): void {
  describe(`every accepted request makes a job record ${name} takes and gives back as it was`, () => {
    test('generated bodies', async () => {
      let ran = 0;
      await fc.assert(
        fc.asyncProperty(acceptedBody, owner, async (body, jobOwner) => {
          const command = accepted(body);
          fc.pre(command !== null);
          ran++;
          await roundTrip(store(), command!, jobOwner);
        }),
        // Shrinking through a store takes long; the first counterexample says enough.
        {numRuns, seed: 20261201, endOnFailure: true},
      );
      expect(ran).toBe(numRuns);
    }, 120_000);

    test('generated edit bodies', async () => {
      let ran = 0;
      await fc.assert(
        fc.asyncProperty(acceptedEditBody, owner, async (body, jobOwner) => {
          const command = accepted(body, parseEditBody);
          fc.pre(command !== null);
          ran++;
          await roundTrip(store(), command!, jobOwner);
        }),
        {numRuns: Math.ceil(numRuns / 2), seed: 20261201, endOnFailure: true},
      );
      expect(ran).toBe(Math.ceil(numRuns / 2));
    }, 120_000);

    test('the largest edit: sixteen gs:// sources with 1,024-character CJK names, count 10', async () => {
      const images = Array.from({length: 16}, (_, i) => ({
        gcs_uri: `gs://${OWN_BUCKET}/${String(i).padStart(2, '0')}${'画'.repeat(1022)}`,
      }));
      const command = accepted({...LARGEST_BODY, images}, parseEditBody);
      expect(command).not.toBeNull();
      await roundTrip(store(), command!, 'a'.repeat(64));
    });

    test('the largest body: a 32,000-character CJK prompt, count 10, twenty 512-character labels', async () => {
      const command = accepted(LARGEST_BODY);
      expect(command).not.toBeNull();
      await roundTrip(store(), command!, 'a'.repeat(64));
    });
  });
}

const dataDir = useTempDir();
let sqlite: SqliteMetadataStore;
beforeAll(() => {
  sqlite = new SqliteMetadataStore(dataDir());
});
afterAll(() => sqlite.close());
acceptedRequestsSuite('the SQLite store', () => sqlite, 200);

describeWithFirestore('Firestore', () => {
  let db: Firestore;
  beforeAll(() => {
    db = firestoreForTests();
  });
  afterAll(() => db.terminate());
  acceptedRequestsSuite('the Firestore store', () => firestoreStore(db), 100);
});
