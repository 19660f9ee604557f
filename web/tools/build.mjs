// Builds the young person's page into dist/ and the counsellor's console
// into dist/console/: each page's script (and the proof-of-work worker)
// bundled with esbuild (ES modules, no source maps, nothing from a third
// party at run time), and the static files copied.
// The relay compiles dist/ in; `npm run build` must reproduce it byte for
// byte (tests/web_page.rs checks).
import { build } from 'esbuild';
import { cpSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const web = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = resolve(web, process.argv[2] ?? 'dist');
rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, 'i18n'), { recursive: true });
mkdirSync(join(out, 'console', 'i18n'), { recursive: true });
const common = {
  bundle: true,
  format: 'esm',
  target: 'es2022',
  minify: true,
  legalComments: 'none',
  charset: 'utf8',
  logLevel: 'warning',
};
await build({ ...common, entryPoints: [join(web, 'page/app.js')], outfile: join(out, 'app.js') });
await build({ ...common, entryPoints: [join(web, 'src/pow-worker.js')], outfile: join(out, 'pow-worker.js') });
cpSync(join(web, 'page/index.html'), join(out, 'index.html'));
cpSync(join(web, 'page/style.css'), join(out, 'style.css'));
// Every language the page has: i18n/languages.json and one file each.
cpSync(join(web, 'page/i18n'), join(out, 'i18n'), { recursive: true });
// The counsellor's console, served by `fluister console`.
await build({ ...common, entryPoints: [join(web, 'console/app.js')], outfile: join(out, 'console/app.js') });
cpSync(join(web, 'console/index.html'), join(out, 'console/index.html'));
cpSync(join(web, 'console/style.css'), join(out, 'console/style.css'));
cpSync(join(web, 'console/i18n'), join(out, 'console/i18n'), { recursive: true });
