import { ApiError } from '../src/api/errors';
import { en } from '../src/i18n/en';
import { es } from '../src/i18n/es';
import { errorMessage, translator } from '../src/i18n';

const placeholders = (text: string) => [...text.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort();

test('every key exists in both languages with the same placeholders', () => {
  expect(Object.keys(es).sort()).toEqual(Object.keys(en).sort());
  for (const key of Object.keys(en) as (keyof typeof en)[]) {
    expect(es[key].trim()).not.toBe('');
    expect([key, placeholders(es[key])]).toEqual([key, placeholders(en[key])]);
  }
});

test('Spanish is actually translated, the notice above all', () => {
  const same = (Object.keys(en) as (keyof typeof en)[]).filter((k) => en[k] === es[k] && en[k].length > 8);
  expect(same).toEqual([]);
  expect(translator('es')('notice')).toBe('Solo para investigación. No apto para diagnóstico clínico.');
});

test('placeholders are filled and errors read as messages', () => {
  const t = translator('en');
  expect(t('import.uploading', { pct: 42 })).toBe('Uploading… 42%');
  expect(errorMessage(t, new ApiError('tooManyAttempts', 'x', 429, 'too_many_attempts', 30))).toBe('Too many failed attempts. Try again in 30 s.');
  expect(errorMessage(t, new ApiError('tooLarge', 'x', 413), 10)).toBe('The file is larger than 10 MB.');
  expect(errorMessage(translator('es'), new ApiError('signInFailed', 'x', 401))).toBe('Usuario o contraseña incorrectos.');
});
