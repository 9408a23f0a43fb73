// English and Spanish: the device language by default, switchable in the profile.
import { getLocales } from 'expo-localization';
import { createContext, useContext, useMemo, useState, type ReactNode } from 'react';

import { en } from './en';
import { es } from './es';
import { noLesionScore, scorePair } from '../api/auto';
import { ApiError } from '../api/errors';

export type Key = keyof typeof en;
export type Language = 'en' | 'es';
export const LANGUAGES: Language[] = ['en', 'es'];
const TABLES: Record<Language, Record<Key, string>> = { en, es };

export type Translate = (key: Key, params?: Record<string, string | number>) => string;

export function translator(language: Language): Translate {
  const table = TABLES[language];
  return (key, params = {}) =>
    table[key].replace(/\{(\w+)\}/g, (whole, name: string) => (name in params ? String(params[name]) : whole));
}

export function deviceLanguage(): Language {
  const code = getLocales()[0]?.languageCode ?? 'en';
  return code === 'es' ? 'es' : 'en';
}

/** The message a person reads for any failure. */
export function errorMessage(t: Translate, err: unknown, maxMb = 10): string {
  if (!(err instanceof ApiError)) return t('errors.server', { message: err instanceof Error ? err.message : String(err) });
  switch (err.kind) {
    case 'tooManyAttempts':
      return t('errors.tooManyAttempts', { s: err.retryAfter ?? 60 });
    case 'tooLarge':
      return t('errors.tooLarge', { mb: maxMb });
    case 'noLesion': {
      const { score, threshold } = noLesionScore(err);
      return score !== null && threshold !== null
        ? t('errors.noLesion', scorePair(score, threshold))
        : t('errors.noLesionNoScore');
    }
    case 'invalidImage':
    case 'server':
      return t(`errors.${err.kind}`, { message: err.message });
    default:
      return t(`errors.${err.kind}`);
  }
}

interface I18n {
  language: Language;
  setLanguage: (language: Language) => void;
  t: Translate;
}

const I18nContext = createContext<I18n | null>(null);

export function I18nProvider({ children, initial }: { children: ReactNode; initial?: Language }) {
  const [language, setLanguage] = useState<Language>(initial ?? deviceLanguage());
  const value = useMemo(() => ({ language, setLanguage, t: translator(language) }), [language]);
  return <I18nContext.Provider value={value}>{children}</I18nContext.Provider>;
}

export function useI18n(): I18n {
  const value = useContext(I18nContext);
  if (!value) throw new Error('useI18n outside I18nProvider');
  return value;
}
