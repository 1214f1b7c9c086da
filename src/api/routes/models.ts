import {z} from 'zod';
import {MODEL_STATUSES, type ModelEntry} from '../../core/models';
import {sendJson} from '../responses';
import {defineRoute} from '../route';

const ModelRulesSchema = z.object({
  sizes: z.array(z.string()).describe('Sizes by name (`auto`: the model chooses).'),
  custom_sizes: z
    .object({
      multiple: z.int(),
      max_edge: z.int(),
      max_pixels: z.int(),
      min_pixels: z.int(),
      max_aspect_ratio: z.number(),
    })
    .nullable()
    .describe('Any WIDTHxHEIGHT within these limits, or null when only the named sizes are taken.'),
  qualities: z.array(z.string()),
  styles: z.array(z.string()),
  backgrounds: z.array(z.string()),
  output_formats: z.array(z.string()),
  output_compression: z.boolean().describe('Takes output_compression (jpeg and webp).'),
  moderation: z.boolean(),
  complexity: z.boolean(),
  max_prompt_characters: z.int(),
  max_images_per_call: z.int().describe('Larger counts are split into calls made in parallel.'),
  streams: z.boolean(),
  edits: z.boolean(),
  input_fidelity: z.array(z.string()),
  markup: z.boolean(),
  previews: z
    .array(z.string())
    .describe('Features OpenAI enables per project; without them: FEATURE_NOT_AVAILABLE.'),
});

const ModelSchema = z.object({
  id: z.string(),
  status: z
    .enum(MODEL_STATUSES)
    .describe('`retired`: requests naming it run on `replacement` (or are refused).'),
  shutdown_date: z.string().nullable(),
  replacement: z.string().nullable().describe('What its requests run on once it is retired.'),
  default: z.boolean().describe('The model of requests that name none.'),
  rules: ModelRulesSchema,
});

export const ModelListSchema = z
  .object({
    date: z.string().describe('The day (UTC) the statuses are for.'),
    default_model: z.string(),
    models: z.array(ModelSchema),
  })
  .meta({id: 'ModelList'});

function rulesView(entry: ModelEntry): z.infer<typeof ModelRulesSchema> {
  const {rules} = entry;
  const custom = rules.customSizes;
  return {
    sizes: [...rules.sizes],
    custom_sizes: custom && {
      multiple: custom.multiple,
      max_edge: custom.maxEdge,
      max_pixels: custom.maxPixels,
      min_pixels: custom.minPixels,
      max_aspect_ratio: custom.maxAspect,
    },
    qualities: [...rules.qualities],
    styles: [...rules.styles],
    backgrounds: [...rules.backgrounds],
    output_formats: [...rules.outputFormats],
    output_compression: rules.compression,
    moderation: rules.moderation,
    complexity: rules.complexity,
    max_prompt_characters: rules.maxPromptChars,
    max_images_per_call: rules.maxImagesPerCall,
    streams: rules.streams,
    edits: rules.edits,
    input_fidelity: [...rules.inputFidelity],
    markup: rules.markup,
    previews: [...rules.previews],
  };
}

export const modelRoutes = [
  defineRoute({
    method: 'GET',
    path: '/models',
    operationId: 'listModels',
    summary: 'The model catalogue: each model, its lifecycle and what it accepts (to build forms from)',
    responses: {200: {description: 'Every model this deployment knows', schema: ModelListSchema}},
    errors: [],
    async handle(ctx) {
      const {config, now} = ctx.services;
      const day = now().toISOString().slice(0, 10);
      const catalogue = config.models;
      sendJson(ctx.res, 200, {
        date: day,
        default_model: config.defaultModel,
        models: catalogue.ids().map(id => {
          const entry = catalogue.get(id)!;
          const status = catalogue.status(id, day);
          return {
            id,
            status,
            shutdown_date: entry.shutdownDate,
            replacement: entry.shutdownDate === null ? null : (catalogue.successor(id, day)?.id ?? null),
            default: id === config.defaultModel,
            rules: rulesView(entry),
          };
        }),
      });
    },
  }),
];
