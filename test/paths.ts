// Paths into the repository that tests share.
import { fileURLToPath } from 'node:url';

/** The repository root. */
export const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** The built CLI. */
export const CLI = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));
/** The expectation file CI and README use. */
export const EXPECTED_FAILURES = fileURLToPath(new URL('../lib/selftest/expected-failures.txt', import.meta.url));
