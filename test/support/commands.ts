import {ModelCatalogue} from '../../src/core/catalogue';
import {parseGenerateBody, planGeneration, type GenerateCommand} from '../../src/core/generation';

const catalogue = new ModelCatalogue();

/** The command the API would make of this body on `day` (by default after the 2026-12-01 shutdowns). */
export function commandFor(body: Record<string, unknown>, day = '2026-12-02'): GenerateCommand {
  return planGeneration(parseGenerateBody({prompt: 'a lighthouse', ...body}), {
    catalogue,
    defaultModel: 'gpt-image-2.6-sunburst',
    retiredModels: 'replace',
    day,
  });
}
