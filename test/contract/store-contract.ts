import {randomUUID} from 'node:crypto';
import {text} from 'node:stream/consumers';
import type {IdempotencyRecord, MetadataStore, ObjectStore} from '../../src/core/ports';
import type {JobRecord} from '../../src/core/records';
import {makeJob} from '../support/records';

async function readAll(store: ObjectStore, path: string): Promise<Buffer | null> {
  const stream = await store.read(path);
  if (!stream) return null;
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks);
}

/** Behaviour every ObjectStore must have; the local and the Cloud Storage store both run it. */
export function objectStoreContract(name: string, create: () => Promise<ObjectStore> | ObjectStore): void {
  describe(`ObjectStore contract: ${name}`, () => {
    let store: ObjectStore;
    let prefix: string;
    beforeEach(async () => {
      store = await create();
      prefix = `images/${randomUUID()}/`;
    });

    test('put then read returns the same bytes', async () => {
      const data = Buffer.from(Array.from({length: 4096}, (_, i) => i % 251));
      await store.put(`${prefix}000-a.png`, data, {
        contentType: 'image/png',
        metadata: {sha256: 'abc', job_id: 'j'},
      });
      expect((await readAll(store, `${prefix}000-a.png`))?.equals(data)).toBe(true);
    });

    test('put never overwrites an existing object', async () => {
      await store.put(`${prefix}x.png`, Buffer.from('first'), {contentType: 'image/png', metadata: {}});
      await expect(
        store.put(`${prefix}x.png`, Buffer.from('second'), {contentType: 'image/png', metadata: {}}),
      ).rejects.toThrow();
      expect((await readAll(store, `${prefix}x.png`))?.toString()).toBe('first');
    });

    test('missing objects are null, not errors', async () => {
      expect(await store.read(`${prefix}missing.png`)).toBeNull();
    });

    test('delete reports whether there was something to delete', async () => {
      await store.put(`${prefix}d.png`, Buffer.from('d'), {contentType: 'image/png', metadata: {}});
      expect(await store.delete(`${prefix}d.png`)).toBe(true);
      expect(await store.read(`${prefix}d.png`)).toBeNull();
      expect(await store.delete(`${prefix}d.png`)).toBe(false);
    });

    test('list returns the paths under a prefix in lexicographic order', async () => {
      for (const name of ['002-c.png', '000-a.png', '001-b.jpg']) {
        await store.put(`${prefix}${name}`, Buffer.from(name), {contentType: 'image/png', metadata: {}});
      }
      await store.put(`images/${randomUUID()}/000-other.png`, Buffer.from('o'), {
        contentType: 'image/png',
        metadata: {},
      });
      expect(await store.list(prefix)).toEqual([
        `${prefix}000-a.png`,
        `${prefix}001-b.jpg`,
        `${prefix}002-c.png`,
      ]);
    });

    test('parallel writes of different objects all land', async () => {
      const names = Array.from({length: 20}, (_, i) => `${prefix}${String(i).padStart(3, '0')}.png`);
      await Promise.all(
        names.map(n => store.put(n, Buffer.from(n), {contentType: 'image/png', metadata: {}})),
      );
      expect(await store.list(prefix)).toEqual(names);
      expect(await text((await store.read(names[7]!))!)).toBe(names[7]);
    });
  });
}

/** Behaviour every MetadataStore must have; the local and the Firestore store both run it. */
export function metadataStoreContract(
  name: string,
  create: () => Promise<MetadataStore> | MetadataStore,
): void {
  describe(`MetadataStore contract: ${name}`, () => {
    let store: MetadataStore;
    beforeEach(async () => {
      store = await create();
    });

    test('a saved job reads back whole, by job id and by image id', async () => {
      const job = makeJob({metadata: {order: '7'}});
      await store.saveJob(job);
      expect(await store.getJob(job.id)).toEqual(job);
      expect(await store.getImage(job.images[1]!.id)).toEqual(job.images[1]);
    });

    test('unknown ids read as null', async () => {
      expect(await store.getJob(randomUUID())).toBeNull();
      expect(await store.getImage(randomUUID())).toBeNull();
    });

    test('saving a job id twice fails and keeps the first', async () => {
      const job = makeJob();
      await store.saveJob(job);
      await expect(store.saveJob({...job, prompt: 'changed', images: []})).rejects.toThrow();
      expect((await store.getJob(job.id))?.prompt).toBe('a test prompt');
    });

    test('a job reusing an existing image id is refused whole', async () => {
      const first = makeJob();
      await store.saveJob(first);
      const second = makeJob({}, 2);
      second.images[1] = {...first.images[0]!, job_id: second.id};
      await expect(store.saveJob(second)).rejects.toThrow();
      expect(await store.getJob(second.id)).toBeNull();
      expect(await store.getImage(second.images[0]!.id)).toBeNull();
      expect((await store.getImage(first.images[0]!.id))?.job_id).toBe(first.id);
    });

    test('listJobs pages newest first, each job exactly once, ties broken by id', async () => {
      const tag = randomUUID();
      const base = Date.parse('2030-01-01T00:00:00.000Z');
      const jobs: JobRecord[] = [];
      for (let i = 0; i < 7; i++) {
        // Two jobs share each timestamp, to exercise the tie-break.
        const createdAt = new Date(base + Math.floor(i / 2) * 1000).toISOString();
        jobs.push(makeJob({created_at: createdAt, metadata: {suite: tag}}, 1));
      }
      await Promise.all(jobs.map(job => store.saveJob(job)));
      const expected = [...jobs]
        .sort((a, b) =>
          a.created_at === b.created_at ? (a.id < b.id ? 1 : -1) : a.created_at < b.created_at ? 1 : -1,
        )
        .map(job => job.id);
      const seen: string[] = [];
      let after: {createdAt: string; id: string} | undefined;
      for (let page = 0; page < 10; page++) {
        const result = await store.listJobs({
          limit: 3,
          metadata: {key: 'suite', value: tag},
          ...(after ? {after} : {}),
        });
        seen.push(...result.jobs.map(job => job.id));
        if (!result.next) break;
        after = result.next;
      }
      expect(seen).toEqual(expected);
    });

    test('listJobs filters by status and metadata', async () => {
      const tag = randomUUID();
      const match = makeJob({metadata: {suite: tag, team: 'a'}}, 1);
      await store.saveJob(match);
      await store.saveJob(makeJob({metadata: {suite: tag, team: 'b'}}, 1));
      const page = await store.listJobs({
        limit: 10,
        status: 'completed',
        metadata: {key: 'team', value: 'a'},
      });
      expect(page.jobs.map(job => job.id)).toContain(match.id);
      expect(page.jobs.every(job => job.metadata.team === 'a')).toBe(true);
    });

    test('deleteImage removes the record and drops it from its job', async () => {
      const job = makeJob({}, 2);
      await store.saveJob(job);
      const [first, second] = job.images;
      const updatedAt = new Date(Date.parse(job.created_at) + 1000).toISOString();
      expect(await store.deleteImage(first!.id, updatedAt)).toEqual(first);
      expect(await store.getImage(first!.id)).toBeNull();
      const after = await store.getJob(job.id);
      expect(after?.images).toEqual([second]);
      expect(after?.updated_at).toBe(updatedAt);
      expect(await store.deleteImage(first!.id, updatedAt)).toBeNull();
    });

    test('deleteJob removes the job and every image record', async () => {
      const job = makeJob({}, 3);
      await store.saveJob(job);
      expect((await store.deleteJob(job.id))?.id).toBe(job.id);
      expect(await store.getJob(job.id)).toBeNull();
      for (const image of job.images) expect(await store.getImage(image.id)).toBeNull();
      expect(await store.deleteJob(job.id)).toBeNull();
    });

    describe('idempotency keys', () => {
      const minute = 60_000;
      const claim = (
        keyHash: string,
        now: Date,
        overrides: Partial<{fingerprint: string; jobId: string; leaseMs: number}> = {},
      ): [string, IdempotencyRecord] => [
        keyHash,
        {
          fingerprint: overrides.fingerprint ?? 'f1',
          jobId: overrides.jobId ?? randomUUID(),
          leaseUntil: new Date(now.getTime() + (overrides.leaseMs ?? minute)),
          expiresAt: new Date(now.getTime() + 60 * minute),
          completed: false,
        },
      ];

      test('the first claim wins; a duplicate sees it in progress; another fingerprint is a mismatch', async () => {
        const key = randomUUID();
        const now = new Date();
        const first = claim(key, now);
        expect(await store.claimIdempotencyKey(...first, now)).toEqual({
          outcome: 'claimed',
          jobId: first[1].jobId,
          recovered: false,
        });
        expect(await store.claimIdempotencyKey(...claim(key, now), now)).toEqual({
          outcome: 'in_progress',
          leaseUntil: first[1].leaseUntil,
        });
        expect(await store.claimIdempotencyKey(...claim(key, now, {fingerprint: 'f2'}), now)).toEqual({
          outcome: 'mismatch',
        });
      });

      test('concurrent claims of one key: exactly one wins', async () => {
        const key = randomUUID();
        const now = new Date();
        const results = await Promise.all(
          Array.from({length: 8}, () => store.claimIdempotencyKey(...claim(key, now), now)),
        );
        expect(results.filter(r => r.outcome === 'claimed')).toHaveLength(1);
        expect(results.filter(r => r.outcome === 'in_progress')).toHaveLength(7);
      });

      test('a saved job makes the key replay it, even after its lease ran out', async () => {
        const key = randomUUID();
        const now = new Date();
        const first = claim(key, now);
        await store.claimIdempotencyKey(...first, now);
        await store.saveJob(makeJob({id: first[1].jobId}, 1));
        const later = new Date(now.getTime() + 2 * minute);
        expect(await store.claimIdempotencyKey(...claim(key, later), later)).toEqual({
          outcome: 'completed',
          jobId: first[1].jobId,
        });
      });

      test('a completed key replays even after its job is deleted', async () => {
        const key = randomUUID();
        const now = new Date();
        const first = claim(key, now);
        await store.claimIdempotencyKey(...first, now);
        await store.saveJob(makeJob({id: first[1].jobId}, 1));
        await store.completeIdempotencyKey(key, first[1].jobId);
        await store.deleteJob(first[1].jobId);
        expect(await store.claimIdempotencyKey(...claim(key, now), now)).toEqual({
          outcome: 'completed',
          jobId: first[1].jobId,
        });
      });

      test('a run whose lease ran out is taken over under the same job id', async () => {
        const key = randomUUID();
        const now = new Date();
        const first = claim(key, now, {leaseMs: 1000});
        await store.claimIdempotencyKey(...first, now);
        const later = new Date(now.getTime() + 5000);
        expect(await store.claimIdempotencyKey(...claim(key, later), later)).toEqual({
          outcome: 'claimed',
          jobId: first[1].jobId,
          recovered: true,
        });
        expect(await store.claimIdempotencyKey(...claim(key, later), later)).toMatchObject({
          outcome: 'in_progress',
        });
      });

      test('a released key can be claimed again; an expired key is forgotten', async () => {
        const key = randomUUID();
        const now = new Date();
        const first = claim(key, now);
        await store.claimIdempotencyKey(...first, now);
        await store.releaseIdempotencyKey(key, first[1].jobId);
        const second = claim(key, now, {fingerprint: 'other'});
        expect(await store.claimIdempotencyKey(...second, now)).toEqual({
          outcome: 'claimed',
          jobId: second[1].jobId,
          recovered: false,
        });
        const muchLater = new Date(now.getTime() + 120 * minute);
        const third = claim(key, muchLater, {fingerprint: 'third'});
        expect(await store.claimIdempotencyKey(...third, muchLater)).toEqual({
          outcome: 'claimed',
          jobId: third[1].jobId,
          recovered: false,
        });
      });
    });

    test('quota reservations are atomic and never pass the limit', async () => {
      const subject = `caller-${randomUUID().slice(0, 8)}`;
      const results = await Promise.all(
        Array.from({length: 6}, () => store.reserveQuota(subject, '2030-01-02', 1, 3)),
      );
      expect(results.filter(r => r.ok)).toHaveLength(3);
      expect(await store.reserveQuota(subject, '2030-01-02', 1, 3)).toEqual({ok: false, used: 3});
      await store.releaseQuota(subject, '2030-01-02', 2);
      expect(await store.reserveQuota(subject, '2030-01-02', 2, 3)).toEqual({ok: true, used: 3});
      expect(await store.reserveQuota(subject, '2030-01-03', 5, 5)).toEqual({ok: true, used: 5});
    });

    test('ping answers', async () => {
      await expect(store.ping()).resolves.toBeUndefined();
    });
  });
}
