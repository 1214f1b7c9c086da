import type {ImageRecord, JobRecord} from '../domain/records';

/** Turns an image id into a URL the caller can fetch. */
export type ImageUrlFor = (image: ImageRecord) => Promise<string> | string;

export interface ImageView {
  id: string;
  url: string;
  content_type: string;
  bytes: number;
  sha256: string;
  width: number;
  height: number;
  model: string;
  size: string;
  prompt: string;
  revised_prompt: string | null;
}

export async function imageView(image: ImageRecord, urlFor: ImageUrlFor): Promise<ImageView> {
  return {
    id: image.id,
    url: await urlFor(image),
    content_type: image.content_type,
    bytes: image.bytes,
    sha256: image.sha256,
    width: image.width,
    height: image.height,
    model: image.model,
    size: image.size,
    prompt: image.prompt,
    revised_prompt: image.revised_prompt,
  };
}

export async function jobView(job: JobRecord, urlFor: ImageUrlFor) {
  const images = await Promise.all(job.images.map(image => imageView(image, urlFor)));
  return {
    job_id: job.id,
    status: job.status,
    image_url: images[0]?.url ?? null,
    images,
    usage: job.usage,
    prompt: job.prompt,
    parameters: job.parameters,
    metadata: job.metadata,
    created_at: job.created_at,
    updated_at: job.updated_at,
    completed_at: job.completed_at,
  };
}
