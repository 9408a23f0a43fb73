// src/api/schema.ts is what openapi-typescript makes of src/api/openapi.json (which a Python test
// compares with the server's own OpenAPI): the app's types cannot drift from the server.
import { execFileSync } from 'child_process';
import { readFileSync } from 'fs';
import { join } from 'path';

test('the generated API types are up to date', () => {
  const root = join(__dirname, '..');
  const generated = execFileSync(join(root, 'node_modules', '.bin', 'openapi-typescript'), ['src/api/openapi.json'], {
    cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'],
  });
  expect(readFileSync(join(root, 'src/api/schema.ts'), 'utf8')).toBe(generated);
});
