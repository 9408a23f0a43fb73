import { Redirect, Tabs } from 'expo-router';

import { useI18n } from '../../src/i18n';
import { useSession } from '../../src/session/SessionContext';
import { usePalette } from '../../src/theme';

export default function TabsLayout() {
  const { t } = useI18n();
  const palette = usePalette();
  const { restored, signedIn } = useSession();
  if (!restored) return null;
  if (!signedIn) return <Redirect href="/sign-in" />;
  const tab = (title: string) => ({ title, tabBarLabel: title, tabBarAccessibilityLabel: title, tabBarIcon: () => null });
  return (
    <Tabs
      screenOptions={{
        headerStyle: { backgroundColor: palette.card },
        headerTintColor: palette.text,
        tabBarStyle: { backgroundColor: palette.card, borderTopColor: palette.border },
        tabBarActiveTintColor: palette.primary,
        tabBarInactiveTintColor: palette.muted,
        tabBarLabelStyle: { fontSize: 14, fontWeight: '600' },
        tabBarIconStyle: { display: 'none' },
      }}
    >
      <Tabs.Screen name="new" options={tab(t('nav.new'))} />
      <Tabs.Screen name="history" options={tab(t('nav.history'))} />
      <Tabs.Screen name="help" options={tab(t('nav.help'))} />
      <Tabs.Screen name="profile" options={tab(t('nav.profile'))} />
    </Tabs>
  );
}
