const { defineConfig } = require('eslint/config');
const expoConfig = require('eslint-config-expo/flat');

module.exports = defineConfig([
  expoConfig,
  { ignores: ['dist/*', '.cache/*', 'node_modules/*', 'src/api/schema.ts'] },
  // The browser scripts run in Node with settings from their environment, not in the app bundle.
  { files: ['e2e/**'], rules: { 'expo/no-dynamic-env-var': 'off' } },
]);
