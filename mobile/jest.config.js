const preset = require('jest-expo/jest-preset');

module.exports = {
  preset: 'jest-expo',
  testPathIgnorePatterns: ['/node_modules/', '/e2e/', '/dist/', '/.cache/'],
  // The Firebase JS SDK ships ES modules: transformed like the React Native packages (and its util's .mjs
  // defaults file read from its CommonJS twin).
  moduleNameMapper: { '^\\./postinstall\\.mjs$': '<rootDir>/node_modules/@firebase/util/dist/postinstall.js' },
  transformIgnorePatterns: preset.transformIgnorePatterns.map((pattern) =>
    pattern.startsWith('/node_modules/(?!(') ? pattern.replace('/node_modules/(?!(', '/node_modules/(?!(firebase|@firebase|') : pattern,
  ),
};
