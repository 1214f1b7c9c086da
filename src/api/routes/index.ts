import type {Route} from '../route';
import {editRoutes} from './edits';
import {generateRoutes} from './generate';
import {imageRoutes} from './images';
import {jobRoutes} from './jobs';
import {modelRoutes} from './models';
import {describeApiRoute} from './openapi';
import {probeRoutes} from './probes';
import {taskRoutes} from './tasks';

/** Every operation the function answers; anything else is 404, a wrong method 405. */
export const ROUTES: Route[] = [
  ...generateRoutes,
  ...editRoutes,
  ...jobRoutes,
  ...imageRoutes,
  ...modelRoutes,
  ...probeRoutes,
  ...taskRoutes,
  describeApiRoute(() => ROUTES),
];
