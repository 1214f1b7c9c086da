import {randomUUID} from 'node:crypto';
import {buffer} from 'node:stream/consumers';
import {AppError} from '../../src/core/errors';
import type {ImageProvider} from '../../src/core/ports';
import type {ImageRecord, JobRecord} from '../../src/core/records';
import type {Requester} from '../../src/core/requester';
import {generateImages} from '../../src/core/usecases/generate';
import {findImageToServe, openImage} from '../../src/core/usecases/images';
import {commandFor} from '../support/commands';
import {generateDeps} from '../support/generate-deps';
import {ScriptedProvider} from '../support/scripted-provider';

const carol: Requester = {kind: 'api-key', name: 'carol', admin: false, dailyQuota: null};
const bob: Requester = {kind: 'api-key', name: 'bob', admin: false, dailyQuota: null};
const signed = (image: ImageRecord, jobId: string | null): Requester => ({
  kind: 'signed-url',
  imageId: image.id,
  jobId,
});

/**
 * Carol's generation of two images, one upstream call each, the second held
 * until `release`: `first` resolves with the first image once it is stored
 * and announced, while its job is still running.
 */
function heldGeneration(secondFails = false) {
  const scripted = new ScriptedProvider();
  if (secondFails)
    scripted.script.push({}, {error: new AppError('UPSTREAM_ERROR', 'the second call failed')});
  let release!: () => void;
  const held = new Promise<void>(resolve => (release = resolve));
  let calls = 0;
  const provider: ImageProvider = {
    configured: true,
    async generate(request, store, options) {
      if (++calls === 2) await held;
      return scripted.generate(request, store, options);
    },
  };
  const {deps, objects, metadata} = generateDeps(provider);
  const command = commandFor({count: 2});
  command.plan.imagesPerCall = 1;
  let announced!: (image: ImageRecord) => void;
  const first = new Promise<ImageRecord>(resolve => (announced = resolve));
  const jobId = randomUUID();
  const run: Promise<JobRecord> = generateImages(deps, command, {
    jobId,
    owner: 'carol',
    leaseMs: 60_000,
    onEvent: event => {
      if (event.type === 'image.completed') announced(event.image);
    },
  });
  run.catch(() => undefined);
  return {deps, objects, metadata, jobId, first, release, run};
}

const notFound = {code: 'IMAGE_NOT_FOUND'};

describe('findImageToServe', () => {
  test('an image of a running job is served through the job its link names, to whom may see the job', async () => {
    const {deps, objects, metadata, jobId, first, release, run} = heldGeneration();
    const image = await first;
    expect((await metadata.getJob(jobId))?.status).toBe('running');
    expect(await metadata.getImage(image.id)).toBeNull();

    const served = await findImageToServe(deps, carol, image.id, jobId);
    expect(served).toMatchObject({
      id: image.id,
      job_id: jobId,
      index: image.index,
      object_path: image.object_path,
      content_type: image.content_type,
      bytes: image.bytes,
      sha256: image.sha256,
      width: image.width,
      height: image.height,
    });
    expect(await buffer(await openImage(deps, served))).toEqual(objects.objects.get(image.object_path)!.data);
    // A signed URL's job is the one signed with it, not the query's.
    expect((await findImageToServe(deps, signed(image, jobId), image.id, undefined)).id).toBe(image.id);

    // Without its job, another caller, or another job named: as missing as a missing image.
    await expect(findImageToServe(deps, carol, image.id, undefined)).rejects.toMatchObject(notFound);
    await expect(findImageToServe(deps, bob, image.id, jobId)).rejects.toMatchObject(notFound);
    await expect(findImageToServe(deps, carol, image.id, randomUUID())).rejects.toMatchObject(notFound);
    await expect(findImageToServe(deps, signed(image, null), image.id, jobId)).rejects.toMatchObject(
      notFound,
    );
    await expect(findImageToServe(deps, carol, randomUUID(), jobId)).rejects.toMatchObject(notFound);

    release();
    const job = await run;
    const recorded = job.images.find(candidate => candidate.id === image.id)!;
    // Once completed, the record answers, through its job or without it (links signed before jobs were named).
    expect(await findImageToServe(deps, carol, image.id, jobId)).toEqual(recorded);
    expect(await findImageToServe(deps, signed(image, null), image.id, undefined)).toEqual(recorded);
    await expect(findImageToServe(deps, bob, image.id, jobId)).rejects.toMatchObject(notFound);
    await expect(findImageToServe(deps, carol, image.id, randomUUID())).rejects.toMatchObject(notFound);
  });

  test('an image announced by a job that then fails is gone', async () => {
    const {deps, metadata, jobId, first, release, run} = heldGeneration(true);
    const image = await first;
    expect((await findImageToServe(deps, carol, image.id, jobId)).id).toBe(image.id);
    release();
    await expect(run).rejects.toMatchObject({code: 'UPSTREAM_ERROR'});
    expect((await metadata.getJob(jobId))?.status).toBe('failed');
    await expect(findImageToServe(deps, carol, image.id, jobId)).rejects.toMatchObject(notFound);
  });
});
