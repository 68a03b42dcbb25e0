// TypeScript lint (typescript-eslint), `npm run lint:ts`: strictTypeChecked for every TypeScript
// file (lib/, experiments/, test/, examples/), with the departures below; the plain-JS scripts
// get ESLint's recommended rules. Type-aware rules need the built dist/ for experiments/,
// examples/ and test/types/, which import the package by name as its users do.
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import globals from 'globals';
import tseslint from 'typescript-eslint';

/** restrict-template-expressions: what may appear in `${}` besides strings. */
const template = { allowNumber: true, allowBoolean: true, allowAny: false, allowNullish: false, allowRegExp: false, allowNever: false };

/** Rules of strictTypeChecked this codebase departs from, each with its reason. */
const departures = {
  // noUncheckedIndexedAccess is on: `a[i]!` is how an index already known in range is written.
  '@typescript-eslint/no-non-null-assertion': 'off',
  // Numbers and bigints in messages are the norm (sizes, addresses); nullish values stay flagged.
  '@typescript-eslint/restrict-template-expressions': ['error', template],
  // `() => f()` for a void f is the ordinary callback shorthand; other void-as-value uses stay flagged.
  '@typescript-eslint/no-confusing-void-expression': ['error', { ignoreArrowShorthand: true }],
  // `void mem[i]` is a deliberate read that faults a guest page in, not a mistake.
  '@typescript-eslint/no-meaningless-void-operator': 'off',
  // The library checks what plain-JS callers pass and what JSON.stringify really returns, which
  // the types say cannot happen: such checks are the point, not dead code.
  '@typescript-eslint/no-unnecessary-condition': 'off',
  // As only-throw-error allows: an AbortSignal's reason (any) is passed on, as Node's own APIs do.
  '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingAny: true, allowThrowingUnknown: true }],
  // `using _a = a` holds a resource for its scope only; `{ x: _drop, ...rest }` drops a key.
  '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', ignoreRestSiblings: true }],
};

/** The type-checked rules for `files`, typed by the TypeScript project `project`. */
function typed(files, project, rules = {}, ignores = []) {
  return {
    files,
    ignores,
    extends: [js.configs.recommended, tseslint.configs.strictTypeChecked],
    languageOptions: { parserOptions: { project, tsconfigRootDir: import.meta.dirname } },
    rules: { ...departures, ...rules },
  };
}

export default defineConfig(
  { linterOptions: { reportUnusedDisableDirectives: 'error' } },
  { ignores: ['dist/', 'build/', 'build-cmake/', 'node_modules/', 'guest/', 'native/', 'bench-out/'] },
  typed(['lib/**/*.ts'], './tsconfig.eslint.json'),
  typed(['experiments/**/*.ts'], './experiments/tsconfig.json', {
    // The experiment's log lines print a child's exit code or signal, null when there is none.
    '@typescript-eslint/restrict-template-expressions': ['error', { ...template, allowNullish: true }],
  }),
  typed(['test/**/*.ts', 'vitest.config.ts'], './tsconfig.eslint.json', {
    // Test diagnostics print a missing signal, status or code as null/undefined on purpose.
    '@typescript-eslint/restrict-template-expressions': ['error', { ...template, allowNullish: true }],
  }, ['test/types/**']),
  typed(['test/types/**/*.ts'], './test/types/tsconfig.json'),
  typed(['examples/**/*.ts'], './examples/tsconfig.json'),
  {
    files: ['**/*.mjs', '**/*.js'],
    extends: [js.configs.recommended],
    languageOptions: { globals: globals.node },
  },
);
