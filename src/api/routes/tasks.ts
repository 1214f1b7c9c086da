import {z} from 'zod';
import {AppError} from '../../core/errors';
import {isOperator} from '../../core/requester';
import {sendJson} from '../responses';
import {defineRoute} from '../route';

const ReconcileQuerySchema = z.object({
  scope: z
    .enum(['recent', 'full'])
    .optional()
    .describe('`full` also walks every object under images/ for ones no job knows (slow on a big bucket).'),
  limit: z
    .string()
    .regex(/^\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.int().min(1).max(1000))
    .optional()
    .describe('Jobs looked at per kind and pass (default 100).'),
});

export const ReconcileReportSchema = z
  .object({
    jobs_completed: z.array(z.string()),
    jobs_failed: z.array(z.string()),
    objects_removed: z.array(z.string()),
    images_dropped: z.array(z.string()),
    reservations_released: z.array(z.string()),
    unrepaired: z
      .array(z.string())
      .describe('What could not be repaired this pass, and why; the next pass tries again.'),
  })
  .meta({id: 'ReconcileReport', description: 'What one pass of the reconciler repaired.'});

export const taskRoutes = [
  /**
   * For Cloud Scheduler (OIDC, like any caller behind IAM) or an admin key:
   * completes or removes what stopped runs left. Local mode runs it by itself.
   */
  defineRoute({
    method: 'POST',
    path: '/tasks/reconcile',
    operationId: 'reconcile',
    summary: 'Repair what stopped runs left: complete or fail stale jobs, remove stray objects, free quota',
    query: ReconcileQuerySchema,
    responses: {200: {description: 'What was repaired', schema: ReconcileReportSchema}},
    errors: ['FORBIDDEN', 'VALIDATION_ERROR', 'STORAGE_ERROR'],
    async handle(ctx) {
      if (!isOperator(ctx.requester)) {
        throw new AppError(
          'FORBIDDEN',
          'Only an admin key (or an IAM invoker when no keys are set) may run tasks',
        );
      }
      const report = await ctx.services.reconcile({
        scope: ctx.query.scope ?? 'recent',
        limit: ctx.query.limit ?? 100,
      });
      sendJson(ctx.res, 200, report);
    },
  }),
];
