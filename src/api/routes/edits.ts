import {EditRequestSchema, parseEditBody} from '../../core/generation';
import {EditFormSchema, readEditForm} from '../edit-form';
import {
  GENERATION_ERRORS,
  GenerationHeadersSchema,
  generationResponses,
  runGeneration,
} from '../generation-route';
import {defineRoute} from '../route';
import {JobViewSchema, SdkJobViewSchema, sdkJobView} from '../views';

/**
 * Edits stored images, uploads or Cloud Storage objects into new ones,
 * stored as a new job; `sdk` also shapes the answer as OpenAI's.
 */
function editRoute(path: string, operationId: string, sdk: boolean) {
  return defineRoute({
    method: 'POST',
    path,
    operationId,
    summary: 'Edit images into new ones, stored as a new job (JSON references or multipart uploads)',
    headers: GenerationHeadersSchema,
    body: {
      schema: EditRequestSchema,
      parse: parseEditBody,
      // The images' base64, decoded as it arrives: never a string of it, nor the whole body at once.
      base64At: path =>
        path.at(-1) === 'b64_json' &&
        ((path.length === 3 && path[0] === 'images' && typeof path[1] === 'number') ||
          (path.length === 2 && (path[0] === 'mask' || path[0] === 'markup'))),
      // Images travel in the body, as base64 JSON or as files.
      maxBytes: config => config.maxUploadBytes,
      streamed: {'multipart/form-data': {schema: EditFormSchema, read: readEditForm}},
      prompts: body => [body.prompt],
    },
    responses: generationResponses(sdk ? SdkJobViewSchema : JobViewSchema),
    errors: [...GENERATION_ERRORS, 'IMAGE_NOT_FOUND'],
    handle: ctx => runGeneration(ctx, sdk ? sdkJobView : undefined),
  });
}

/** `/images/edits` is where OpenAI's SDK posts an edit, so a client built for it can point here. */
export const editRoutes = [
  editRoute('/edits', 'edit', false),
  editRoute('/images/edits', 'editAtSdkPath', true),
];
