// The published typings as a user's code meets them: test/types/ imports the package by its own
// name (package.json "exports" to dist/*.d.ts, not lib/) and must compile with no error, and each
// entry point's typings must declare exactly the values it exports at run time (stripInternal
// must not hide a live export, nor the typings promise one that is not there).
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { beforeAll, describe, expect, it } from 'vitest';
import { hangBound } from './kvm-host.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const ENTRIES = ['kvm-gmem', 'kvm-gmem/guest', 'kvm-gmem/ipc', 'kvm-gmem/selftest'];

let program: ts.Program;

beforeAll(() => {
  const config = ts.getParsedCommandLineOfConfigFile(join(root, 'test/types/tsconfig.json'), {}, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (d) => { throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n')); },
  });
  if (!config) throw new Error('test/types/tsconfig.json did not parse');
  program = ts.createProgram({ rootNames: config.fileNames, options: config.options });
}, hangBound(120_000));

describe('published typings (dist/*.d.ts)', () => {
  it('compile for a consumer of kvm-gmem, /guest, /ipc and /selftest, with every assertion in test/types', () => {
    const diagnostics = ts.getPreEmitDiagnostics(program);
    const text = ts.formatDiagnostics(diagnostics, { getCanonicalFileName: (f) => f, getCurrentDirectory: () => root, getNewLine: () => '\n' });
    expect(text).toBe('');
    expect(diagnostics.length).toBe(0);
    // The consumer's view is the built package: no file of lib/ took part.
    const fromLib = program.getSourceFiles().map((f) => f.fileName).filter((f) => f.startsWith(join(root, 'lib') + '/'));
    expect(fromLib).toEqual([]);
  }, hangBound(120_000));

  it('declare exactly the values each entry point exports at run time', () => {
    const checker = program.getTypeChecker();
    const declared: Record<string, string[]> = {};
    for (const file of program.getSourceFiles()) {
      for (const stmt of file.statements) {
        if (!ts.isImportDeclaration(stmt) || !ts.isStringLiteral(stmt.moduleSpecifier)) continue;
        const entry = stmt.moduleSpecifier.text;
        if (!ENTRIES.includes(entry) || entry in declared) continue;
        const mod = checker.getSymbolAtLocation(stmt.moduleSpecifier);
        if (!mod) continue;
        // The module object's properties: its value exports, as `keyof typeof import(entry)`.
        declared[entry] = checker.getPropertiesOfType(checker.getTypeOfSymbol(mod)).map((s) => s.name).sort();
      }
    }
    const script = `const out = {}; for (const e of ${JSON.stringify(ENTRIES)}) out[e] = Object.keys(await import(e)).sort(); console.log(JSON.stringify(out));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: root, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(declared).toEqual(JSON.parse(r.stdout) as Record<string, string[]>);
  });
});
