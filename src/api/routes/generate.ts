import {GenerateBodySchema, parseGenerateBody} from '../../core/generation';
import {
  GENERATION_ERRORS,
  GENERATION_RESPONSES,
  GenerationHeadersSchema,
  runGeneration,
} from '../generation-route';
import {defineRoute} from '../route';

/** Generates images for either payload, stores them and answers with the job. */
function generateRoute(path: string, operationId: string) {
  return defineRoute({
    method: 'POST',
    path,
    operationId,
    summary: 'Generate images and store them (rich or legacy payload)',
    headers: GenerationHeadersSchema,
    body: {schema: GenerateBodySchema, parse: parseGenerateBody, prompts: body => [body.prompt]},
    responses: GENERATION_RESPONSES,
    errors: GENERATION_ERRORS,
    handle: runGeneration,
  });
}

export const generateRoutes = [generateRoute('/generate', 'generate'), generateRoute('/', 'generateAtRoot')];
