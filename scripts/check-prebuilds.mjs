// Checks that every prebuild the package promises is in prebuilds/, non-empty, and built
// for the right CPU (read from the ELF / Mach-O / PE header, so a mislabelled cross build
// is caught). The release workflow runs it on the merged artifacts before publishing.
//
//   node scripts/check-prebuilds.mjs                       every expected prebuild
//   node scripts/check-prebuilds.mjs linux-x64-glibc linux-arm64-glibc   only these
//   node scripts/check-prebuilds.mjs --root DIR      DIR/prebuilds (an unpacked tarball)
//
// Last line: "N passed, N failed"; exit code 1 when any is missing or wrong.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
const rootAt = args.indexOf('--root');
const root = rootAt >= 0 ? path.resolve(args.splice(rootAt, 2)[1] ?? '.') : path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/**
 * What `npm install sluice` ships. Keep in step with docs/building.md ("Prebuilt binaries") and
 * the build jobs of .github/workflows/release.yml.
 */
export const EXPECTED = [
  { id: 'linux-x64-glibc', platform: 'linux-x64', file: 'sluice.glibc.node', format: 'elf', machine: 'x86-64' },
  { id: 'linux-x64-musl', platform: 'linux-x64', file: 'sluice.musl.node', format: 'elf', machine: 'x86-64' },
  { id: 'linux-arm64-glibc', platform: 'linux-arm64', file: 'sluice.glibc.node', format: 'elf', machine: 'aarch64' },
  { id: 'darwin-x64', platform: 'darwin-x64', file: 'sluice.node', format: 'macho', machine: 'x86-64' },
  { id: 'darwin-arm64', platform: 'darwin-arm64', file: 'sluice.node', format: 'macho', machine: 'aarch64' },
  { id: 'win32-x64', platform: 'win32-x64', file: 'sluice.node', format: 'pe', machine: 'x86-64' },
];

const ELF_MACHINE = { 62: 'x86-64', 183: 'aarch64' };
const MACHO_CPU = { 0x01000007: 'x86-64', 0x0100000c: 'aarch64' };
const PE_MACHINE = { 0x8664: 'x86-64', 0xaa64: 'aarch64' };

/** The format and CPU a shared object was built for, from its header. */
export function identify(buf) {
  if (buf.length >= 20 && buf.readUInt32BE(0) === 0x7f454c46) {
    return { format: 'elf', machine: ELF_MACHINE[buf.readUInt16LE(18)] ?? `elf machine ${buf.readUInt16LE(18)}` };
  }
  if (buf.length >= 8 && buf.readUInt32LE(0) === 0xfeedfacf) {
    return { format: 'macho', machine: MACHO_CPU[buf.readUInt32LE(4)] ?? `mach-o cpu ${buf.readUInt32LE(4)}` };
  }
  if (buf.length >= 0x40 && buf.toString('latin1', 0, 2) === 'MZ') {
    const pe = buf.readUInt32LE(0x3c);
    if (buf.length >= pe + 6 && buf.toString('latin1', pe, pe + 4) === 'PE\0\0') {
      return { format: 'pe', machine: PE_MACHINE[buf.readUInt16LE(pe + 4)] ?? `pe machine ${buf.readUInt16LE(pe + 4)}` };
    }
  }
  return { format: 'unknown', machine: 'unknown' };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const only = args;
  const unknown = only.filter((id) => !EXPECTED.some((e) => e.id === id));
  if (unknown.length > 0) {
    console.error(`unknown: ${unknown.join(', ')}; expected ones: ${EXPECTED.map((e) => e.id).join(', ')}`);
    process.exit(2);
  }
  let passed = 0;
  let failed = 0;
  for (const e of EXPECTED.filter((x) => only.length === 0 || only.includes(x.id))) {
    const rel = path.join('prebuilds', e.platform, e.file);
    let problem;
    try {
      const buf = fs.readFileSync(path.join(root, rel));
      const id = identify(buf);
      if (buf.length < 4096) problem = `only ${buf.length} bytes`;
      else if (id.format !== e.format || id.machine !== e.machine) problem = `is ${id.format}/${id.machine}, expected ${e.format}/${e.machine}`;
      else console.log(`ok - ${rel}: ${buf.length} bytes, ${id.format} ${id.machine}`);
    } catch (err) {
      problem = err.code === 'ENOENT' ? 'missing' : err.message;
    }
    if (problem === undefined) passed++;
    else {
      failed++;
      console.log(`not ok - ${rel}: ${problem}`);
    }
  }
  const extra = fs.existsSync(path.join(root, 'prebuilds'))
    ? fs.readdirSync(path.join(root, 'prebuilds'), { recursive: true }).filter((f) => String(f).endsWith('.node'))
      .map((f) => path.join('prebuilds', String(f))).filter((f) => !EXPECTED.some((e) => path.join('prebuilds', e.platform, e.file) === f))
    : [];
  for (const f of extra) console.log(`# not expected (shipped anyway): ${f}`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}
