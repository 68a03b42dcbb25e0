/**
 * The upgrade experiment's program: `node build/experiments/upgrade/main.js [options]`, what
 * `npm run upgrade-experiment` runs (see command.ts for the options).
 * @module
 */
import { upgradeExperimentCommand } from './command.js';

process.exitCode = await upgradeExperimentCommand(process.argv.slice(2));
