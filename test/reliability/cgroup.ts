/**
 * A child cgroup for one test process, with the pids or memory controller, on cgroup v1 (a
 * hierarchy per controller, as on the hosts here) or v2 (one unified hierarchy, as in the VM):
 * made under the cgroup this process is in, and removed after. The child process joins it
 * through a shell that writes its own pid to cgroup.procs and then execs Node; the child sets
 * its own limits (the files named in {@link Cgroup.env}) once it has started.
 */
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export type Controller = 'pids' | 'memory';

export interface Cgroup {
  dir: string;
  version: 1 | 2;
  /** Runs the child in the cgroup: put before the Node command line (runNode's wrapper). */
  wrapper: string[];
  /**
   * What the child needs to set its limits: CG_LIMIT (the limit file), CG_CURRENT (usage), CG_SWAP
   * (swap limit, if any), CG_OOM (v1 memory: oom_control).
   */
  env: Record<string, string>;
  /** Removes the cgroup (its processes must have exited). */
  remove(): void;
}

interface Mount {
  path: string;
  type: string;
  options: string[];
}

function mounts(): Mount[] {
  return readFileSync('/proc/self/mounts', 'utf8').split('\n').filter(Boolean).map((l) => {
    const f = l.split(' ');
    return { path: f[1]!, type: f[2]!, options: f[3]!.split(',') };
  });
}

/** This process's cgroup path in the hierarchy of `controller` (v1), or the unified one (v2: ''). */
function ownPath(controller: string): string | undefined {
  for (const l of readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
    const [, ctrls, path] = l.split(':');
    if (ctrls !== undefined && ctrls.split(',').includes(controller)) return path;
    if (controller === '' && ctrls === '') return path;
  }
  return undefined;
}

let made = 0;

/** A fresh cgroup with `controller`, or the reason there cannot be one here. */
export function makeCgroup(controller: Controller): Cgroup | string {
  if (process.getuid?.() !== 0) return 'making cgroups needs root';
  const all = mounts();
  const v1 = all.find((m) => m.type === 'cgroup' && m.options.includes(controller));
  const v2 = all.find((m) => m.type === 'cgroup2');
  const name = `kvm-gmem-reliability-${process.pid}-${made++}`;
  let parent: string;
  let version: 1 | 2;
  if (v1) {
    version = 1;
    parent = join(v1.path, ownPath(controller) ?? '/');
  } else if (v2) {
    version = 2;
    parent = join(v2.path, ownPath('') ?? '/');
    const available = readFileSync(join(parent, 'cgroup.controllers'), 'utf8').split(/\s+/);
    if (!available.includes(controller)) return `cgroup2 at ${parent} does not offer the ${controller} controller`;
    const enabled = readFileSync(join(parent, 'cgroup.subtree_control'), 'utf8').split(/\s+/);
    if (!enabled.includes(controller)) {
      try {
        writeFileSync(join(parent, 'cgroup.subtree_control'), `+${controller}`);
      } catch (e) {
        // A non-root cgroup with processes of its own cannot pass controllers down (EBUSY).
        return `cannot enable ${controller} for children of ${parent}: ${(e as Error).message}`;
      }
    }
  } else {
    return `no cgroup hierarchy with the ${controller} controller is mounted`;
  }
  const dir = join(parent, name);
  try {
    mkdirSync(dir);
  } catch (e) {
    return `cannot make a cgroup under ${parent}: ${(e as Error).message}`;
  }
  const file = (n: string) => join(dir, n);
  const env: Record<string, string> = controller === 'pids'
    ? { CG_LIMIT: file('pids.max'), CG_CURRENT: file('pids.current') }
    : version === 2
      ? { CG_LIMIT: file('memory.max'), CG_CURRENT: file('memory.current'), ...(existsSync(file('memory.swap.max')) ? { CG_SWAP: file('memory.swap.max') } : {}) }
      : {
        CG_LIMIT: file('memory.limit_in_bytes'), CG_CURRENT: file('memory.usage_in_bytes'), CG_OOM: file('memory.oom_control'),
        ...(existsSync(file('memory.memsw.limit_in_bytes')) ? { CG_SWAP: file('memory.memsw.limit_in_bytes') } : {}),
      };
  if (!existsSync(env.CG_LIMIT!)) {
    rmdirSync(dir);
    return `${env.CG_LIMIT} is missing`;
  }
  return {
    dir,
    version,
    wrapper: ['/bin/sh', '-c', 'echo $$ > "$0" && exec "$@"', file('cgroup.procs')],
    env: { ...env, CG_VERSION: String(version) },
    remove() {
      // The last task leaves a moment after its parent saw it exit: rmdir says EBUSY until then.
      for (let i = 0; ; i++) {
        try {
          rmdirSync(dir);
          return;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EBUSY' || i >= 200) throw e;
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
        }
      }
    },
  };
}

/**
 * JavaScript for the child: setLimit(n) sets the limit file (and swap to none), usage() reads the
 * current use, refuseInsteadOfKill() makes the kernel refuse memory charges past the limit
 * (ENOMEM) instead of letting the OOM killer end the process: oom_score_adj -1000 where the
 * process may lower it, else (cgroup v1) the cgroup's oom_control.
 */
export const CHILD_LIMITS = `
import { writeFileSync as writeLimit } from 'node:fs';
const refuseInsteadOfKill = () => {
  try { writeLimit('/proc/self/oom_score_adj', '-1000'); }
  catch (e) { if (!process.env.CG_OOM) throw e; writeLimit(process.env.CG_OOM, '1'); }
};
const usage = () => Number(readFileSync(process.env.CG_CURRENT, 'utf8').trim());
const setLimit = (n) => {
  if (process.env.CG_VERSION === '1' && process.env.CG_SWAP) {
    // v1: memory+swap must stay >= memory; lowering, set memory first; 'max' is -1 there.
    const v = n === 'max' ? '-1' : String(n);
    if (n === 'max') { writeLimit(process.env.CG_SWAP, v); writeLimit(process.env.CG_LIMIT, v); }
    else { writeLimit(process.env.CG_LIMIT, v); writeLimit(process.env.CG_SWAP, v); }
    return;
  }
  writeLimit(process.env.CG_LIMIT, n === 'max' ? (process.env.CG_VERSION === '1' && !/pids/.test(process.env.CG_LIMIT) ? '-1' : 'max') : String(n));
  if (process.env.CG_SWAP && process.env.CG_VERSION === '2') writeLimit(process.env.CG_SWAP, n === 'max' ? 'max' : '0');
};
`;
