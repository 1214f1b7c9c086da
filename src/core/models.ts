/**
 * The model catalogue: every OpenAI image model id, its lifecycle, and what it
 * accepts, as the official SDK's types describe it (openai 7.57,
 * resources/images.d.ts) and OpenAI's deprecations page dates it. Requests are
 * checked against it before any upstream call, so a bad request never costs
 * money, and a model past its shutdown is run on its replacement.
 */

export const QUALITIES = ['low', 'medium', 'high', 'xhigh', 'max', 'auto', 'standard', 'hd'] as const;
export type Quality = (typeof QUALITIES)[number];
export const STYLES = ['vivid', 'natural'] as const;
export type Style = (typeof STYLES)[number];
export const BACKGROUNDS = ['transparent', 'opaque', 'auto'] as const;
export type Background = (typeof BACKGROUNDS)[number];
export const OUTPUT_FORMATS = ['png', 'jpeg', 'webp', 'gif', 'svg'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];
export const COMPLEXITIES = ['low', 'medium', 'high'] as const;
export const INPUT_FIDELITIES = ['high', 'low'] as const;
export type InputFidelity = (typeof INPUT_FIDELITIES)[number];

/** Features OpenAI grants per project; a refusal is reported as FEATURE_NOT_AVAILABLE. */
export type PreviewFeature = 'transparent_background' | 'gif_output' | 'svg_output';

/** Limits OpenAI documents for arbitrary WIDTHxHEIGHT sizes. */
export interface CustomSizeLimits {
  multiple: number;
  maxEdge: number;
  maxPixels: number;
  /**
   * Third-party pages give this minimum; the SDK speaks of "current pixel limits" without numbers.
   * Unconfirmed, so it only keeps sizes we choose (for a replaced model) above it; a caller's own
   * size below it is left for OpenAI to judge rather than refused here.
   */
  minPixels: number;
  maxAspect: number;
}

export const CUSTOM_SIZE_LIMITS: CustomSizeLimits = {
  multiple: 16,
  maxEdge: 3840,
  maxPixels: 3840 * 2160,
  minPixels: 655_360,
  maxAspect: 3,
};

/** What a model accepts. */
export interface ModelRules {
  /** Sizes named explicitly ('auto' included where the model sizes itself). */
  sizes: readonly string[];
  /** Also any WIDTHxHEIGHT within these limits. */
  customSizes: CustomSizeLimits | null;
  qualities: readonly Quality[];
  styles: readonly Style[];
  backgrounds: readonly Background[];
  outputFormats: readonly OutputFormat[];
  /** output_compression, for jpeg and webp. */
  compression: boolean;
  moderation: boolean;
  complexity: boolean;
  maxPromptChars: number;
  /** Images one upstream call may return; larger counts are split into parallel calls. */
  maxImagesPerCall: number;
  /** Streams partial images (never for GIF or SVG output). */
  streams: boolean;
  edits: boolean;
  inputFidelity: readonly InputFidelity[];
  markup: boolean;
  previews: readonly PreviewFeature[];
}

/**
 * How a retired model's request is carried to its replacement: its own
 * quality values in the replacement's terms, and the quality it defaulted to.
 */
export interface LegacyTranslation {
  qualities: Partial<Record<Quality, Quality>>;
  defaultQuality: Quality;
}

export interface ModelEntry {
  id: string;
  /** From this day (UTC) OpenAI no longer serves the model; null when none is announced. */
  shutdownDate: string | null;
  /** What OpenAI recommends instead (overridable with MODEL_ALIASES). */
  replacement: string | null;
  rules: ModelRules;
  /** Set for models whose parameters differ from the GPT image models (dall-e-*). */
  legacy?: LegacyTranslation;
}

export const MODEL_STATUSES = ['active', 'deprecated', 'retired'] as const;
export type ModelStatus = (typeof MODEL_STATUSES)[number];

const STANDARD_SIZES = ['1024x1024', '1536x1024', '1024x1536', 'auto'] as const;
const GPT_QUALITIES = ['low', 'medium', 'high', 'auto'] as const;
const RASTER_FORMATS = ['png', 'jpeg', 'webp'] as const;

function gptImage(overrides: Partial<ModelRules> = {}): ModelRules {
  return {
    sizes: STANDARD_SIZES,
    customSizes: null,
    qualities: GPT_QUALITIES,
    styles: [],
    backgrounds: BACKGROUNDS,
    outputFormats: RASTER_FORMATS,
    compression: true,
    moderation: true,
    complexity: true,
    maxPromptChars: 32_000,
    maxImagesPerCall: 10,
    streams: true,
    edits: true,
    inputFidelity: [],
    markup: false,
    previews: [],
    ...overrides,
  };
}

/** GPT Image 2 and later: GIF and SVG output, both previews OpenAI enables per project. */
const SECOND_GENERATION = {
  outputFormats: OUTPUT_FORMATS,
  previews: ['gif_output', 'svg_output'] as PreviewFeature[],
};

const GPT_IMAGE_2 = gptImage({
  ...SECOND_GENERATION,
  customSizes: CUSTOM_SIZE_LIMITS,
  previews: ['transparent_background', 'gif_output', 'svg_output'],
});
const GPT_IMAGE_2_5 = gptImage({
  ...SECOND_GENERATION,
  customSizes: CUSTOM_SIZE_LIMITS,
  qualities: ['low', 'medium', 'high', 'xhigh', 'max', 'auto'],
  markup: true,
});
const GPT_IMAGE_2_6 = gptImage(SECOND_GENERATION);
const GPT_IMAGE_1_5 = gptImage({inputFidelity: ['high', 'low']});

const DALL_E: Omit<ModelRules, 'sizes' | 'qualities' | 'styles' | 'maxPromptChars' | 'maxImagesPerCall'> = {
  customSizes: null,
  backgrounds: [],
  outputFormats: [],
  compression: false,
  moderation: false,
  complexity: false,
  streams: false,
  edits: false,
  inputFidelity: [],
  markup: false,
  previews: [],
};

const SHUTDOWN_2026_12_01 = '2026-12-01';

export const MODEL_CATALOGUE: readonly ModelEntry[] = [
  {id: 'gpt-image-2.6-sunburst', shutdownDate: null, replacement: null, rules: GPT_IMAGE_2_6},
  {id: 'gpt-image-2.6-flare', shutdownDate: null, replacement: null, rules: GPT_IMAGE_2_6},
  {id: 'gpt-image-2.5-sunburst', shutdownDate: null, replacement: null, rules: GPT_IMAGE_2_5},
  {id: 'gpt-image-2.5-sunburst-2026-09-08', shutdownDate: null, replacement: null, rules: GPT_IMAGE_2_5},
  {id: 'gpt-image-2.5-flare', shutdownDate: null, replacement: null, rules: GPT_IMAGE_2_5},
  {id: 'gpt-image-2.5-flare-2026-09-08', shutdownDate: null, replacement: null, rules: GPT_IMAGE_2_5},
  {id: 'gpt-image-2', shutdownDate: null, replacement: null, rules: GPT_IMAGE_2},
  {id: 'gpt-image-2-2026-04-21', shutdownDate: null, replacement: null, rules: GPT_IMAGE_2},
  {
    id: 'gpt-image-1.5',
    shutdownDate: SHUTDOWN_2026_12_01,
    replacement: 'gpt-image-2.6-sunburst',
    rules: GPT_IMAGE_1_5,
  },
  {
    id: 'gpt-image-1.5-2025-12-16',
    shutdownDate: SHUTDOWN_2026_12_01,
    replacement: 'gpt-image-2.6-sunburst',
    rules: GPT_IMAGE_1_5,
  },
  {
    id: 'gpt-image-1-mini',
    shutdownDate: SHUTDOWN_2026_12_01,
    replacement: 'gpt-image-2.6-flare',
    rules: gptImage({inputFidelity: ['low']}),
  },
  {
    id: 'chatgpt-image-latest',
    shutdownDate: SHUTDOWN_2026_12_01,
    replacement: 'gpt-image-2.6-sunburst',
    rules: gptImage(),
  },
  {id: 'gpt-image-1', shutdownDate: '2026-10-23', replacement: 'gpt-image-2.5-sunburst', rules: gptImage()},
  {
    id: 'dall-e-3',
    shutdownDate: '2026-05-12',
    replacement: 'gpt-image-2.5-sunburst',
    rules: {
      ...DALL_E,
      sizes: ['1024x1024', '1792x1024', '1024x1792'],
      qualities: ['standard', 'hd'],
      styles: STYLES,
      maxPromptChars: 4000,
      maxImagesPerCall: 1,
    },
    // dall-e-3 standard ($0.04) sits between medium and high at 1024x1024; hd is high. Standard goes to
    // medium so the two stay apart and a caller never pays more than before the shutdown.
    legacy: {qualities: {standard: 'medium', hd: 'high'}, defaultQuality: 'medium'},
  },
  {
    id: 'dall-e-2',
    shutdownDate: '2026-05-12',
    replacement: 'gpt-image-2.5-flare',
    rules: {
      ...DALL_E,
      sizes: ['256x256', '512x512', '1024x1024'],
      qualities: ['standard'],
      styles: [],
      maxPromptChars: 1000,
      maxImagesPerCall: 10,
    },
    // dall-e-2 cost $0.016-0.02 an image; low quality is the closest in price.
    legacy: {qualities: {standard: 'low'}, defaultQuality: 'low'},
  },
];

export const DEFAULT_MODEL_ID = 'gpt-image-2.6-sunburst';

export const MAX_IMAGES_PER_REQUEST = 10;

/** The model's status on `day` (YYYY-MM-DD, UTC). */
export function statusOn(entry: ModelEntry, day: string): ModelStatus {
  if (entry.shutdownDate === null) return 'active';
  return day >= entry.shutdownDate ? 'retired' : 'deprecated';
}

/** Returns null when `size` is an acceptable custom WxH, else the reason it is not. */
export function customSizeProblem(
  size: string,
  limits: CustomSizeLimits = CUSTOM_SIZE_LIMITS,
  {checkMinimum}: {checkMinimum: boolean} = {checkMinimum: true},
): string | null {
  const dimensions = parseSize(size);
  if (!dimensions) return 'must look like WIDTHxHEIGHT';
  const {width, height} = dimensions;
  if (width % limits.multiple !== 0 || height % limits.multiple !== 0) {
    return `width and height must be multiples of ${limits.multiple}`;
  }
  if (Math.max(width, height) > limits.maxEdge) return `no edge may exceed ${limits.maxEdge} pixels`;
  if (width * height > limits.maxPixels) return 'at most 3840x2160 pixels in total';
  if (checkMinimum && width * height < limits.minPixels)
    return `at least ${limits.minPixels} pixels in total`;
  if (Math.max(width, height) / Math.min(width, height) > limits.maxAspect) {
    return `aspect ratio must be between 1:${limits.maxAspect} and ${limits.maxAspect}:1`;
  }
  return null;
}

export function parseSize(size: string): {width: number; height: number} | null {
  const match = /^(\d{1,5})x(\d{1,5})$/.exec(size);
  if (!match) return null;
  const width = Number(match[1]);
  const height = Number(match[2]);
  return width > 0 && height > 0 ? {width, height} : null;
}

/** Splits `count` images into upstream call sizes the model accepts. */
export function splitIntoCalls(count: number, maxPerCall: number): number[] {
  const calls: number[] = [];
  for (let left = count; left > 0; left -= maxPerCall) calls.push(Math.min(left, maxPerCall));
  return calls;
}
