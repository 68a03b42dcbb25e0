// A private apt view of one Debian suite (e.g. sid), kept under a cache directory: the machine's
// own apt sources are read for the mirror but never changed. Shared by debian-kernel.mjs and
// sw-protected-kvm.mjs.
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * The Debian archive URI and keyring the machine's own apt sources use (deb822 or one-line), or
 * undefined when none lists Debian's "main".
 */
export function debianMirror() {
  const files = [];
  const dir = '/etc/apt/sources.list.d';
  if (existsSync(dir)) for (const f of readdirSync(dir)) files.push(join(dir, f));
  if (existsSync('/etc/apt/sources.list')) files.push('/etc/apt/sources.list');
  for (const f of files) {
    const text = readFileSync(f, 'utf8');
    if (f.endsWith('.sources')) {
      for (const stanza of text.split(/\n\s*\n/)) {
        const field = (k) => new RegExp(`^${k}:\\s*(.+)$`, 'mi').exec(stanza)?.[1]?.trim();
        const uri = field('URIs')?.split(/\s+/)[0];
        if (uri && /\/debian\/?$/.test(uri) && (field('Components') ?? '').split(/\s+/).includes('main')) return { uri, keyring: field('Signed-By') };
      }
    } else {
      for (const line of text.split('\n')) {
        const m = /^deb\s+(?:\[([^\]]*)\]\s+)?(\S+\/debian\/?)\s+\S+\s+.*\bmain\b/.exec(line.trim());
        if (m) return { uri: m[2], keyring: /signed-by=(\S+)/.exec(m[1] ?? '')?.[1] };
      }
    }
  }
  return undefined;
}

/**
 * apt-get/apt-cache options for a private view of `suite` under `cache`/apt/`suite`, reading
 * from `mirror` (see debianMirror).
 */
export function aptOptions(cache, suite, mirror) {
  const dir = join(cache, 'apt', suite);
  for (const d of ['lists/partial', 'archives/partial']) mkdirSync(join(dir, d), { recursive: true });
  const signed = mirror.keyring ?? '/usr/share/keyrings/debian-archive-keyring.gpg';
  writeFileSync(join(dir, 'sources.list'), `deb [signed-by=${signed}] ${mirror.uri} ${suite} main\n`);
  return [
    '-o', `Dir::Etc::SourceList=${join(dir, 'sources.list')}`, '-o', 'Dir::Etc::SourceParts=/dev/null',
    '-o', `Dir::State::Lists=${join(dir, 'lists')}`, '-o', `Dir::Cache=${dir}`,
    '-o', `Dir::Cache::archives=${join(dir, 'archives')}`, '-o', 'Dir::State::Status=/var/lib/dpkg/status',
    '-o', 'APT::Sandbox::User=root', // the cache is root's own: apt's _apt user could not write it
  ];
}
