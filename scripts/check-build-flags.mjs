#!/usr/bin/env node
// Checks that the two builds of the addon, node-gyp (build/) and cmake-js (build-cmake/), compiled
// the same sources with the same effective compiler flags and linked with the same linker flags,
// from what each build really ran: node-gyp's dependency files (their cmd_ lines) and CMake's
// compile_commands.json and link command. Build both first (npm install, npm run build:cmake).
// Exits 1 and prints the differences when they disagree. Plain Node, no dependencies.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const gypDir = join(root, 'build');
const cmakeDir = join(root, 'build-cmake');

// node-gyp defines these for Node's own headers (V8, libuv, OpenSSL), which a Node-API addon never
// includes; NODE_GYP_MODULE_NAME names the module for node.h's NODE_MODULE, which Node-API does not use.
const GYP_ONLY_DEFINES = new Set([
  'NODE_GYP_MODULE_NAME', 'USING_UV_SHARED', 'USING_V8_SHARED', 'V8_DEPRECATION_WARNINGS',
  'OPENSSL_NO_PINSHARED', 'OPENSSL_THREADS',
]);

/** Splits a shell command line into words (single and double quotes, backslashes). */
function words(line) {
  const out = [];
  let cur = '';
  let have = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === "'") {
      const end = line.indexOf("'", i + 1);
      cur += line.slice(i + 1, end);
      i = end;
      have = true;
    } else if (c === '"') {
      for (i++; line[i] !== '"'; i++) cur += line[i] === '\\' ? line[++i] : line[i];
      have = true;
    } else if (c === '\\') {
      cur += line[++i];
      have = true;
    } else if (/\s/.test(c)) {
      if (have) out.push(cur);
      cur = '';
      have = false;
    } else {
      cur += c;
      have = true;
    }
  }
  if (have) out.push(cur);
  return out;
}

/**
 * The effective compile flags of one command: the last of each conflicting group wins (-O,
 * -std=, -fX/-fno-X, -WX/-Wno-X, -DX), paths and outputs left out.
 */
function compileFlags(argv) {
  const eff = new Map();
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    if (['-o', '-MF', '-MT', '-MQ', '-isystem', '-include'].includes(a)) { i++; continue; }
    if (a === '-c' || a === '-MMD' || a === '-MD' || a.startsWith('-I') || !a.startsWith('-')) continue;
    let m;
    if ((m = /^-D([^=]+)(=.*)?$/.exec(a))) {
      if (!GYP_ONLY_DEFINES.has(m[1])) eff.set(`-D${m[1]}`, a);
    } else if ((m = /^-U(.+)$/.exec(a))) eff.delete(`-D${m[1]}`);
    else if (a.startsWith('-O')) eff.set('-O', a);
    else if (a.startsWith('-std=')) eff.set('-std', a);
    else if ((m = /^-([fW])(no-)?(.+)$/.exec(a)) && !a.startsWith('-Wl,')) eff.set(`-${m[1]}${m[3]}`, a);
    else eff.set(a, a);
  }
  return new Set(eff.values());
}

/** The flags of a link command that reach the linker: not the objects, outputs, soname or groups. */
function linkFlags(argv) {
  const out = new Set();
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-o') { i++; continue; }
    if (!a.startsWith('-')) continue; // objects
    if (/^-Wl,(-soname[=,]|--start-group$|--end-group$)/.test(a)) continue;
    // Compile options on a link line change nothing without LTO (CMake passes its CXX flags there).
    if (/^-(D|I|O|std=|f(?!use-ld))/.test(a) || (a.startsWith('-W') && !a.startsWith('-Wl,'))) continue;
    out.add(a);
  }
  return out;
}

function fail(message) {
  console.error(`check-build-flags: ${message}`);
  process.exit(1);
}

/** The cmd_ line of a node-gyp dependency file, as words. */
function gypCommand(file) {
  const line = readFileSync(file, 'utf8').split('\n').find((l) => l.startsWith('cmd_'));
  if (!line) fail(`no cmd_ line in ${file}`);
  return words(line.slice(line.indexOf(':=') + 2));
}

// node-gyp: the link command names the objects; each object's .d file holds its compile command.
const deps = join(gypDir, 'Release', '.deps');
const gypLinkFile = join(deps, 'Release', 'obj.target', 'kvm_gmem.node.d');
if (!existsSync(gypLinkFile)) fail('no node-gyp build in build/: run `npm run build:native` first');
const gypLink = gypCommand(gypLinkFile);
const gyp = new Map();
for (const obj of gypLink.filter((w) => w.endsWith('.o'))) {
  const argv = gypCommand(join(deps, `${obj}.d`));
  const src = argv.find((w) => w.endsWith('.cc'));
  gyp.set(relative(root, resolve(gypDir, src)), compileFlags(argv));
}

// CMake: compile_commands.json, and the link command of the generator it used.
const ccFile = join(cmakeDir, 'compile_commands.json');
if (!existsSync(ccFile)) fail('no cmake-js build in build-cmake/: run `npm run build:cmake` first');
const cmake = new Map();
for (const e of JSON.parse(readFileSync(ccFile, 'utf8'))) {
  const argv = e.arguments ?? words(e.command);
  cmake.set(relative(root, resolve(e.directory, e.file)), compileFlags(argv));
}
let cmakeLink;
if (existsSync(join(cmakeDir, 'build.ninja'))) {
  const cmds = execFileSync('ninja', ['-C', cmakeDir, '-t', 'commands', 'kvm_gmem'], { encoding: 'utf8' });
  const line = cmds.split('\n').find((l) => / -shared /.test(l) && l.includes('kvm_gmem.node'));
  if (!line) fail('no link command for kvm_gmem.node in build-cmake/build.ninja');
  cmakeLink = words(line.replace(/^:\s*&&\s*/, '').replace(/\s*&&\s*:\s*$/, ''));
} else {
  cmakeLink = words(readFileSync(join(cmakeDir, 'CMakeFiles', 'kvm_gmem.dir', 'link.txt'), 'utf8').split('\n')[0]);
}

const problems = [];
const diff = (what, a, b) => {
  const onlyA = [...a].filter((x) => !b.has(x)).sort();
  const onlyB = [...b].filter((x) => !a.has(x)).sort();
  if (onlyA.length || onlyB.length) {
    problems.push(`${what}: node-gyp only [${onlyA.join(' ')}], cmake-js only [${onlyB.join(' ')}]`);
  }
};
diff('sources', new Set(gyp.keys()), new Set(cmake.keys()));
const reference = gyp.values().next().value ?? new Set();
for (const [src, flags] of gyp) diff(`node-gyp ${src} vs its other sources`, reference, flags);
for (const [src, flags] of cmake) diff(`compile flags of ${src}`, gyp.get(src) ?? reference, flags);
diff('link flags', linkFlags(gypLink), linkFlags(cmakeLink));

const compilers = [gypLink[0], cmakeLink[0]];
if (problems.length) {
  console.error(problems.join('\n'));
  fail(`the two builds differ (${problems.length} difference(s))`);
}
console.log(`check-build-flags: ${gyp.size} sources, the same in both builds`);
console.log(`  compile: ${[...reference].sort().join(' ')}`);
console.log(`  link:    ${[...linkFlags(gypLink)].sort().join(' ')}`);
console.log(`  compilers: node-gyp ${compilers[0]}, cmake-js ${compilers[1]}`);
