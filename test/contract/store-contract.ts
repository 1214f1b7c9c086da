import {createHash, randomUUID} from 'node:crypto';
import {text} from 'node:stream/consumers';
import type {IdempotencyRecord, MetadataStore, ObjectStore, QuotaReservation} from '../../src/core/ports';
import type {JobRecord} from '../../src/core/records';
import {finishedJob, runningJob} from '../support/records';

async function readAll(store: ObjectStore, path: string): Promise<Buffer | null> {
  const stream = await store.read(path);
  if (!stream) return null;
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks);
}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** Behaviour every ObjectStore must have; every object store runs it. */
export function objectStoreContract(name: string, create: () => Promise<ObjectStore> | ObjectStore): void {
  describe(`ObjectStore contract: ${name}`, () => {
    let store: ObjectStore;
    let prefix: string;
    beforeEach(async () => {
      store = await create();
      prefix = `images/${randomUUID()}/`;
    });

    const put = (path: string, data: Buffer, contentType = 'image/png') =>
      store.put(path, data, {contentType, metadata: {sha256: sha256(data), job_id: 'j'}});

    test('put then read returns the same bytes; stat tells size, type, metadata and age', async () => {
      const data = Buffer.from(Array.from({length: 4096}, (_, i) => i % 251));
      const before = Date.now();
      await put(`${prefix}000-a.png`, data);
      expect((await readAll(store, `${prefix}000-a.png`))?.equals(data)).toBe(true);
      const info = await store.stat(`${prefix}000-a.png`);
      expect(info).toEqual({
        path: `${prefix}000-a.png`,
        bytes: 4096,
        contentType: 'image/png',
        metadata: expect.objectContaining({sha256: sha256(data), job_id: 'j'}),
        createdAt: expect.any(Date),
      });
      expect(info!.createdAt.getTime()).toBeGreaterThanOrEqual(before - 2000);
      expect(info!.createdAt.getTime()).toBeLessThanOrEqual(Date.now() + 2000);
    });

    test('put never overwrites another object; the same bytes again (a retried write) succeed', async () => {
      await put(`${prefix}x.png`, Buffer.from('first'));
      await expect(put(`${prefix}x.png`, Buffer.from('second'))).rejects.toThrow();
      expect((await readAll(store, `${prefix}x.png`))?.toString()).toBe('first');
      await expect(put(`${prefix}x.png`, Buffer.from('first'))).resolves.toBeUndefined();
    });

    test('missing objects are null, not errors', async () => {
      expect(await store.read(`${prefix}missing.png`)).toBeNull();
      expect(await store.stat(`${prefix}missing.png`)).toBeNull();
    });

    test('delete reports whether there was something to delete', async () => {
      await put(`${prefix}d.png`, Buffer.from('d'));
      expect(await store.delete(`${prefix}d.png`)).toBe(true);
      expect(await store.read(`${prefix}d.png`)).toBeNull();
      expect(await store.stat(`${prefix}d.png`)).toBeNull();
      expect(await store.delete(`${prefix}d.png`)).toBe(false);
    });

    test('list returns the objects under a prefix in lexicographic order, with what stat tells', async () => {
      for (const name of ['002-c.png', '000-a.png', '001-b.jpg'])
        await put(`${prefix}${name}`, Buffer.from(name));
      await put(`images/${randomUUID()}/000-other.png`, Buffer.from('o'));
      const listed = await store.list(prefix);
      expect(listed.map(info => info.path)).toEqual([
        `${prefix}000-a.png`,
        `${prefix}001-b.jpg`,
        `${prefix}002-c.png`,
      ]);
      expect(listed[1]).toEqual(await store.stat(`${prefix}001-b.jpg`));
    });

    test('parallel writes of different objects all land', async () => {
      const names = Array.from({length: 20}, (_, i) => `${prefix}${String(i).padStart(3, '0')}.png`);
      await Promise.all(names.map(n => put(n, Buffer.from(n))));
      expect((await store.list(prefix)).map(info => info.path)).toEqual(names);
      expect(await text((await store.read(names[7]!))!)).toBe(names[7]);
    });
  });
}

/** Behaviour every MetadataStore must have; every metadata store runs it. */
export function metadataStoreContract(
  name: string,
  create: () => Promise<MetadataStore> | MetadataStore,
): void {
  describe(`MetadataStore contract: ${name}`, () => {
    let store: MetadataStore;
    beforeEach(async () => {
      store = await create();
    });

    /** A job written as a run writes it: running first, then completed. */
    async function save(job: JobRecord): Promise<JobRecord> {
      await store.createJob(runningJob(job));
      expect(await store.completeJob(job)).toBe(true);
      return job;
    }

    describe('the life of a job', () => {
      test('a running job reads back whole, with no images', async () => {
        const job = runningJob(finishedJob({metadata: {order: '7'}}));
        await store.createJob(job);
        expect(await store.getJob(job.id)).toEqual(job);
      });

      test('creating a job id twice fails and keeps the first', async () => {
        const job = runningJob(finishedJob());
        await store.createJob(job);
        await expect(store.createJob({...job, prompt: 'changed'})).rejects.toThrow();
        expect((await store.getJob(job.id))?.prompt).toBe('a test prompt');
      });

      test('completing writes the final job and each image, readable by job id and image id', async () => {
        const job = await save(finishedJob({metadata: {order: '7'}}));
        expect(await store.getJob(job.id)).toEqual(job);
        expect(await store.getImage(job.images[1]!.id)).toEqual(job.images[1]);
      });

      test('a job that is not running cannot be completed, and nothing of it is written', async () => {
        const job = await save(finishedJob());
        const again = finishedJob({id: job.id});
        expect(await store.completeJob(again)).toBe(false);
        expect(await store.getJob(job.id)).toEqual(job);
        for (const image of again.images) expect(await store.getImage(image.id)).toBeNull();
        expect(await store.completeJob(finishedJob())).toBe(false);
      });

      test('a running job can be failed once; a failed or finished one cannot', async () => {
        const job = runningJob(finishedJob());
        await store.createJob(job);
        const error = {code: 'UPSTREAM_ERROR' as const, message: 'boom'};
        expect(await store.failJob(job.id, error, '2031-01-01T00:00:00.000Z')).toBe(true);
        expect(await store.getJob(job.id)).toEqual({
          ...job,
          status: 'failed',
          error,
          lease_until: null,
          updated_at: '2031-01-01T00:00:00.000Z',
        });
        expect(await store.failJob(job.id, error, '2031-01-01T00:00:00.000Z')).toBe(false);
        expect(await store.completeJob(finishedJob({id: job.id}))).toBe(false);
        const done = await save(finishedJob());
        expect(await store.failJob(done.id, error, '2031-01-01T00:00:00.000Z')).toBe(false);
        expect(await store.failJob(randomUUID(), error, '2031-01-01T00:00:00.000Z')).toBe(false);
      });

      test('stale jobs are running jobs whose lease has ended, oldest first', async () => {
        const base = Date.parse('2030-06-01T00:00:00.000Z');
        const at = (minutes: number) => new Date(base + minutes * 60_000).toISOString();
        const stale = [2, 1].map(minute => runningJob(finishedJob({created_at: at(minute)}), at(minute + 5)));
        const live = runningJob(finishedJob({created_at: at(3)}), at(60));
        for (const job of [...stale, live]) await store.createJob(job);
        await save(finishedJob({created_at: at(0)}));
        // Other tests' jobs may share the store: look at this test's own.
        const mine = new Set([...stale, live].map(job => job.id));
        const found = await store.listStaleJobs(new Date(base + 30 * 60_000), 1000);
        expect(found.map(job => job.id).filter(id => mine.has(id))).toEqual([stale[1]!.id, stale[0]!.id]);
        expect(await store.listStaleJobs(new Date(base + 30 * 60_000), 1)).toHaveLength(1);
      });

      test('unknown ids read as null', async () => {
        expect(await store.getJob(randomUUID())).toBeNull();
        expect(await store.getImage(randomUUID())).toBeNull();
      });

      test('a job reusing an existing image id is refused whole', async () => {
        const first = await save(finishedJob());
        const second = finishedJob({}, 2);
        second.images[1] = {...first.images[0]!, job_id: second.id};
        await store.createJob(runningJob(second));
        await expect(store.completeJob(second)).rejects.toThrow();
        expect((await store.getJob(second.id))?.status).toBe('running');
        expect(await store.getImage(second.images[0]!.id)).toBeNull();
        expect((await store.getImage(first.images[0]!.id))?.job_id).toBe(first.id);
      });
    });

    test('listJobs pages newest first, each job exactly once, ties broken by id', async () => {
      const tag = randomUUID();
      const base = Date.parse('2030-01-01T00:00:00.000Z');
      const jobs: JobRecord[] = [];
      for (let i = 0; i < 7; i++) {
        // Two jobs share each timestamp, to exercise the tie-break.
        const createdAt = new Date(base + Math.floor(i / 2) * 1000).toISOString();
        jobs.push(finishedJob({created_at: createdAt, metadata: {suite: tag}}, 1));
      }
      await Promise.all(jobs.map(save));
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

    test('listJobs filters by status, owner and metadata', async () => {
      const tag = randomUUID();
      const match = await save(finishedJob({owner: `carol-${tag}`, metadata: {suite: tag, team: 'a'}}, 1));
      await save(finishedJob({owner: `bob-${tag}`, metadata: {suite: tag, team: 'a'}}, 1));
      await save(finishedJob({owner: `carol-${tag}`, metadata: {suite: tag, team: 'b'}}, 1));
      const running = runningJob(finishedJob({owner: `carol-${tag}`, metadata: {suite: tag, team: 'a'}}));
      await store.createJob(running);
      const page = await store.listJobs({
        limit: 10,
        status: 'completed',
        owner: `carol-${tag}`,
        metadata: {key: 'team', value: 'a'},
      });
      expect(page.jobs.map(job => job.id)).toEqual([match.id]);
      const runningPage = await store.listJobs({limit: 10, status: 'running', owner: `carol-${tag}`});
      expect(runningPage.jobs.map(job => job.id)).toEqual([running.id]);
    });

    test('deleteImage removes the record and drops it from its job', async () => {
      const job = await save(finishedJob({}, 2));
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
      const job = await save(finishedJob({}, 3));
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

      test('a finished job makes the key replay it, even after its lease ran out', async () => {
        const key = randomUUID();
        const now = new Date();
        const first = claim(key, now);
        await store.claimIdempotencyKey(...first, now);
        await save(finishedJob({id: first[1].jobId}, 1));
        const later = new Date(now.getTime() + 2 * minute);
        expect(await store.claimIdempotencyKey(...claim(key, later), later)).toEqual({
          outcome: 'completed',
          jobId: first[1].jobId,
        });
      });

      test('a running job keeps its key in progress for its lease', async () => {
        const key = randomUUID();
        const now = new Date();
        const first = claim(key, now);
        await store.claimIdempotencyKey(...first, now);
        await store.createJob(runningJob(finishedJob({id: first[1].jobId})));
        expect(await store.claimIdempotencyKey(...claim(key, now), now)).toMatchObject({
          outcome: 'in_progress',
        });
      });

      test('a failed job frees its key at once, for a new job', async () => {
        const key = randomUUID();
        const now = new Date();
        const first = claim(key, now);
        await store.claimIdempotencyKey(...first, now);
        await store.createJob(runningJob(finishedJob({id: first[1].jobId})));
        await store.failJob(first[1].jobId, {code: 'UPSTREAM_ERROR', message: 'boom'}, now.toISOString());
        const second = claim(key, now);
        expect(await store.claimIdempotencyKey(...second, now)).toEqual({
          outcome: 'claimed',
          jobId: second[1].jobId,
          recovered: true,
        });
      });

      test('a completed key replays even after its job is deleted', async () => {
        const key = randomUUID();
        const now = new Date();
        const first = claim(key, now);
        await store.claimIdempotencyKey(...first, now);
        await save(finishedJob({id: first[1].jobId}, 1));
        await store.completeIdempotencyKey(key, first[1].jobId);
        await store.deleteJob(first[1].jobId);
        expect(await store.claimIdempotencyKey(...claim(key, now), now)).toEqual({
          outcome: 'completed',
          jobId: first[1].jobId,
        });
      });

      test('a run whose lease ran out is taken over, as a new job', async () => {
        const key = randomUUID();
        const now = new Date();
        const first = claim(key, now, {leaseMs: 1000});
        await store.claimIdempotencyKey(...first, now);
        const later = new Date(now.getTime() + 5000);
        const second = claim(key, later);
        expect(await store.claimIdempotencyKey(...second, later)).toEqual({
          outcome: 'claimed',
          jobId: second[1].jobId,
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

    describe('daily quotas', () => {
      const reservation = (subject: string, amount = 1, day = '2030-01-02'): QuotaReservation => ({
        subject,
        day,
        jobId: randomUUID(),
        amount,
        createdAt: '2030-01-02T10:00:00.000Z',
      });

      test('reservations are atomic and never pass the limit', async () => {
        const subject = `caller-${randomUUID().slice(0, 8)}`;
        const results = await Promise.all(
          Array.from({length: 6}, () => store.reserveQuota(reservation(subject), 3)),
        );
        expect(results.filter(r => r.ok)).toHaveLength(3);
        expect(await store.reserveQuota(reservation(subject), 3)).toEqual({ok: false, used: 3});
        expect(await store.reserveQuota(reservation(subject, 5, '2030-01-03'), 5)).toEqual({
          ok: true,
          used: 5,
        });
      });

      test('a reservation is counted once, and given back once, however often it is sent', async () => {
        const subject = `caller-${randomUUID().slice(0, 8)}`;
        const mine = reservation(subject, 2);
        expect(await store.reserveQuota(mine, 3)).toEqual({ok: true, used: 2});
        expect(await store.reserveQuota(mine, 3)).toEqual({ok: true, used: 2});
        await store.releaseQuota(mine);
        await store.releaseQuota(mine);
        expect(await store.reserveQuota(reservation(subject, 3), 3)).toEqual({ok: true, used: 3});
      });

      test('reservations left open are listed by age; a completed job settles its own', async () => {
        const subject = `caller-${randomUUID().slice(0, 8)}`;
        const old = {...reservation(subject), createdAt: '2030-01-02T09:00:00.000Z'};
        const young = {...reservation(subject), createdAt: '2030-01-02T11:00:00.000Z'};
        const settled = {...reservation(subject), createdAt: '2030-01-02T08:00:00.000Z'};
        for (const r of [old, young, settled]) await store.reserveQuota(r, 10);
        await save(finishedJob({id: settled.jobId}, 1));
        const open = await store.listQuotaReservations(new Date('2030-01-02T10:30:00.000Z'), 100);
        const mine = open.filter(r => r.subject === subject);
        expect(mine).toEqual([old]);
        await store.releaseQuota(old);
        expect(
          (await store.listQuotaReservations(new Date('2030-01-02T10:30:00.000Z'), 100)).filter(
            r => r.subject === subject,
          ),
        ).toEqual([]);
        // A settled reservation still counts: its images were made.
        expect(await store.reserveQuota(reservation(subject, 9), 10)).toEqual({ok: false, used: 2});
      });
    });

    test('ping answers', async () => {
      await expect(store.ping()).resolves.toBeUndefined();
    });
  });
}
