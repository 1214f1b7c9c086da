import type {ImageRecord, JobRecord} from '../domain/records';
import type {ImageView, JobView} from './schemas';
import type {ImageLinker} from './urls';

export async function imageView(image: ImageRecord, links: ImageLinker): Promise<ImageView> {
  return {
    id: image.id,
    ...(await links(image)),
    content_type: image.content_type as ImageView['content_type'],
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

export async function jobView(job: JobRecord, links: ImageLinker): Promise<JobView> {
  const images = await Promise.all(job.images.map(image => imageView(image, links)));
  return {
    job_id: job.id,
    status: job.status,
    image_url: images[0]?.url ?? null,
    images,
    failures: job.failures.map(f => ({...f, code: f.code as JobView['failures'][number]['code']})),
    usage: job.usage,
    prompt: job.prompt,
    parameters: job.parameters,
    metadata: job.metadata,
    created_at: job.created_at,
    updated_at: job.updated_at,
    completed_at: job.completed_at,
  };
}
