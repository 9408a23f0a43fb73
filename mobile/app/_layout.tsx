import { Stack, useRouter, useSegments } from 'expo-router';
import { StatusBar } from 'expo-status-bar';

import { I18nProvider, useI18n } from '../src/i18n';
import { SessionProvider, useSession } from '../src/session/SessionContext';
import { usePalette } from '../src/theme';
import { useEffect } from 'react';

function LanguageFromSession() {
  const { stored } = useSession();
  const { language, setLanguage } = useI18n();
  useEffect(() => {
    if (stored.language && stored.language !== language) setLanguage(stored.language);
  }, [stored.language, language, setLanguage]);
  return null;
}

/** Wherever the user is, a session that ends (sign-out, expiry, revoked) leads back to sign-in. */
function SignInGuard() {
  const { restored, signedIn } = useSession();
  const segments = useSegments();
  const router = useRouter();
  const onSignIn = segments[0] === 'sign-in';
  useEffect(() => {
    if (restored && !signedIn && !onSignIn) router.replace('/sign-in');
  }, [restored, signedIn, onSignIn, router]);
  return null;
}

function Screens() {
  const palette = usePalette();
  const { t } = useI18n();
  return (
    <>
      <LanguageFromSession />
      <SignInGuard />
      <StatusBar style="auto" />
      <Stack
        screenOptions={{
          headerStyle: { backgroundColor: palette.card },
          headerTintColor: palette.text,
          contentStyle: { backgroundColor: palette.background },
        }}
      >
        <Stack.Screen name="(tabs)" options={{ headerShown: false, title: t('app.name') }} />
        <Stack.Screen name="sign-in" options={{ title: t('signIn.title') }} />
        <Stack.Screen name="analyze/[imageId]" options={{ title: t('roi.title') }} />
        <Stack.Screen name="analysis/[id]" options={{ title: t('result.title') }} />
      </Stack>
    </>
  );
}

export default function RootLayout() {
  return (
    <SessionProvider>
      <I18nProvider>
        <Screens />
      </I18nProvider>
    </SessionProvider>
  );
}
