import {EditRequestSchema, parseEditBody} from '../../core/generation';
import {EditFormSchema, readEditForm} from '../edit-form';
import {
  GENERATION_ERRORS,
  GENERATION_RESPONSES,
  GenerationHeadersSchema,
  runGeneration,
} from '../generation-route';
import {defineRoute} from '../route';

/** Edits stored images, uploads or Cloud Storage objects into new ones, stored as a new job. */
function editRoute(path: string, operationId: string) {
  return defineRoute({
    method: 'POST',
    path,
    operationId,
    summary: 'Edit images into new ones, stored as a new job (JSON references or multipart uploads)',
    headers: GenerationHeadersSchema,
    body: {
      schema: EditRequestSchema,
      parse: parseEditBody,
      // Images travel in the body, as base64 JSON or as files.
      maxBytes: config => config.maxUploadBytes,
      streamed: {'multipart/form-data': {schema: EditFormSchema, read: readEditForm}},
      prompts: body => [body.prompt],
    },
    responses: GENERATION_RESPONSES,
    errors: [...GENERATION_ERRORS, 'IMAGE_NOT_FOUND'],
    handle: runGeneration,
  });
}

/** `/images/edits` is where OpenAI's SDK posts an edit, so a client built for it can point here. */
export const editRoutes = [editRoute('/edits', 'edit'), editRoute('/images/edits', 'editAtSdkPath')];
