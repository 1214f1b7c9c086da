import {z} from 'zod';
import {METADATA_KEY_FORMAT} from '../../core/generation';
import {JOB_STATUSES} from '../../core/records';
import {deleteJob, findJob, listJobs} from '../../core/usecases/jobs';
import {sendJson} from '../responses';
import {defineRoute} from '../route';
import {DeletedSchema, JobListSchema, JobViewSchema, jobView} from '../views';

export const JobParamsSchema = z.object({id: z.string().describe('Job id (a UUID).')});

/** `metadata.<key>`, with a key the generate request would accept. */
const METADATA_FILTER = new RegExp(`^metadata\\.(${METADATA_KEY_FORMAT.source.slice(1, -1)})$`);

/** GET /jobs: limit, cursor, status, and one `metadata.<key>=<value>` filter. */
export const ListJobsQuerySchema = z
  .object({
    limit: z
      .string()
      .regex(/^\d+$/, 'must be a whole number')
      .transform(Number)
      .pipe(z.int().min(1, 'must be at least 1').max(100, 'must be at most 100'))
      .optional()
      .describe('Jobs per page, 1-100 (default 20).'),
    cursor: z.string().max(512).optional().describe('`next_cursor` of the previous page.'),
    status: z.enum(JOB_STATUSES).optional(),
    source: z.enum(['legacy', 'generate', 'edit']).optional().describe('`edit`: only edits.'),
    // Documents the family of filters below; a name with braces in it matches no filter.
    'metadata.{key}': z
      .string()
      .optional()
      .describe('Only jobs whose metadata has this key with this value (one key per query).'),
  })
  .catchall(z.string().max(512))
  .superRefine((query, ctx) => {
    const known = new Set(['limit', 'cursor', 'status', 'source']);
    const filters = Object.keys(query).filter(name => METADATA_FILTER.test(name));
    for (const name of Object.keys(query)) {
      if (!known.has(name) && !METADATA_FILTER.test(name)) {
        ctx.addIssue({
          code: 'custom',
          path: [name],
          message: 'unknown query parameter; use limit, cursor, status, source or metadata.<key>',
        });
      }
    }
    if (filters.length > 1) {
      ctx.addIssue({code: 'custom', path: ['metadata'], message: 'filter on one metadata key at a time'});
    }
  })
  .transform(({limit, cursor, status, source, 'metadata.{key}': _documented, ...rest}) => {
    const [name, value] = Object.entries(rest).find(([key]) => METADATA_FILTER.test(key)) ?? [];
    const key = name === undefined ? undefined : METADATA_FILTER.exec(name)?.[1];
    return {
      limit: limit ?? 20,
      ...(cursor ? {cursor} : {}),
      ...(status ? {status} : {}),
      ...(source ? {source} : {}),
      ...(key !== undefined && value !== undefined ? {metadata: {key, value}} : {}),
    };
  })
  .describe(
    'Also `metadata.<key>=<value>`: only jobs whose metadata has this key with this value (one key).',
  );

export const jobRoutes = [
  defineRoute({
    method: 'GET',
    path: '/jobs',
    operationId: 'listJobs',
    summary: 'Jobs, newest first',
    query: ListJobsQuerySchema,
    responses: {200: {description: 'A page of jobs', schema: JobListSchema}},
    errors: ['VALIDATION_ERROR', 'STORAGE_ERROR'],
    async handle(ctx) {
      const page = await listJobs(ctx.services, ctx.requester, ctx.query);
      const jobs = await Promise.all(page.jobs.map(job => jobView(job, ctx.links)));
      sendJson(ctx.res, 200, {jobs, next_cursor: page.nextCursor});
    },
  }),
  defineRoute({
    method: 'GET',
    path: '/jobs/{id}',
    operationId: 'getJob',
    summary: 'A job with fresh image URLs',
    params: JobParamsSchema,
    responses: {200: {description: 'The job', schema: JobViewSchema}},
    errors: ['JOB_NOT_FOUND', 'STORAGE_ERROR'],
    async handle(ctx) {
      const job = await findJob(ctx.services, ctx.requester, ctx.params.id);
      ctx.labels.job_id = job.id;
      sendJson(ctx.res, 200, await jobView(job, ctx.links));
    },
  }),
  defineRoute({
    method: 'DELETE',
    path: '/jobs/{id}',
    operationId: 'deleteJob',
    summary: 'Delete a job and all its images',
    params: JobParamsSchema,
    responses: {200: {description: 'Deleted', schema: DeletedSchema}},
    errors: ['JOB_NOT_FOUND', 'JOB_RUNNING', 'STORAGE_ERROR'],
    async handle(ctx) {
      const job = await deleteJob(ctx.services, ctx.requester, ctx.params.id);
      ctx.labels.job_id = job.id;
      sendJson(ctx.res, 200, {
        status: 'deleted',
        job_id: job.id,
        image_ids: job.images.map(image => image.id),
      });
    },
  }),
];
