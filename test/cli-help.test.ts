// The `kvm-gmem` command explains itself: --help for every command, --version, usage errors that
// point at --help, and one --json envelope. The built CLI in a child process, as a user runs it.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI, ROOT } from './paths.js';

const env = { ...process.env };
delete env.KVM_GMEM_REQUIRE_KVM;
// From a directory outside the repository, as in a user's project.
const elsewhere = mkdtempSync(join(tmpdir(), 'kvm-gmem-cli-'));
const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env, cwd: elsewhere });
const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

describe('kvm-gmem --help', () => {
  it('the top level lists every command and how to get its help; exit 0, stdout only', () => {
    for (const flag of ['--help', '-h']) {
      const r = run(flag);
      expect(r.status).toBe(0);
      expect(r.stderr).toBe('');
      expect(r.stdout).toMatch(/^usage: kvm-gmem <command> \[options\]$/m);
      for (const c of ['info', 'selftest', 'exec']) expect(r.stdout).toMatch(new RegExp(`^  ${c} `, 'm'));
      expect(r.stdout).toMatch(/kvm-gmem <command> --help/);
      expect(r.stdout).toMatch(/--version/);
    }
    expect(run('help').stdout).toBe(run('--help').stdout);
  });

  it.each([
    ['info', /^usage: kvm-gmem info \[--json\] \[--device PATH\]/, ['--device PATH', '--json']],
    ['selftest', /^usage: kvm-gmem selftest \[--list\] \[--filter PATTERN\] \[--json\] \[--expect FILE\|none\]/,
      ['--list', '--filter PATTERN', '--expect FILE', '--expect none', '--device PATH', '--json', 'KVM_GMEM_REQUIRE_KVM=1']],
    ['exec', /^usage: kvm-gmem exec --kernel IMAGE \[VM options\] \[--\] COMMAND/,
      ['--kernel IMAGE', '--modules DIR', '--kvm-module', '--kvm-param', '--vm-accel', '--vm-memory SIZE', '--vm-cpus', '--vm-numa', '--vm-timeout']],
  ])('%s --help and -h print that command\'s usage and options, exit 0', (command, head, options) => {
    // Before: "Unknown option '--help'", exit 2.
    for (const flag of ['--help', '-h']) {
      const r = run(command, flag);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stderr).toBe('');
      expect(r.stdout).toMatch(head);
      for (const o of options) expect(r.stdout, o).toContain(o);
      expect(r.stdout).toMatch(/^exit status: /m);
    }
    expect(run('help', command).stdout).toBe(run(command, '--help').stdout);
    // Help comes first, whatever else is on the line: no VM is booted, no case is run.
    expect(run(command, '--kernel', '/nonexistent/vmlinuz', '--help').stdout).toBe(run(command, '--help').stdout);
  });

  it('selftest --help names the expectation list it uses by default, shipped with the package', () => {
    const r = run('selftest', '--help');
    expect(r.stdout).toContain(join(ROOT, 'lib/selftest/expected-failures.txt'));
  });

  it('exec: a --help after the command to run is that command\'s, not ours', () => {
    // No VM is booted: the kernel does not exist, so the run fails (3) instead of printing our help.
    const r = run('exec', '--kernel', '/nonexistent/vmlinuz', '--', 'node', '--help');
    expect(r.stdout).not.toMatch(/usage: kvm-gmem/);
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(/--kernel \/nonexistent\/vmlinuz: no such file|not found on PATH/);
  });
});

describe('kvm-gmem --version', () => {
  it('prints the package version from package.json and exits 0', () => {
    // Before: "unknown command '--version'", exit 2.
    const r = run('--version');
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(`${version}\n`);
    expect(r.stderr).toBe('');
  });
});

describe('kvm-gmem usage errors', () => {
  it.each([
    [['info', '--bogus'], /^kvm-gmem info: unknown option '--bogus'\nsee 'kvm-gmem info --help'\n$/],
    [['selftest', '--bogus'], /^kvm-gmem selftest: unknown option '--bogus'\nsee 'kvm-gmem selftest --help'\n$/],
    [['info', 'extra'], /^kvm-gmem info: unexpected argument 'extra'\nsee 'kvm-gmem info --help'\n$/],
    [['selftest', '--filter'], /^kvm-gmem selftest: option '--filter <value>' argument missing\nsee 'kvm-gmem selftest --help'\n$/],
    [['exec'], /^kvm-gmem exec: --kernel IMAGE is missing.*\nsee 'kvm-gmem exec --help'\n$/],
    [['exec', '--kernel', '/k', '--bogus'], /^kvm-gmem exec: unknown option '--bogus' \(put the command to run after --\)\nsee 'kvm-gmem exec --help'\n$/],
    [['frobnicate'], /^kvm-gmem: unknown command 'frobnicate'\nsee 'kvm-gmem --help'\n$/],
    [['--json', 'info'], /^kvm-gmem: unknown option '--json' \(options go after the command\)\nsee 'kvm-gmem --help'\n$/],
    [['help', 'frobnicate'], /^kvm-gmem: unknown command 'frobnicate'\nsee 'kvm-gmem --help'\n$/],
  ])('%j: one clear line pointing at --help, nothing on stdout, exit 2', (args, stderr) => {
    const r = run(...args);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(stderr);
    expect(r.stdout).toBe('');
  });

  it('no command at all: the usage on stderr, exit 2', () => {
    const r = run();
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^usage: kvm-gmem/);
  });
});

/** The envelope every --json output starts with. */
interface Envelope {
  command: string;
  version: string;
  exitCode: number;
  error?: { kind: string; message: string; code?: string; hint?: string };
}

/** Runs a --json command: stdout must be exactly one JSON object, whose envelope says `command` and the exit status. */
function json(command: string, ...args: string[]): { r: ReturnType<typeof run>; out: Envelope & Record<string, unknown> } {
  const r = run(command, ...args);
  const out = JSON.parse(r.stdout) as Envelope & Record<string, unknown>;
  expect(Object.keys(out).slice(0, 3)).toEqual(['command', 'version', 'exitCode']);
  expect(out.command).toBe(command);
  expect(out.version).toBe(version);
  expect(out.exitCode).toBe(r.status);
  return { r, out };
}

describe('--json: one envelope for every command', () => {
  it('info, selftest, selftest --list: JSON only on stdout, each with the same envelope', () => {
    const info = json('info', '--json', '--device', '/nonexistent/kvm');
    expect(info.r.status).toBe(1);
    expect(info.out).toMatchObject({ canOpen: false, device: '/nonexistent/kvm', openError: { code: 'ENOENT' } });

    const st = json('selftest', '--json', '--device', '/nonexistent/kvm', '--filter', 'test_file_size');
    expect(st.r.status).toBe(4);
    expect(st.out).toMatchObject({ host: { available: false }, totals: { pass: 0 } });
    // Progress and the summary go to stderr, never into the JSON.
    expect(st.r.stderr).toMatch(/kvm-gmem selftest: 0 passed, .* skipped/);

    const list = json('selftest', '--list', '--json', '--filter', 'test_file_size');
    expect(list.r.status).toBe(0);
    const cases = list.out.cases as { name: string }[];
    expect(cases.length).toBeGreaterThan(0);
    for (const c of cases) expect(c.name).toMatch(/test_file_size/);
  });

  it('a command that ends in an error still writes the envelope, with the error', () => {
    const usage = json('info', '--json', '--bogus');
    expect(usage.r.status).toBe(2);
    expect(usage.out.error).toEqual({ kind: 'usage', message: "unknown option '--bogus'" });
    expect(usage.r.stderr).toMatch(/^kvm-gmem info: unknown option '--bogus'/);

    const none = json('selftest', '--json', '--filter', 'no-such-case');
    expect(none.r.status).toBe(2);
    expect(none.out.error).toMatchObject({ kind: 'usage', message: 'no case matches --filter "no-such-case" (see --list)' });

    const expect404 = json('selftest', '--json', '--expect', '/nonexistent/expectations.txt', '--filter', 'test_file_size');
    expect(expect404.r.status).toBe(2);
    expect(expect404.out.error?.message).toMatch(/ENOENT/);
  });
});

describe('kvm-gmem without a loadable addon', () => {
  // An addon file that is not there: what a missing or unloadable prebuilt binary looks like.
  const noAddon = (...args: string[]) =>
    spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...env, KVM_GMEM_ADDON: join(elsewhere, 'missing.node') }, cwd: elsewhere });

  it('still answers --help, COMMAND --help and --version (they never load it)', () => {
    // Before: each of these exited 3 with the load error.
    expect(noAddon('--help').stdout).toBe(run('--help').stdout);
    for (const c of ['info', 'selftest', 'exec']) {
      const r = noAddon(c, '--help');
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toBe(run(c, '--help').stdout);
    }
    const v = noAddon('--version');
    expect(v.status).toBe(0);
    expect(v.stdout).toBe(`${version}\n`);
  });

  it('says so in one line naming the fix, exit 3, and in the --json envelope', () => {
    const r = noAddon('info');
    expect(r.status).toBe(3);
    expect(r.stderr).toBe(
      `kvm-gmem info: cannot load kvm-gmem's native addon ${join(elsewhere, 'missing.node')}: Cannot find module '${join(elsewhere, 'missing.node')}'. ` +
        'Fix: unset KVM_GMEM_ADDON, or point it at a built kvm_gmem.node\n',
    );
    const j = noAddon('selftest', '--json');
    expect(j.status).toBe(3);
    const out = JSON.parse(j.stdout) as { command: string; exitCode: number; error: { kind: string; message: string } };
    expect(out).toMatchObject({ command: 'selftest', version, exitCode: 3, error: { kind: 'runtime' } });
    expect(out.error.message).toMatch(/^cannot load kvm-gmem's native addon .*Fix: unset KVM_GMEM_ADDON/);
  });
});
