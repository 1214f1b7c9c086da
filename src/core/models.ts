/**
 * What each OpenAI image model accepts. Requests are checked against this
 * table before any upstream call, so a bad request never costs money.
 */
export const MODEL_IDS = [
  'gpt-image-2',
  'gpt-image-1.5',
  'gpt-image-1',
  'gpt-image-1-mini',
  'dall-e-3',
  'dall-e-2',
] as const;

export type ModelId = (typeof MODEL_IDS)[number];

export const OUTPUT_FORMATS = ['png', 'jpeg', 'webp'] as const;
export const QUALITIES = ['low', 'medium', 'high', 'auto', 'standard', 'hd'] as const;
export type Quality = (typeof QUALITIES)[number];
export const STYLES = ['vivid', 'natural'] as const;
export type Style = (typeof STYLES)[number];
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

export interface ModelRules {
  family: 'gpt-image' | 'dall-e';
  /** Sizes named explicitly; `customSizes` models also take any WxH within limits. */
  sizes: readonly string[];
  defaultSize: string;
  customSizes: boolean;
  qualities: readonly Quality[];
  styles: readonly Style[];
  maxPromptChars: number;
  /** Images one upstream call may return; larger counts are split into parallel calls. */
  maxImagesPerCall: number;
}

const GPT_IMAGE_SIZES = ['1024x1024', '1536x1024', '1024x1536', 'auto'] as const;
const GPT_IMAGE_QUALITIES = ['low', 'medium', 'high', 'auto'] as const;

function gptImage(customSizes: boolean): ModelRules {
  return {
    family: 'gpt-image',
    sizes: GPT_IMAGE_SIZES,
    defaultSize: '1024x1024',
    customSizes,
    qualities: GPT_IMAGE_QUALITIES,
    styles: [],
    maxPromptChars: 32000,
    maxImagesPerCall: 10,
  };
}

export const MODELS: Readonly<Record<ModelId, ModelRules>> = {
  'gpt-image-2': gptImage(true),
  'gpt-image-1.5': gptImage(false),
  'gpt-image-1': gptImage(false),
  'gpt-image-1-mini': gptImage(false),
  'dall-e-3': {
    family: 'dall-e',
    sizes: ['1024x1024', '1792x1024', '1024x1792'],
    defaultSize: '1024x1024',
    customSizes: false,
    qualities: ['standard', 'hd'],
    styles: ['vivid', 'natural'],
    maxPromptChars: 4000,
    maxImagesPerCall: 1,
  },
  'dall-e-2': {
    family: 'dall-e',
    sizes: ['256x256', '512x512', '1024x1024'],
    defaultSize: '1024x1024',
    customSizes: false,
    qualities: ['standard'],
    styles: [],
    maxPromptChars: 1000,
    maxImagesPerCall: 10,
  },
};

export const MAX_IMAGES_PER_REQUEST = 10;

/** Limits OpenAI documents for arbitrary gpt-image-2 resolutions. */
const CUSTOM_SIZE = {multiple: 16, maxEdge: 3840, maxPixels: 3840 * 2160, maxAspect: 3};

/** Returns null when `size` is an acceptable custom WxH, else the reason it is not. */
export function customSizeProblem(size: string): string | null {
  const match = /^(\d{2,5})x(\d{2,5})$/.exec(size);
  if (!match) return 'must look like WIDTHxHEIGHT';
  const width = Number(match[1]);
  const height = Number(match[2]);
  if (width % CUSTOM_SIZE.multiple !== 0 || height % CUSTOM_SIZE.multiple !== 0) {
    return `width and height must be multiples of ${CUSTOM_SIZE.multiple}`;
  }
  if (Math.max(width, height) > CUSTOM_SIZE.maxEdge) {
    return `no edge may exceed ${CUSTOM_SIZE.maxEdge} pixels`;
  }
  if (width * height > CUSTOM_SIZE.maxPixels) return 'at most 3840x2160 pixels in total';
  if (Math.max(width, height) / Math.min(width, height) > CUSTOM_SIZE.maxAspect) {
    return 'aspect ratio must be between 1:3 and 3:1';
  }
  return null;
}

/** Splits `count` images into upstream call sizes the model accepts. */
export function splitIntoCalls(count: number, maxPerCall: number): number[] {
  const calls: number[] = [];
  for (let left = count; left > 0; left -= maxPerCall) calls.push(Math.min(left, maxPerCall));
  return calls;
}
